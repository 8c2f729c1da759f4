"""IntCLIP checkpoints: only the trained tensors and a JSON header, in safetensors.

The frozen CLIP is not stored: loading rebuilds the model on the CLIP it was trained on and
refuses any other (model name and weights checksum), and refuses class embeddings other than the
ones it was trained with. Nothing is unpickled, and a checksum over the stored tensors catches a
corrupted file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import safetensors
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from intclip.model import IntCLIP, ModelConfig
from pipeline.clip import ClipIdentity, LoadedClip, state_dict_sha256, tensor_sha256
from pipeline.errors import UserError
from pipeline.files import atomic_write_bytes

if TYPE_CHECKING:
    from intclip.config import TrainConfig

CHECKPOINT_FORMAT = "intclip-model-v1"
HEADER_KEY = "intclip"


class CheckpointHeader(BaseModel):
    """What a checkpoint was trained with; readable without loading any tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["intclip-model-v1"]
    config: ModelConfig
    clip: ClipIdentity
    num_classes: int
    class_embeddings_sha256: str
    trained_sha256: str
    training: dict[str, Any] | None = None
    """The resolved training config (every switch of the recipe); None outside a training run."""


def save_model(model: IntCLIP, path: Path, training: TrainConfig | None = None) -> None:
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
        class_embeddings_sha256=model.class_embeddings_sha256,
        trained_sha256=state_dict_sha256(tensors),
        training=training.model_dump(mode="json") if training is not None else None,
    )
    data = safetensors.torch.save(tensors, metadata={HEADER_KEY: header.model_dump_json()})
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
    try:
        return CheckpointHeader.model_validate_json(metadata[HEADER_KEY])
    except ValidationError as err:
        reason = err.errors()[0]
        where = ".".join(str(part) for part in reason["loc"])
        raise UserError(f"{path}: invalid checkpoint header ({where}: {reason['msg']})") from err


def load_model(path: Path, clip: LoadedClip, class_embeddings: torch.Tensor) -> IntCLIP:
    """Rebuild the model on `clip` and `class_embeddings`, refusing any that differ."""
    path = Path(path)
    header = read_checkpoint_header(path)
    differences = header.clip.differences(clip.identity)
    if differences:
        raise UserError(f"{path} was trained on another CLIP: {'; '.join(differences)}")
    if len(class_embeddings) != header.num_classes:
        raise UserError(
            f"{path} was trained for {header.num_classes} classes; "
            f"the class embeddings given have {len(class_embeddings)}"
        )
    if tensor_sha256(class_embeddings.float()) != header.class_embeddings_sha256:
        raise UserError(f"{path} was trained with other class embeddings (sha256 differs)")
    tensors = safetensors.torch.load_file(path, device="cpu")
    if state_dict_sha256(tensors) != header.trained_sha256:
        raise UserError(f"{path} is corrupted: its tensors do not match their recorded checksum")
    model = IntCLIP(clip, class_embeddings, header.config)
    model.load_trained_state_dict(tensors, str(path))
    return model
