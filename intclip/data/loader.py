"""Data loaders that keep a GPU fed and a resumed run exact.

Workers default to the machine's cores, prefetch several batches each, pin memory for CUDA and
persist across epochs, for training and for the val pass. Persistent workers keep their random
state from epoch to epoch, so augmentation cannot rely on seeding the workers: each training
item carries its own seed, drawn from (seed, epoch, rank), and the item's transform runs under
it. Augmentation then depends on neither the worker count nor on whether the workers were
restarted by `--resume`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    Subset,
)
from torch.utils.data._utils.collate import collate, default_collate_fn_map

from intclip.data.config import DataConfig
from intclip.data.dataset import UnreadableImage
from intclip.data.device_decode import EncodedImage
from intclip.runtime import distributed

SeededRow = tuple[int, int]


@dataclass(frozen=True)
class LoaderOptions:
    """DataLoader settings shared by the training and the scoring loaders."""

    workers: int = 0
    prefetch_factor: int = 4
    pin_memory: bool = False

    @classmethod
    def from_config(cls, data: DataConfig, device: torch.device) -> LoaderOptions:
        workers = (os.cpu_count() or 1) if data.num_workers is None else data.num_workers
        return cls(workers, data.prefetch_factor, device.type == "cuda")

    def kwargs(self, persistent: bool) -> dict:
        if self.workers == 0:
            return {"num_workers": 0, "pin_memory": self.pin_memory}
        return {
            "num_workers": self.workers,
            "pin_memory": self.pin_memory,
            "prefetch_factor": self.prefetch_factor,
            "persistent_workers": persistent,
        }


class EpochSeeds(Sampler[SeededRow]):
    """A shuffling sampler that pairs every row with its augmentation seed for this epoch."""

    def __init__(
        self, dataset: Dataset, seed: int, context: distributed.Context, size: int
    ) -> None:
        self.seed, self.rank, self.epoch = seed, context.rank, 0
        self.generator = torch.Generator()
        self.rows: Sampler[int] = (
            DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)
            if context.distributed
            else RandomSampler(range(size), generator=self.generator)
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.rows, DistributedSampler):
            self.rows.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[SeededRow]:
        draws = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch * 1_009 + self.rank) % 2**63
        )
        rows = list(self.rows)
        seeds = torch.randint(0, 2**62, (len(rows),), generator=draws).tolist()
        return iter(zip(rows, seeds, strict=True))


@dataclass(frozen=True)
class Skipped:
    """An item left out of its batch (`--skip-bad`), and why."""

    reason: str


class SeededItems(Dataset):
    """`dataset[row]` with the torch RNG seeded for that row in this epoch (unless the dataset
    says `draws_at_random = False`: cached features); with `skip_unreadable`, an image that no
    longer decodes becomes `Skipped`."""

    def __init__(self, dataset: Dataset, skip_unreadable: bool = False) -> None:
        self.dataset = dataset
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SeededRow):
        row, seed = key
        if not getattr(self.dataset, "draws_at_random", True):
            return self.dataset[row]  # seeding costs ~0.4 ms an item: only where it matters
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                return self.dataset[row]
            except UnreadableImage as err:
                if not self.skip_unreadable:
                    raise
                return Skipped(str(err))


class TrainBatch(NamedTuple):
    """A training batch. `images`: a tensor, or the list of files `data.decode: gpu` leaves
    to the device; None when every item of the batch was skipped."""

    images: Any
    targets: torch.Tensor | None
    rows: torch.Tensor | None
    skipped: list[str]


def _files(batch: list[EncodedImage], *, collate_fn_map: dict | None = None) -> list:
    return list(batch)


COLLATE_FNS = {**default_collate_fn_map, EncodedImage: _files}


def collate_images(items: list) -> Any:
    """`default_collate`, except that the files of `data.decode: gpu` stay a list (their
    lengths differ) for the device to decode."""
    return collate(items, collate_fn_map=COLLATE_FNS)


def collate_skipping(items: list) -> TrainBatch:
    """`collate_images` of the items that were read, and the reasons of those skipped."""
    kept = [item for item in items if not isinstance(item, Skipped)]
    skipped = [item.reason for item in items if isinstance(item, Skipped)]
    if not kept:
        return TrainBatch(None, None, None, skipped)
    return TrainBatch(*collate_images(kept), skipped)


def train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    context: distributed.Context,
    options: LoaderOptions,
    skip_unreadable: bool = False,
) -> tuple[DataLoader, EpochSeeds]:
    """One loader for the whole run, of `TrainBatch`es; call `seeds.set_epoch(epoch)` before
    each epoch."""
    seeds = EpochSeeds(dataset, seed, context, len(dataset))
    loader = DataLoader(
        SeededItems(dataset, skip_unreadable),
        batch_size=batch_size,
        sampler=seeds,
        collate_fn=collate_skipping,
        drop_last=False,
        **options.kwargs(persistent=True),
    )
    return loader, seeds


def scoring_loader(
    dataset: Dataset,
    batch_size: int,
    context: distributed.Context,
    options: LoaderOptions,
    persistent: bool = False,
) -> DataLoader:
    """Rank r's rows r, r + W, r + 2W, ... in order (see `intclip.training.scoring`). Persistent for
    the val pass after every epoch: evaluation transforms draw nothing at random, so reused
    workers change no score, and a resumed run scores exactly as a straight one."""
    shard = Subset(dataset, range(context.rank, len(dataset), context.world_size))
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_images,
        **options.kwargs(persistent),
    )
