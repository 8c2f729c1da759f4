"""A config's split, checked before any work depends on it: labels, paths and pixels.

Training and feature extraction both start here, so a corrupt, truncated or missing image stops
them before the first batch, naming the file, unless `--skip-bad` leaves such entries out.
"""

from __future__ import annotations

from collections.abc import Callable

from intclip.data.check import DecodedImages, check_index, summarize
from intclip.data.dataset import LabelIndex, load_split
from intclip.training.config import TrainConfig
from pipeline.common.errors import UserError
from pipeline.common.files import cache_root

DECODED_IMAGES = "decoded-images.json"  # under the cache root: images known to decode


def checked_split(
    config: TrainConfig, split: str, skip_bad: bool, log: Callable[[str], None]
) -> LabelIndex:
    """The split, with label and file problems refused, or left out under `--skip-bad`."""
    index = load_split(config.data, split)
    if index is None:
        raise UserError(f"the config sets no data.{split} split")
    problems = check_index(index, decoded=DecodedImages(cache_root() / DECODED_IMAGES))
    if not problems:
        return index
    if not skip_bad:
        raise UserError(
            f"{split}: {len(problems)} bad entries ({summarize(problems)}), the first: "
            f"{problems[0]}; run intclip-train check-data, or pass --skip-bad"
        )
    kept = index.without([p.row for p in problems])
    if not len(kept):
        raise UserError(
            f"{split}: every entry of {index.source} is bad ({summarize(problems)}), so "
            f"--skip-bad leaves nothing to {'train on' if split == 'train' else 'validate on'}; "
            "run intclip-train check-data"
        )
    log(
        f"{split}: leaving out {len({p.row for p in problems})} bad entries ({summarize(problems)})"
    )
    return kept
