"""Frozen CLIP text embeddings of a descriptions file: computed once, cached, and checked on load.

The cache file is `<cache root>/embeddings/<key>.safetensors`, where the key hashes everything
the embeddings depend on: the descriptions file, the CLIP model and weights, the aggregation and
the open_clip version. `load_class_embeddings` is the one reader: it refuses a damaged file,
labels in another order, or a CLIP other than the model's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import open_clip
import safetensors
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.clip import ClipIdentity, LoadedClip, describe_clip_source
from pipeline.descriptions import DescriptionsFile, read_descriptions
from pipeline.errors import UserError
from pipeline.files import atomic_write_bytes, sha256_file, sha256_json

FORMAT = "intclip-embeddings-v1"
CLASS_TENSOR = "class_embeddings"
DESCRIPTION_TENSOR = "description_embeddings"
UNIT_NORM_TOLERANCE = 1e-4
Aggregate = Literal["mean", "mean+name"]


class EmbeddingMetadata(BaseModel):
    """The safetensors header: every input of the key, how to recompute, and the row order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["intclip-embeddings-v1"]
    descriptions_sha256: str
    descriptions_path: str
    model: str  # open_clip name, or config-sha256:<hex>
    model_source: str  # the name, or the config file's path
    pretrained: str  # tag, file-sha256:<hex>, or random-init
    pretrained_source: str  # the tag, or the checkpoint file's path
    weights_sha256: str
    aggregate: Aggregate
    open_clip_version: str
    labels: list[int]
    ids: list[str]

    def to_header(self) -> dict[str, str]:
        """safetensors metadata holds strings only: lists go in as JSON."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.model_dump().items()}

    @classmethod
    def from_header(cls, header: dict[str, str]) -> EmbeddingMetadata:
        values: dict[str, Any] = dict(header)
        for key in ("labels", "ids"):
            if key in values:
                values[key] = json.loads(values[key])
        return cls.model_validate(values)

    @property
    def clip(self) -> ClipIdentity:
        return ClipIdentity(
            model=self.model, pretrained=self.pretrained, weights_sha256=self.weights_sha256
        )


@dataclass(frozen=True)
class ClassEmbeddings:
    """A loaded cache file: `class_embeddings` [N, D], unit rows; per description [N, K, D]."""

    path: Path
    class_embeddings: torch.Tensor
    description_embeddings: torch.Tensor
    metadata: EmbeddingMetadata

    @property
    def labels(self) -> list[int]:
        return self.metadata.labels

    @property
    def ids(self) -> list[str]:
        return self.metadata.ids


def cache_key(
    descriptions_sha256: str, model_identity: str, pretrained_identity: str, aggregate: Aggregate
) -> str:
    return sha256_json(
        {
            "descriptions_sha256": descriptions_sha256,
            "model": model_identity,
            "pretrained": pretrained_identity,
            "aggregate": aggregate,
            "open_clip": open_clip.__version__,
        }
    )


def embedding_cache_file(
    descriptions: Path,
    model: str,
    pretrained: str | Path | None,
    aggregate: Aggregate,
    cache_root: Path,
) -> Path:
    """Where `embed` stores (or stored) these embeddings; computed without loading any weights."""
    descriptions = Path(descriptions)
    if not descriptions.is_file():
        raise UserError(f"{descriptions}: descriptions file not found")
    model_identity, pretrained_identity = describe_clip_source(model, pretrained)
    key = cache_key(sha256_file(descriptions), model_identity, pretrained_identity, aggregate)
    return Path(cache_root) / "embeddings" / f"{key}.safetensors"


def token_count(tokenizer: Any, text: str) -> int:
    """Tokens of `text` with start and end, counted before any truncation."""
    if hasattr(tokenizer, "encode"):
        return len(tokenizer.encode(text)) + 2
    return len(tokenizer.tokenizer(text)["input_ids"])


@torch.no_grad()
def compute_embeddings(
    document: DescriptionsFile, clip: LoadedClip, aggregate: Aggregate, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class embeddings [N, D], description embeddings [N, K, D]), float32 on the CPU."""
    counts = {len(entry.descriptions) for entry in document.classes}
    if len(counts) != 1:
        first = document.classes[0]
        odd = next(e for e in document.classes if len(e.descriptions) != len(first.descriptions))
        raise UserError(
            f"class {odd.label} '{odd.id}' has {len(odd.descriptions)} descriptions but class "
            f"{first.label} '{first.id}' has {len(first.descriptions)}: every class needs as many"
        )
    context = getattr(clip.tokenizer, "context_length", 77)
    for entry in document.classes:
        for text in [*entry.descriptions, entry.path[-1]]:
            tokens = token_count(clip.tokenizer, text)
            if tokens > context:
                raise UserError(
                    f"class {entry.label} '{entry.id}': {tokens} tokens, CLIP's context holds "
                    f"{context}: {text!r}"
                )
    texts = [text for entry in document.classes for text in entry.descriptions]
    names = [entry.path[-1] for entry in document.classes]
    encoded = _encode(clip, texts + names, batch_size)
    per_class = encoded[: len(texts)].reshape(len(document.classes), counts.pop(), -1)
    pooled = per_class.sum(dim=1)
    if aggregate == "mean+name":
        pooled = pooled + encoded[len(texts) :]
    return torch.nn.functional.normalize(pooled, dim=-1), per_class


def _encode(clip: LoadedClip, texts: list[str], batch_size: int) -> torch.Tensor:
    device = next(clip.module.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(texts[start : start + batch_size]).to(device)
        chunks.append(clip.module.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(chunks)


def write_embeddings(
    path: Path,
    class_embeddings: torch.Tensor,
    description_embeddings: torch.Tensor,
    metadata: EmbeddingMetadata,
) -> None:
    tensors = {
        CLASS_TENSOR: class_embeddings.contiguous(),
        DESCRIPTION_TENSOR: description_embeddings.contiguous(),
    }
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata.to_header()))


def embed_descriptions(
    descriptions: Path, clip: LoadedClip, model_source: str, pretrained_source: str,
    aggregate: Aggregate, path: Path, batch_size: int = 64,
) -> ClassEmbeddings:  # fmt: skip
    """Compute and write the cache file for `descriptions` with `clip`."""
    document = read_descriptions(descriptions)
    class_embeddings, description_embeddings = compute_embeddings(
        document, clip, aggregate, batch_size
    )
    metadata = EmbeddingMetadata(
        format=FORMAT,
        descriptions_sha256=sha256_file(descriptions),
        descriptions_path=str(Path(descriptions).resolve()),
        model=clip.identity.model,
        model_source=model_source,
        pretrained=clip.identity.pretrained,
        pretrained_source=pretrained_source,
        weights_sha256=clip.identity.weights_sha256,
        aggregate=aggregate,
        open_clip_version=open_clip.__version__,
        labels=[entry.label for entry in document.classes],
        ids=[entry.id for entry in document.classes],
    )
    write_embeddings(path, class_embeddings, description_embeddings, metadata)
    return ClassEmbeddings(path, class_embeddings, description_embeddings, metadata)


def load_class_embeddings(
    path: Path,
    expected_labels: Sequence[int] | None = None,
    expected_ids: Sequence[str] | None = None,
    clip: ClipIdentity | None = None,
) -> ClassEmbeddings:
    """Read a cache file, refusing anything that does not match what the caller needs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such embedding cache file; make it with intclip-prompts embed")
    try:
        with safetensors.safe_open(path, framework="pt") as reader:
            header = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except Exception as err:  # the safetensors parser reports any damage as a plain exception
        raise UserError(f"{path}: damaged or not a safetensors file ({err})") from err
    try:
        metadata = EmbeddingMetadata.from_header(header)
    except (ValidationError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not an intclip embedding cache (bad header: {err})") from None
    loaded = ClassEmbeddings(
        path, tensors.get(CLASS_TENSOR), tensors.get(DESCRIPTION_TENSOR), metadata
    )
    _check_intact(loaded)
    _check_expectations(loaded, expected_labels, expected_ids, clip)
    return loaded


def _check_intact(loaded: ClassEmbeddings) -> None:
    path, classes, descriptions = (
        loaded.path,
        loaded.class_embeddings,
        loaded.description_embeddings,
    )
    if classes is None or descriptions is None:
        raise UserError(f"{path}: missing the {CLASS_TENSOR} or {DESCRIPTION_TENSOR} tensor")
    count = len(loaded.labels)
    if len(loaded.ids) != count or classes.ndim != 2 or classes.shape[0] != count:
        raise UserError(
            f"{path}: {CLASS_TENSOR} has shape {tuple(classes.shape)} for {count} labels"
        )
    if descriptions.ndim != 3 or descriptions.shape[0] != count:
        raise UserError(f"{path}: {DESCRIPTION_TENSOR} has shape {tuple(descriptions.shape)}")
    if classes.dtype != torch.float32 or not torch.isfinite(classes).all():
        raise UserError(f"{path}: {CLASS_TENSOR} must be finite float32")
    norms = classes.norm(dim=-1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=UNIT_NORM_TOLERANCE):
        row = int((norms - 1).abs().argmax())
        raise UserError(f"{path}: row {row} of {CLASS_TENSOR} has norm {norms[row]:.6f}, not 1")


def _check_expectations(
    loaded: ClassEmbeddings,
    expected_labels: Sequence[int] | None,
    expected_ids: Sequence[str] | None,
    clip: ClipIdentity | None,
) -> None:
    for what, have, want in (
        ("labels", loaded.labels, expected_labels),
        ("ids", loaded.ids, expected_ids),
    ):
        if want is None or list(want) == list(have):
            continue
        if len(want) != len(have):
            raise UserError(f"{loaded.path}: {len(have)} classes, the dataset has {len(want)}")
        row = next(i for i, (a, b) in enumerate(zip(have, want, strict=True)) if a != b)
        raise UserError(
            f"{loaded.path}: {what} differ at row {row}: the cache has {have[row]!r}, "
            f"the dataset has {want[row]!r}"
        )
    if clip is not None:
        differences = loaded.metadata.clip.differences(clip)
        if differences:
            raise UserError(f"{loaded.path} was made with another CLIP: {'; '.join(differences)}")
