"""Frozen image features of a config's images: computed once, by shards, and read back.

`ensure_features` is what `intclip-train features`, a run with `model.input: features`, `eval`
and `zeroshot` call: it returns the cached features of an image list, computing first whatever
is missing. The work is cut into shards of `shard_size` images, each written as soon as it is
done, so an extraction killed half-way keeps its finished shards and the next call computes
only the others. Under torchrun every rank computes its share of the missing shards and rank 0
merges them into the one file readers use. `load_split_features` is the public reader of a
split's features with its labels (docs/frontier.md).

The images go through the config's own evaluation transform and loader (`data.pipeline`,
`data.eval_resize`, `data.normalize`, workers), and the tower always runs in float32
(`FrozenTower`), so the features are those a `model.input: images` run computes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from intclip.data.dataset import ImageDataset, LabelIndex, Split
from intclip.data.feature_cache import (
    FORMAT,
    CachedFeatures,
    FeatureHeader,
    FeatureKey,
    FeatureTransform,
    Pooling,
    feature_key,
    read_features,
    read_header,
    shard_path,
    shard_rows,
    write_features,
)
from intclip.data.loader import LoaderOptions, collate_images
from intclip.model.frozen_clip import FrozenModelConfig, FrozenTower
from intclip.runtime import distributed
from intclip.training.config import TrainConfig
from intclip.training.factory import Components, build_components
from intclip.training.splits import checked_split
from pipeline.common.console import stderr
from pipeline.common.errors import UserError
from pipeline.common.files import cache_root

DEFAULT_SHARD_SIZE = 1024
"""Images per shard: at most this much work is lost when an extraction is killed."""
Log = Callable[[str], None]


def _say(line: str) -> None:
    stderr.print(line, markup=False)


def config_pooling(config: TrainConfig) -> Pooling:
    """The features a config's model reads: `dense` for `model.features: dense`."""
    model = config.model
    return (
        "dense" if isinstance(model, FrozenModelConfig) and model.features == "dense" else "pooled"
    )


def feature_transform(config: TrainConfig, components: Components) -> FeatureTransform:
    """Every setting of the config that changes the pixels the tower sees."""
    return FeatureTransform(
        size=components.image_size,
        eval_resize=config.data.eval_resize,
        pipeline=config.data.pipeline,
        decode=config.data.decode,
        normalize=config.data.normalize,
        mean=components.clip.image_mean,
        std=components.clip.image_std,
    )


def features_key(
    config: TrainConfig, components: Components, index: LabelIndex, pooling: Pooling
) -> FeatureKey:
    """The cache key of the features of `index`'s images under `config`."""
    transform = feature_transform(config, components)
    clip = components.clip.identity
    return feature_key(clip, index.image_root, index.paths, transform, pooling)


@dataclass(frozen=True)
class Extraction:
    """How to compute what is missing: shard size, batch size (default: the config's
    `optim.eval_batch_size`), what to call the images in progress lines, where lines go."""

    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int | None = None
    name: str = "images"
    log: Log = _say


def ensure_features(
    config: TrainConfig,
    components: Components,
    index: LabelIndex,
    pooling: Pooling,
    context: distributed.Context,
    extraction: Extraction = Extraction(),
) -> CachedFeatures:
    """The features of `index`'s images, read from the cache; computed there first when
    missing (every rank must call this together under torchrun). A `pooled` request is served
    by `dense` features of the same images when only those exist."""
    if pooling == "pooled" and components.image_size != components.clip.image_size[0]:
        raise UserError(
            f"clip.image_size {components.image_size}: the pooled features are CLIP's own image "
            f"embedding, made at the tower's own size {components.clip.image_size[0]}; remove "
            "clip.image_size, or use the dense map (--dense, model.features: dense)"
        )
    key = features_key(config, components, index, pooling)
    root = cache_root()
    path = key.path(root)
    if (
        not path.is_file()
        and pooling == "pooled"
        and key.with_pooling("dense").path(root).is_file()
    ):
        dense_key = key.with_pooling("dense")
        found = read_features(dense_key.path(root), dense_key)
        return CachedFeatures(found.path, found.header, found.pooled, None)
    if not path.is_file():
        _extract(key, config, components, index, context, extraction)
    return read_features(path, key)


def _extract(
    key: FeatureKey,
    config: TrainConfig,
    components: Components,
    index: LabelIndex,
    context: distributed.Context,
    extraction: Extraction,
) -> None:
    root = cache_root()
    parts = key.parts(root)
    plan = shard_rows(key.count, extraction.shard_size)
    # rank 0's view, on every rank: a rank that looked later would see rank 0's first shards
    # written already and share out the rest differently, leaving shards nobody computes
    missing = distributed.broadcast_object(
        [rows for rows in plan if not _finished(parts, rows, key)], context
    )
    log = extraction.log if context.is_main else _silent
    cached = len(plan) - len(missing)
    log(
        f"features of {extraction.name}: {key.count:,} images in {len(plan)} shards, {cached} "
        f"already computed; computing {sum(stop - start for start, stop in missing):,} images"
        + (f" on {context.world_size} processes" if context.distributed else "")
    )
    # Shared out by their place in the plan, not in the list of missing ones: a rank that lists
    # them after another has written its first shard sees a shorter list, and striding that
    # would leave some shard to nobody.
    mine = [rows for rows in plan[context.rank :: context.world_size] if rows in missing]
    if mine:
        _compute(key, config, components, index, context, mine, extraction, log)
    distributed.barrier(context)
    if context.is_main:
        _merge(key, index, plan, parts, key.path(root))
        log(f"features of {extraction.name}: {key.path(root)}")
    distributed.barrier(context)


def _silent(_: str) -> None:
    """Ranks other than 0 print nothing."""


def _finished(parts: Path, rows: tuple[int, int], key: FeatureKey) -> bool:
    """A shard is kept when its header says it holds these rows of this key."""
    header = read_header(shard_path(parts, rows))
    return header is not None and header.key == key and (header.start, header.stop) == rows


def _compute(
    key: FeatureKey,
    config: TrainConfig,
    components: Components,
    index: LabelIndex,
    context: distributed.Context,
    shards: list[tuple[int, int]],
    extraction: Extraction,
    log: Log,
) -> None:
    """This rank's missing shards, in one pass of the loader; each written when complete."""
    tower = FrozenTower(components.clip, key.pooling == "dense")
    pipeline = components.image_pipeline(config)
    model_input = components.model_input(pipeline, context.device)
    dataset = ImageDataset(index, pipeline.eval)
    rows = [row for start, stop in shards for row in range(start, stop)]
    loader = DataLoader(
        Subset(dataset, rows),
        batch_size=extraction.batch_size or config.optim.eval_batch_size,
        shuffle=False,
        collate_fn=collate_images,
        **LoaderOptions.from_config(config.data, context.device).kwargs(persistent=False),
    )
    parts = key.parts(cache_root())
    pending = _ShardWriter(key, index, parts, shards)
    started, done = time.perf_counter(), 0
    for images, _, _ in loader:
        batch = tower(model_input(images))
        for written in pending.add(batch.pooled, batch.dense):
            done += written[1] - written[0]
            rate = done / max(time.perf_counter() - started, 1e-9)
            log(
                f"features of {extraction.name}: rows {written[0]:,}-{written[1]:,} written "
                f"({done:,}/{len(rows):,} images here, {rate:.1f} images/s)"
            )


class _ShardWriter:
    """Collects the tower's outputs in row order and writes each shard once it is whole."""

    def __init__(
        self, key: FeatureKey, index: LabelIndex, parts: Path, shards: list[tuple[int, int]]
    ) -> None:
        self.key, self.index, self.parts = key, index, parts
        self.shards: Iterator[tuple[int, int]] = iter(shards)
        self.current = next(self.shards, None)
        self.pooled: list[torch.Tensor] = []
        self.dense: list[torch.Tensor] = []

    def add(self, pooled: torch.Tensor, dense: torch.Tensor | None) -> list[tuple[int, int]]:
        """Take a batch; the rows of every shard this completed, once written."""
        self.pooled.append(pooled.cpu())
        if dense is not None:
            self.dense.append(dense.cpu())
        written = []
        while self.current is not None and self._held() >= self.current[1] - self.current[0]:
            self._write(self.current)
            written.append(self.current)
            self.current = next(self.shards, None)
        return written

    def _held(self) -> int:
        return sum(len(chunk) for chunk in self.pooled)

    def _write(self, rows: tuple[int, int]) -> None:
        size = rows[1] - rows[0]
        pooled, self.pooled = _split(torch.cat(self.pooled), size)
        dense = None
        if self.dense:
            dense, self.dense = _split(torch.cat(self.dense), size)
        header = FeatureHeader(
            format=FORMAT,
            key=self.key,
            start=rows[0],
            stop=rows[1],
            paths=list(self.index.paths[rows[0] : rows[1]]),
        )
        write_features(shard_path(self.parts, rows), header, pooled, dense)


def _split(tensor: torch.Tensor, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The first `size` rows, and the rest as the start of the next shard's list."""
    return tensor[:size], [tensor[size:]] if len(tensor) > size else []


def _merge(
    key: FeatureKey,
    index: LabelIndex,
    plan: list[tuple[int, int]],
    parts: Path,
    path: Path,
) -> None:
    """Every shard, checked, into the one file readers use; then the shards go."""
    shards = [read_features(shard_path(parts, rows), key, rows) for rows in plan]
    dense = torch.cat([s.dense for s in shards]) if key.pooling == "dense" else None
    header = FeatureHeader(format=FORMAT, key=key, start=0, stop=key.count, paths=list(index.paths))
    write_features(path, header, torch.cat([s.pooled for s in shards]), dense)
    shutil.rmtree(parts, ignore_errors=True)


@dataclass(frozen=True)
class SplitFeatures:
    """A split's images (`index`: paths, targets, where each entry is written) and their
    frozen features (`features.pooled` [N, D], `features.dense` or None), row for row."""

    index: LabelIndex
    features: CachedFeatures

    @property
    def labels(self) -> np.ndarray:
        """0/1 labels [N, classes], as evaluation binarises them."""
        return (self.index.targets > 0).astype(np.int64)


def load_split_features(
    config: TrainConfig,
    split: Split,
    components: Components | None = None,
    *,
    dense: bool = False,
    device: str = "auto",
    skip_bad: bool = False,
) -> SplitFeatures:
    """The frozen CLIP image features of a config's split with its labels, computed and cached
    when missing: the public reader for any stage built on the features (one process).

    `components` are the config's CLIP and class text if already built (`build_components`);
    `dense` asks for the dense map as well; `skip_bad` leaves bad entries out, as `--skip-bad`.
    """
    context = distributed.Context(0, 1, distributed.resolve_device(device))
    components = components or build_components(config, context.device, with_class_text=False)
    index = checked_split(config, split, skip_bad, _say)
    pooling: Pooling = "dense" if dense else "pooled"
    features = ensure_features(config, components, index, pooling, context, Extraction(name=split))
    return SplitFeatures(index, features)
