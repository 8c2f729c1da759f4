"""The data sections of the training config: where images and labels are, and how images are
augmented. Validated at the edge; everything below reads plain attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, model_validator

from intclip.data.shrink import DEFAULT_CROP_SCALE_MIN
from pipeline.common.config_section import ConfigSection
from pipeline.common.errors import UserError
from pipeline.common.files import project_prompts
from pipeline.descriptions.taxonomy import load_taxonomy

DEFAULT_TAXONOMY = project_prompts() / "intentonomy.yaml"
"""Whose classes a dataset has when its config names no taxonomy: Intentonomy's 28."""

CropShare = Annotated[float, Field(gt=0, le=1)]


class DataConfig(ConfigSection):
    """Where the images and labels are. Relative paths are relative to the working directory."""

    format: Literal["intentonomy", "manifest"] = "intentonomy"
    """`intentonomy`: the official COCO-like annotation JSONs; `manifest`: CSV or JSONL rows of
    `image` and `labels` (docs/own-data.md)."""
    image_root: Path
    """The folder the annotations' image paths are relative to."""
    train: Path
    """The training split's annotation file or manifest."""
    val: Path
    """The validation split: the best epoch and every threshold are chosen on it."""
    test: Path | None = None
    """The test split, read only by `eval --split test`; never by training."""
    num_classes: PositiveInt | None = None
    """The dataset's class count; `null`: the class count of `taxonomy` (Intentonomy's 28
    without one), filled in when the config is read. `check-data` compares it with the
    annotations' label width."""
    label_mode: Literal["binary", "soft"] = "binary"
    """`binary`: a class any annotator chose is positive (softprob > 0, as the paper); `soft`:
    the annotators' agreement is a soft target."""
    taxonomy: Path | None = None
    """Taxonomy whose labels must match the dataset's classes (and the embeddings' ids)."""
    num_workers: int | None = Field(default=None, ge=0)
    """Loader worker processes; default: the machine's cores."""
    prefetch_factor: PositiveInt = 4
    """Batches each worker prepares ahead."""
    pipeline: Literal["fast", "torchvision"] = "fast"
    """`fast`: JPEGs decoded at reduced scale, uint8 to the device, normalised there;
    `torchvision`: the plain transforms, full decode and float tensors in the workers."""
    decode: Literal["cpu", "gpu"] = "cpu"
    """`gpu` (with `pipeline: fast` and a CUDA device): workers only read the files; JPEGs are
    decoded with nvJPEG, cropped, resized and augmented on the GPU (intclip.data.device_decode)."""
    eval_resize: Literal["crop", "squash"] = "crop"
    """Evaluation images: shorter side resized then centre-cropped, as CLIP was pre-trained
    (`crop`), or squashed to a square whatever their aspect ratio (`squash`, the official code)."""
    normalize: bool = True
    """Normalise images with CLIP's mean and std. `false` reproduces the official code's omission,
    for parity only: CLIP was trained on normalised images."""

    @model_validator(mode="before")
    @classmethod
    def _classes_from_the_taxonomy(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("num_classes") is not None:
            return data
        taxonomy = data.get("taxonomy")
        path = Path(taxonomy) if isinstance(taxonomy, str | Path) else DEFAULT_TAXONOMY
        try:
            count = len(load_taxonomy(path).classes)
        except UserError as err:
            first = str(err).splitlines()[0]
            raise UserError(
                f"data.num_classes is not set, so it is the class count of the taxonomy "
                f"{path}, which cannot be read ({first})"
            ) from None
        return {**data, "num_classes": count}

    @model_validator(mode="after")
    def _gpu_decoding_is_fast(self) -> DataConfig:
        if self.decode == "gpu" and self.pipeline != "fast":
            raise ValueError("decode: gpu needs pipeline: fast")
        return self


class AugmentConfig(ConfigSection):
    """Training augmentation, really applied in training (the official code never did)."""

    enabled: bool = True
    """`false` trains on the evaluation transform, as the official code in effect does."""
    crop_scale: tuple[CropShare, CropShare] = (DEFAULT_CROP_SCALE_MIN, 1.0)
    """The share of the image's area a random crop covers, lowest and highest: each in (0, 1],
    the first no larger than the second."""
    flip: bool = True
    """Random horizontal flip."""
    randaugment_ops: int = Field(default=2, ge=0, le=14)
    """RandAugment operations per image, at most the 14 it has; 0 turns it off."""
    randaugment_magnitude: int = Field(default=9, ge=0, le=30)
    """RandAugment magnitude (0-30)."""

    @model_validator(mode="after")
    def _crop_scale_ordered(self) -> AugmentConfig:
        low, high = self.crop_scale
        if low > high:
            raise ValueError(f"crop_scale: the lowest share {low} exceeds the highest {high}")
        return self
