"""Descriptions files and a review embedder without an LLM or a model, for tests."""

from __future__ import annotations

import hashlib

import numpy as np

from pipeline.descriptions.format import (
    ClassDescriptions,
    DescriptionsFile,
    GeneratorInfo,
    TaxonomyRef,
    normalised,
)

NO_HASH = "0" * 64


def descriptions_document(
    texts: dict[str, list[str]], paths: dict[str, list[str]] | None = None
) -> DescriptionsFile:
    """A descriptions file without an LLM: class ids -> texts, labels in order of the dict."""
    return DescriptionsFile(
        taxonomy=TaxonomyRef(name="toy", sha256=NO_HASH),
        generator=GeneratorInfo(
            model="m",
            template_sha256=NO_HASH,
            params={"num_descriptions": len(next(iter(texts.values()), [""])), "min_words": 1},
        ),
        classes=[
            ClassDescriptions(
                label=label,
                id=name,
                path=(paths or {}).get(name, ["Animals", name.title()]),
                descriptions=found,
                inputs_sha256=NO_HASH,
            )
            for label, (name, found) in enumerate(texts.items())
        ],
    )


def word_embedder(texts: list[str]) -> np.ndarray:
    """A bag of hashed words, unit rows: what `build` reviews with in tests, so that not every
    build test loads sentence-transformers."""
    rows = np.full((len(texts), 65), 0.1)
    for row, text in enumerate(texts):
        for word in normalised(text).split():
            rows[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 64] += 1.0
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)
