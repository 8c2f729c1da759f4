"""Rolling fine-class labels and scores up the taxonomy to its coarser levels.

A parent is positive when any of its children is, and its score is the highest of its
children's: the same metrics then say how well the model knows the middle and coarse intents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.descriptions.taxonomy import Taxonomy


@dataclass(frozen=True)
class Level:
    """One level of the taxonomy: its node ids and, per node, the fine labels below it."""

    name: str
    node_ids: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]

    def roll_up(self, matrix: np.ndarray) -> np.ndarray:
        """[images, fine] -> [images, nodes of this level]: max over each node's children."""
        return np.stack([matrix[:, list(labels)].max(axis=1) for labels in self.members], axis=1)


def levels_above_fine(taxonomy: Taxonomy) -> list[Level]:
    """The coarser levels, finest first (middle, then coarse for Intentonomy)."""
    levels = []
    for depth in reversed(range(len(taxonomy.levels) - 1)):
        groups: dict[str, list[int]] = {}
        for fine in taxonomy.classes:
            groups.setdefault(fine.path_ids[depth], []).append(fine.label)
        levels.append(
            Level(
                taxonomy.levels[depth],
                tuple(groups),
                tuple(tuple(labels) for labels in groups.values()),
            )
        )
    return levels


def names_by_id(taxonomy: Taxonomy) -> dict[str, str]:
    """Display names of every node, keyed by id."""
    names = {}
    for fine in taxonomy.classes:
        names.update(zip(fine.path_ids, fine.path, strict=True))
    return names
