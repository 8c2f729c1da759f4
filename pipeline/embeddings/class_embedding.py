"""How a class's descriptions become its one embedding: the choice, defined without torch so
that the CLI can offer it (and `--help` can show it) before anything heavy is imported."""

from __future__ import annotations

from typing import Literal

Aggregate = Literal["mean", "mean+name"]
"""`mean`: the normalised mean of the class's description embeddings; `mean+name`: the plain
fine-class name's embedding averaged in as one more description."""

ClassTextPooling = Literal["embedding", "mean", "max", "softmax"]
"""How an image is scored against a class's descriptions: `embedding`, against the class
embedding (the descriptions' embeddings averaged first); `mean`, `max` or `softmax`, against each
description, the similarities then pooled (`softmax`: weighted by a softmax over them)."""

TEXT_BATCH_SIZE = 32
"""Texts per forward pass when embedding. Batches are cut at their longest text, and texts are
batched shortest first, so smaller batches pad less: on a 2-core CPU 32 beat 64 by a fifth."""
