"""Frozen CLIP text embeddings of a descriptions file: computed once, cached, and checked on load.

The cache file is `<cache root>/embeddings/<key>.safetensors`, where the key hashes everything
the embeddings depend on: the descriptions file, the CLIP model and weights, the aggregation and
the open_clip version. `load_class_embeddings` is the one reader: it refuses a damaged file,
labels in another order, or a CLIP other than the model's.

Every class must have the same number K of descriptions: padding would either weight classes
unequally or need a mask in every reader of the [N, K, D] tensor, and `intclip-prompts build`
always asks for the same number per class, so a ragged file is refused, naming the odd class.
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
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.clip.loading import (
    Activation,
    ClipIdentity,
    LoadedClip,
    describe_clip_source,
    legacy_activation,
)
from pipeline.clip.text_features import encode_token_ids
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_bytes, sha256_file, sha256_json
from pipeline.descriptions.format import DescriptionsFile, read_descriptions
from pipeline.embeddings.class_embedding import TEXT_BATCH_SIZE, Aggregate

FORMAT = "intclip-embeddings-v1"
CLASS_TENSOR = "class_embeddings"
DESCRIPTION_TENSOR = "description_embeddings"
UNIT_NORM_TOLERANCE = 1e-4


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
    activation: Activation | None = None  # None in files written before it was recorded
    aggregate: Aggregate
    open_clip_version: str
    labels: list[int]
    ids: list[str]

    def to_header(self) -> dict[str, str]:
        """safetensors metadata holds strings only: lists go in as JSON."""
        return {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in self.model_dump(exclude_none=True).items()
        }

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
            model=self.model,
            pretrained=self.pretrained,
            weights_sha256=self.weights_sha256,
            activation=self.activation,
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

    def require_clip(self, clip: ClipIdentity) -> None:
        """Refuse a CLIP other than the one these embeddings were made with: class embeddings
        live in one CLIP's joint space and mean nothing in another's."""
        differences = self.metadata.clip.differences(clip)
        if differences:
            raise UserError(f"{self.path} was made with another CLIP: {'; '.join(differences)}")


@dataclass(frozen=True)
class CacheKey:
    """Every input a cache file depends on: its name hashes them, and its header must record the
    same ones, checked on every read, so a file renamed, copied or edited by hand is never served
    for inputs it was not made from."""

    descriptions_sha256: str
    model: str
    pretrained: str
    activation: Activation
    aggregate: Aggregate
    num_classes: int

    def path(self, cache_root: Path) -> Path:
        """`<cache root>/embeddings/<key>.safetensors`, the key a hash of every input. The
        activation enters the key only where it differs from what intclip built before recording
        it, so caches that were right keep their keys and the ones made with the wrong activation
        are not found."""
        inputs = {
            "descriptions_sha256": self.descriptions_sha256,
            "model": self.model,
            "pretrained": self.pretrained,
            "aggregate": self.aggregate,
            "open_clip": open_clip.__version__,
        }
        if self.activation != legacy_activation(self.model, self.pretrained):
            inputs["activation"] = self.activation
        return Path(cache_root) / "embeddings" / f"{sha256_json(inputs)}.safetensors"

    def differences(self, metadata: EmbeddingMetadata) -> list[str]:
        """What the header records differently from these inputs, one phrase each; a header
        without an activation records the one intclip built before it recorded activations."""
        recorded = {
            "descriptions sha256": metadata.descriptions_sha256,
            "CLIP model": metadata.model,
            "CLIP weights": metadata.pretrained,
            "activation": metadata.clip.activation,
            "aggregate": metadata.aggregate,
            "class count": len(metadata.labels),
        }
        wanted = {
            "descriptions sha256": self.descriptions_sha256,
            "CLIP model": self.model,
            "CLIP weights": self.pretrained,
            "activation": self.activation,
            "aggregate": self.aggregate,
            "class count": self.num_classes,
        }
        return [
            f"{name} is {recorded[name]!r} in the header, {wanted[name]!r} asked for"
            for name in wanted
            if recorded[name] != wanted[name]
        ]


def embedding_cache_key(
    descriptions: Path, model: str, pretrained: str | Path | None, aggregate: Aggregate
) -> CacheKey:
    """The key of `embed`'s cache file for these inputs; computed without loading any weights."""
    descriptions = Path(descriptions)
    if not descriptions.is_file():
        raise UserError(f"{descriptions}: descriptions file not found")
    digest = sha256_file(descriptions)
    document = read_descriptions(descriptions)
    model_identity, pretrained_identity, activation = describe_clip_source(model, pretrained)
    return CacheKey(
        digest,
        model_identity,
        pretrained_identity,
        activation,
        aggregate,
        len(document.classes),
    )


def token_count(tokenizer: Any, text: str) -> int:
    """Tokens of `text` with start and end, counted before any truncation."""
    if hasattr(tokenizer, "encode"):
        return len(tokenizer.encode(text)) + 2
    return len(tokenizer.tokenizer(text)["input_ids"])


@torch.no_grad()
def compute_embeddings(
    document: DescriptionsFile,
    clip: LoadedClip,
    aggregate: Aggregate,
    batch_size: int = TEXT_BATCH_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class embeddings [N, D], description embeddings [N, K, D]), float32 on the CPU."""
    per_class = _descriptions_per_class(document)
    names = [entry.path[-1] for entry in document.classes]
    texts = [text for entry in document.classes for text in entry.descriptions]
    check_context(document, clip.tokenizer)
    encoded = encode_texts(clip, texts + names, batch_size)
    descriptions = encoded[: len(texts)].reshape(len(names), per_class, -1)
    pooled = descriptions.sum(dim=1)
    if aggregate == "mean+name":
        pooled = pooled + encoded[len(texts) :]
    return torch.nn.functional.normalize(pooled, dim=-1), descriptions


def _descriptions_per_class(document: DescriptionsFile) -> int:
    """K, the same for every class (see the module docstring), or an error naming the odd class."""
    if not document.classes:
        raise UserError("no classes to embed")
    first = document.classes[0]
    for entry in document.classes:
        if len(entry.descriptions) != len(first.descriptions):
            raise UserError(
                f"class {entry.label} '{entry.id}' has {len(entry.descriptions)} descriptions but "
                f"class {first.label} '{first.id}' has {len(first.descriptions)}: every class "
                "needs as many"
            )
    return len(first.descriptions)


def check_context(document: DescriptionsFile, tokenizer: Any) -> None:
    """Refuse any text longer than CLIP's context: its tokenizer would cut it off silently.
    Every text of a class is checked: its candidates, descriptions and name."""
    context = getattr(tokenizer, "context_length", DEFAULT_CONTEXT_LENGTH)
    for entry in document.classes:
        for text in dict.fromkeys([*entry.answer, *entry.descriptions, entry.path[-1]]):
            tokens = token_count(tokenizer, text)
            if tokens > context:
                raise UserError(
                    f"class {entry.label} '{entry.id}': {tokens} tokens, CLIP's context holds "
                    f"{context}: {text!r}"
                )


def encode_texts(
    clip: LoadedClip, texts: list[str], batch_size: int = TEXT_BATCH_SIZE
) -> torch.Tensor:
    """Unit-length features [len(texts), D] of `texts` in their order, float32 on the CPU;
    batched shortest first so that each batch stops at its own longest text
    (`encode_token_ids`) instead of the 77-token context. Check the texts' length first
    (`check_context`): the tokenizer cuts a longer text off silently."""
    device = next(clip.module.parameters()).device
    tokens = clip.tokenizer(texts)
    order = torch.argsort((tokens != 0).sum(dim=-1), stable=True)
    chunks = [
        encode_token_ids(clip.module, tokens[order[start : start + batch_size]].to(device))
        for start in range(0, len(texts), batch_size)
    ]
    return torch.cat([chunk.float().cpu() for chunk in chunks])[torch.argsort(order)]


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
    descriptions: Path,
    clip: LoadedClip,
    model_source: str,
    pretrained_source: str,
    aggregate: Aggregate,
    cache_root: Path,
    batch_size: int = TEXT_BATCH_SIZE,
) -> ClassEmbeddings:
    """Compute and write the cache file for `descriptions` with `clip`. The sources `clip` was
    loaded from (model name or config path, tag or checkpoint path) are recorded so that
    `cache verify` can load it again."""
    digest = sha256_file(descriptions)
    document = read_descriptions(descriptions)
    try:
        class_embeddings, description_embeddings = compute_embeddings(
            document, clip, aggregate, batch_size
        )
    except UserError as err:
        raise UserError(f"{descriptions}: {err}", err.exit_code) from None
    metadata = EmbeddingMetadata(
        format=FORMAT,
        descriptions_sha256=digest,
        descriptions_path=str(Path(descriptions).resolve()),
        model=clip.identity.model,
        model_source=model_source,
        pretrained=clip.identity.pretrained,
        pretrained_source=pretrained_source,
        weights_sha256=clip.identity.weights_sha256,
        activation=clip.identity.activation,
        aggregate=aggregate,
        open_clip_version=open_clip.__version__,
        labels=[entry.label for entry in document.classes],
        ids=[entry.id for entry in document.classes],
    )
    key = CacheKey(
        digest,
        metadata.model,
        metadata.pretrained,
        clip.identity.activation,
        aggregate,
        len(document.classes),
    )
    path = key.path(cache_root)
    write_embeddings(path, class_embeddings, description_embeddings, metadata)
    return ClassEmbeddings(path, class_embeddings, description_embeddings, metadata)


def load_class_embeddings(
    path: Path,
    expected_labels: Sequence[int] | None = None,
    expected_ids: Sequence[str] | None = None,
    clip: ClipIdentity | None = None,
    key: CacheKey | None = None,
) -> ClassEmbeddings:
    """Read a cache file, refusing anything that does not match what the caller needs: with
    `key`, a header recording other inputs than the key's."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such embedding cache file; make it with intclip-prompts embed")
    try:
        with safetensors.safe_open(path, framework="pt") as reader:
            header = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except (OSError, safetensors.SafetensorError) as err:
        raise UserError(f"{path}: damaged or not a safetensors file ({err})") from err
    metadata = _read_metadata(path, header)
    differences = key.differences(metadata) if key is not None else []
    if differences:
        raise UserError(f"{path}: not made from the inputs asked for: {'; '.join(differences)}")
    missing = [name for name in (CLASS_TENSOR, DESCRIPTION_TENSOR) if name not in tensors]
    if missing:
        raise UserError(f"{path}: missing the {' and '.join(missing)} tensor")
    loaded = ClassEmbeddings(path, tensors[CLASS_TENSOR], tensors[DESCRIPTION_TENSOR], metadata)
    _check_intact(loaded)
    check_class_rows(loaded.path, loaded.labels, loaded.ids, expected_labels, expected_ids)
    if clip is not None:
        loaded.require_clip(clip)
    return loaded


def _read_metadata(path: Path, header: dict[str, str]) -> EmbeddingMetadata:
    try:
        return EmbeddingMetadata.from_header(header)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not an intclip embedding cache (header: {err})") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(
            f"{path}: not an intclip embedding cache (header {where}: {first['msg']})"
        ) from None


def _check_intact(loaded: ClassEmbeddings) -> None:
    path, classes, descriptions = (
        loaded.path,
        loaded.class_embeddings,
        loaded.description_embeddings,
    )
    count = len(loaded.labels)
    if len(loaded.ids) != count:
        raise UserError(f"{path}: {len(loaded.ids)} ids for {count} labels in the header")
    if classes.ndim != 2 or classes.shape[0] != count:
        raise UserError(
            f"{path}: {CLASS_TENSOR} has shape {tuple(classes.shape)} for {count} labels"
        )
    if descriptions.ndim != 3 or (len(descriptions), descriptions.shape[2]) != classes.shape:
        raise UserError(
            f"{path}: {DESCRIPTION_TENSOR} has shape {tuple(descriptions.shape)}, "
            f"{CLASS_TENSOR} {tuple(classes.shape)}"
        )
    for name, tensor in ((CLASS_TENSOR, classes), (DESCRIPTION_TENSOR, descriptions)):
        if tensor.dtype != torch.float32 or not torch.isfinite(tensor).all():
            raise UserError(f"{path}: {name} must be finite float32")
    norms = classes.norm(dim=-1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=UNIT_NORM_TOLERANCE):
        row = int((norms - 1).abs().argmax())
        raise UserError(f"{path}: row {row} of {CLASS_TENSOR} has norm {norms[row]:.6f}, not 1")


def check_class_rows(
    source: Path | str,
    labels: Sequence[int],
    ids: Sequence[str],
    expected_labels: Sequence[int] | None,
    expected_ids: Sequence[str] | None,
) -> None:
    """The rows of `source` (a cache or descriptions file) must be the dataset's classes in the
    dataset's order."""
    for what, have, want in (("labels", labels, expected_labels), ("ids", ids, expected_ids)):
        if want is None or list(want) == list(have):
            continue
        if len(want) != len(have):
            raise UserError(f"{source}: {len(have)} classes, the dataset has {len(want)}")
        row = next(i for i, (a, b) in enumerate(zip(have, want, strict=True)) if a != b)
        raise UserError(
            f"{source}: {what} differ at row {row}: the file has {have[row]!r}, "
            f"the dataset has {want[row]!r}"
        )
