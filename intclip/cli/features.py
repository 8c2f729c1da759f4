"""`intclip-train features`: the frozen tower's features of a config's splits, or of a manifest's
images, computed once into the cache (`intclip.training.features`)."""

from __future__ import annotations

from pathlib import Path

from intclip.cli.predict import terminate_as_interrupt
from intclip.data.dataset import SPLITS, LabelIndex, load_manifest, load_split
from intclip.data.feature_cache import Pooling
from intclip.runtime import distributed
from intclip.training.config import TrainConfig
from intclip.training.factory import build_components
from intclip.training.features import Extraction, ensure_features
from intclip.training.splits import checked_split
from pipeline.common.console import stderr
from pipeline.common.errors import UserError


def _say(message: str) -> None:
    stderr.print(message, markup=False)


def _image_lists(
    config: TrainConfig, splits: list[str], manifest: Path | None, skip_bad: bool
) -> dict[str, LabelIndex]:
    """Name -> images: the manifest's, else the splits asked for (default: all the config sets),
    each checked like a training split."""
    if manifest is not None:
        if splits:
            raise UserError("give --split or --manifest, not both")
        index = load_manifest(manifest, config.data.image_root, config.data.num_classes)
        return {manifest.name: index}
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise UserError(f"--split {unknown[0]}: not a split (choose from {', '.join(SPLITS)})")
    chosen = splits or [split for split in SPLITS if load_split(config.data, split) is not None]
    return {split: checked_split(config, split, skip_bad, _say) for split in chosen}


def run_features(
    config: TrainConfig,
    splits: list[str],
    manifest: Path | None,
    dense: bool,
    device: str,
    shard_size: int,
    batch_size: int | None,
    skip_bad: bool,
) -> list[Path]:
    """The cache file of each image list, computed where missing (rank 0 gets the paths, the
    other torchrun ranks an empty list)."""
    lists = _image_lists(config, splits, manifest, skip_bad)
    pooling: Pooling = "dense" if dense else "pooled"
    context = distributed.setup(device)
    try:
        components = build_components(config, context.device, with_class_text=False)
        paths = []
        with terminate_as_interrupt():
            for name, index in lists.items():
                extraction = Extraction(shard_size, batch_size, name, _say)
                cached = ensure_features(config, components, index, pooling, context, extraction)
                paths.append(cached.path)
    finally:
        distributed.teardown()
    return paths if context.is_main else []
