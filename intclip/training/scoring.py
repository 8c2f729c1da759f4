"""Scoring a split with a model, sharded across processes without dropping or repeating a row.

`DistributedSampler` pads the last shard with repeated samples, which counts some images twice
in the metrics. Here rank r scores rows r, r + W, r + 2W, ...; the shards are gathered and put
back in dataset order, so 1 and N processes give the same matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from intclip.data.dataset import ImageDataset
from intclip.data.loader import LoaderOptions, scoring_loader
from intclip.runtime import distributed
from intclip.runtime.precision import autocast
from intclip.training.config import Precision
from intclip.training.progress import batch_bar


@torch.no_grad()
def predict_scores(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int,
    context: distributed.Context,
    model_input: Callable[[torch.Tensor], torch.Tensor],
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
    options: LoaderOptions = LoaderOptions(),
    precision: Precision = "auto",
    loader: DataLoader | None = None,
    description: str = "scoring",
) -> np.ndarray:
    """Scores [images, classes] (`activation` of the logits) in dataset order, on every rank;
    `model_input` moves each batch to the device and finishes it there. `loader`, from
    `scoring_loader` over the same dataset, is reused (with its workers) instead of a new one.
    Rank 0 shows a bar of the batches on a terminal, named by `description`."""
    was_training = model.training
    model.eval()
    if loader is None:
        loader = scoring_loader(dataset, batch_size, context, options)
    rows, scores = [], []
    for images, _, row in batch_bar(loader, len(loader), description, context.is_main):
        with autocast(precision, context.device):
            logits = model(model_input(images))
        scores.append(activation(logits.float()).cpu().numpy())
        rows.append(row.numpy())
    model.train(was_training)
    num_classes = model.num_classes
    local = (
        np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
        np.concatenate(scores) if scores else np.zeros((0, num_classes), dtype=np.float32),
    )
    result = np.full((len(dataset), num_classes), np.nan, dtype=np.float32)
    for shard_rows, shard_scores in distributed.gather_objects(local, context):
        result[shard_rows] = shard_scores
    return result
