"""Building what a config describes: its CLIP, its class text, its datasets' transforms.

Training, evaluation, prediction and the zero-shot baseline all start here, so they cannot
disagree on which CLIP, which class embeddings or texts, or which normalisation they use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from intclip.data.image_pipeline import ImagePipeline, ModelInput, build_image_pipeline
from intclip.data.transforms import eval_transform
from intclip.model.class_text import ClassTextSource, plain_class_embeddings
from intclip.model.prompts import ClassTexts, read_class_texts
from intclip.training.config import DataConfig, TrainConfig
from pipeline.clip.images import ImageTransform
from pipeline.clip.loading import LoadedClip, load_clip
from pipeline.common.console import stderr
from pipeline.common.errors import UserError
from pipeline.common.files import cache_root
from pipeline.descriptions.official import OFFICIAL_SUFFIX, import_hint
from pipeline.descriptions.taxonomy import Taxonomy, load_taxonomy
from pipeline.embeddings.cache import (
    CacheKey,
    check_class_rows,
    embedding_cache_key,
    load_class_embeddings,
)


@dataclass(frozen=True)
class Components:
    clip: LoadedClip
    class_text: ClassTextSource | None
    """Cached class embeddings [N, D] (`model.text: cached`) or class texts (`prompts`); None
    when built without (`build_components(..., with_class_text=False)`)."""
    ids: list[str]
    """Class ids in label order."""
    taxonomy: Taxonomy | None
    image_size: int
    data: DataConfig

    def zero_shot_embeddings(self) -> torch.Tensor:
        """Plain CLIP's class embeddings: the cached ones ([N, K, D] per description with
        `model.class_text_pooling`), or those of the prompts' class texts without any learned
        context."""
        if isinstance(self.class_text, ClassTexts):
            return plain_class_embeddings(self.clip, self.class_text)
        return self.class_text

    def eval_transform(self) -> ImageTransform:
        mean, std = self.clip.image_mean, self.clip.image_std
        return eval_transform(self.image_size, mean, std, self.data)

    def image_pipeline(self, config: TrainConfig) -> ImagePipeline:
        """The datasets' transforms of opened files, as `data.pipeline` chooses."""
        mean, std = self.clip.image_mean, self.clip.image_std
        return build_image_pipeline(self.image_size, mean, std, config.augment, config.data)

    def model_input(
        self, pipeline: ImagePipeline, device: torch.device, channels_last: bool = False
    ) -> ModelInput:
        """What turns the pipeline's batches into the model's input on `device`: scaled to
        [0, 1] and, unless `data.normalize` is off, normalised with CLIP's mean and std."""
        mean, std = self.clip.image_mean, self.clip.image_std
        if not self.data.normalize:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        decode = None
        if pipeline.device_decode is not None:
            if device.type != "cuda":
                raise UserError(
                    f"data.decode: gpu needs a CUDA device, and this run's is {device.type}; "
                    "set data.decode: cpu"
                )
            decode = pipeline.device_decode(device)
        normalized = pipeline.normalized_on_device
        return ModelInput(device, mean, std, normalized, channels_last, decode)


def class_embeddings_file(config: TrainConfig) -> tuple[Path, CacheKey | None]:
    """The embedding cache file the config names: directly, or by the key of its descriptions,
    which the file's header must then match (the key is returned to check it)."""
    if config.clip.embeddings is not None:
        return config.clip.embeddings, None
    key = embedding_cache_key(
        config.clip.descriptions,
        config.clip.name,
        config.clip.pretrained,
        config.clip.aggregate,
    )
    return key.path(cache_root()), key


def _cached_embeddings(
    config: TrainConfig, clip: LoadedClip, expected_ids: list[str] | None
) -> tuple[ClassTextSource, list[str]]:
    path, key = class_embeddings_file(config)
    embeddings = load_class_embeddings(
        path,
        key=key,
        expected_labels=list(range(config.data.num_classes)),
        expected_ids=expected_ids,
        clip=clip.identity,
    )
    if config.model.class_text_pooling != "embedding":  # each description, scored and pooled
        return embeddings.description_embeddings, embeddings.ids
    return embeddings.class_embeddings, embeddings.ids


def _prompt_texts(
    config: TrainConfig, clip: LoadedClip, expected_ids: list[str] | None
) -> tuple[ClassTextSource, list[str]]:
    """The class texts of the descriptions file, read directly: no cache is involved."""
    texts = read_class_texts(config.clip.descriptions, config.model.prompts.class_text)
    check_class_rows(
        config.clip.descriptions,
        texts.labels,
        texts.ids,
        list(range(config.data.num_classes)),
        expected_ids,
    )
    return texts, texts.ids


CLASS_TEXT_LOADERS: dict[
    str, Callable[[TrainConfig, LoadedClip, list[str] | None], tuple[ClassTextSource, list[str]]]
] = {"cached": _cached_embeddings, "prompts": _prompt_texts}


def check_official_sentences(config: TrainConfig) -> None:
    """The official sentences are imported, never shipped: a config that names the imported
    file before it exists says, in one line, the command that makes it."""
    path = config.clip.descriptions
    if path is not None and path.name.endswith(OFFICIAL_SUFFIX) and not path.exists():
        raise UserError(f"{path}: not found: {import_hint(path)}")


def build_components(
    config: TrainConfig, device: torch.device, with_class_text: bool = True
) -> Components:
    """Load the CLIP and the class text made for it, checked against the dataset;
    `with_class_text=False` loads the CLIP alone (feature extraction needs no class text)."""
    check_official_sentences(config)
    clip = load_clip(config.clip.name, config.clip.pretrained, device)
    taxonomy = load_taxonomy(config.data.taxonomy) if config.data.taxonomy else None
    expected_ids = [c.id for c in taxonomy.classes] if taxonomy else None
    class_text, ids = None, list(expected_ids or [])
    if with_class_text:
        class_text, ids = CLASS_TEXT_LOADERS[config.model.text](config, clip, expected_ids)
    image_size = config.clip.image_size or clip.image_size[0]
    if not config.data.normalize:
        stderr.print(
            "warning: data.normalize is false: images reach CLIP without the mean/std "
            "normalisation it was trained on (the official code's omission, for parity only)",
            markup=False,
        )
    return Components(clip, class_text, ids, taxonomy, image_size, config.data)
