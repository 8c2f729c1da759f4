"""Model checkpoints: only the trained tensors and a JSON header, in safetensors.

The frozen CLIP is not stored: loading rebuilds the model on the CLIP it was trained on and
refuses any other (model name and weights checksum), and refuses class embeddings (or, with
`model.text: prompts`, a descriptions file) other than the ones it was trained with. The learned
prompt contexts are trained tensors like any other. Nothing is unpickled, and checksums over
the stored tensors and over the header catch a corrupted file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import safetensors
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from intclip.model.class_text import ClassTextSource, text_mode_of
from intclip.model.frozen_clip import ModelInputKind
from intclip.model.models import AnyModelConfig, build_model, without_model_kind
from intclip.model.trained import TrainedModel
from pipeline.clip.loading import ClipIdentity, LoadedClip, state_dict_sha256
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_bytes, sha256_bytes

if TYPE_CHECKING:
    from intclip.training.config import TrainConfig

CHECKPOINT_FORMAT = "intclip-model-v1"
HEADER_KEY = "intclip"
HEADER_SHA256_KEY = "intclip_sha256"
"""sha256 of the header's JSON text; files written before it was kept have none."""


class CheckpointHeader(BaseModel):
    """What a checkpoint was trained with; readable without loading any tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["intclip-model-v1"]
    config: AnyModelConfig
    clip: ClipIdentity
    num_classes: int
    class_embeddings_sha256: str | None = None
    """`model.text: cached`: checksum of the class embeddings."""
    descriptions_sha256: str | None = None
    """`model.text: prompts`: sha256 of the descriptions file the prompts were built on."""
    trained_sha256: str
    training: dict[str, Any] | None = None
    """The resolved training config (every switch of the recipe); None outside a training run."""


def save_model(model: TrainedModel, path: Path, training: TrainConfig | None = None) -> None:
    """Write the trained tensors and the header (with the training config) atomically."""
    tensors = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.trained_state_dict().items()
    }
    header = CheckpointHeader(
        format=CHECKPOINT_FORMAT,
        config=model.config,
        clip=model.clip_identity,
        num_classes=model.num_classes,
        **{_TEXT_CHECKSUM[model.config.text]: model.text_sha256},
        trained_sha256=state_dict_sha256(tensors),
        training=training.model_dump(mode="json") if training is not None else None,
    )
    text = header.model_dump_json()
    metadata = {HEADER_KEY: text, HEADER_SHA256_KEY: sha256_bytes(text.encode("utf-8"))}
    data = safetensors.torch.save(tensors, metadata=metadata)
    atomic_write_bytes(Path(path), data)


def read_checkpoint_header(path: Path) -> CheckpointHeader:
    """The header alone, e.g. to find out which CLIP and config a checkpoint needs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safetensors.safe_open(path, framework="pt") as reader:
            metadata = reader.metadata() or {}
    except Exception as err:  # the safetensors parser reports any damage as a plain exception
        raise UserError(f"{path}: damaged or not a safetensors checkpoint ({err})") from err
    if HEADER_KEY not in metadata:
        raise UserError(f"{path}: not an IntCLIP checkpoint (no {HEADER_KEY!r} header)")
    recorded = metadata.get(HEADER_SHA256_KEY)
    if recorded is not None and recorded != sha256_bytes(metadata[HEADER_KEY].encode("utf-8")):
        raise UserError(f"{path} is corrupted: its header does not match its recorded checksum")
    try:
        return CheckpointHeader.model_validate_json(metadata[HEADER_KEY])
    except ValidationError as err:
        reason = err.errors()[0]
        where = ".".join(str(part) for part in without_model_kind(reason["loc"]))
        raise UserError(f"{path}: invalid checkpoint header ({where}: {reason['msg']})") from err


_TEXT_CHECKSUM = {"cached": "class_embeddings_sha256", "prompts": "descriptions_sha256"}
_TEXT_SOURCE = {"cached": "class embeddings", "prompts": "class texts"}


def load_model(
    path: Path,
    clip: LoadedClip,
    class_text: ClassTextSource,
    takes: ModelInputKind | None = None,
) -> TrainedModel:
    """Rebuild the model on `clip` and `class_text` (class embeddings, or the class texts of
    `model.text: prompts`), refusing any that differ from what it was trained with. `takes:
    images` gives a model trained on cached features its frozen tower back (prediction)."""
    path = Path(path)
    header = read_checkpoint_header(path)
    _refuse_other_clip_or_text(path, header, clip.identity, text_mode_of(class_text))
    tensors = _checked_tensors(path, header)
    model = build_model(clip, class_text, header.config, takes)
    _refuse_other_classes(path, header, model)
    model.load_trained_state_dict(tensors, str(path))
    return model


def load_weights(model: TrainedModel, path: Path) -> None:
    """Copy a checkpoint's trained tensors into `model`, built from another config (a new run
    started from them), refusing another CLIP, text mode or class set as `load_model` does."""
    header = read_checkpoint_header(path)
    _refuse_other_clip_or_text(path, header, model.clip_identity, model.config.text)
    _refuse_other_classes(path, header, model)
    model.load_trained_state_dict(_checked_tensors(path, header), str(path))


def _refuse_other_clip_or_text(
    path: Path, header: CheckpointHeader, clip: ClipIdentity, mode: str
) -> None:
    differences = header.clip.differences(clip)
    if differences:
        raise UserError(f"{path} was trained on another CLIP: {'; '.join(differences)}")
    if mode != header.config.text:
        raise UserError(
            f"{path} was trained with model.text: {header.config.text}; it cannot load as "
            f"model.text: {mode}"
        )


def _refuse_other_classes(path: Path, header: CheckpointHeader, model: TrainedModel) -> None:
    mode = header.config.text
    if model.num_classes != header.num_classes:
        raise UserError(
            f"{path} was trained for {header.num_classes} classes; "
            f"the {_TEXT_SOURCE[mode]} given have {model.num_classes}"
        )
    if model.text_sha256 != getattr(header, _TEXT_CHECKSUM[mode]):
        raise UserError(
            f"{path} was trained with other {_TEXT_SOURCE[mode]} ({_TEXT_CHECKSUM[mode]} differs)"
        )


def _checked_tensors(path: Path, header: CheckpointHeader) -> dict[str, torch.Tensor]:
    tensors = safetensors.torch.load_file(path, device="cpu")
    if state_dict_sha256(tensors) != header.trained_sha256:
        raise UserError(f"{path} is corrupted: its tensors do not match their recorded checksum")
    return tensors
