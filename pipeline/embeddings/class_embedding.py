"""How a class's descriptions become its one embedding: the choice, defined without torch so
that the CLI can offer it (and `--help` can show it) before anything heavy is imported."""

from __future__ import annotations

from typing import Literal

Aggregate = Literal["mean", "mean+name"]
"""`mean`: the normalised mean of the class's description embeddings; `mean+name`: the plain
fine-class name's embedding averaged in as one more description."""

TEXT_BATCH_SIZE = 32
"""Texts per forward pass when embedding. Batches are cut at their longest text, and texts are
batched shortest first, so smaller batches pad less: on a 2-core CPU 32 beat 64 by a fifth."""
