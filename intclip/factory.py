"""Building what a config describes: its CLIP, its class embeddings, its datasets' transforms.

Training, evaluation, prediction and the zero-shot baseline all start here, so they cannot
disagree on which CLIP, which embeddings or which normalisation they use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intclip.config import DataConfig, TrainConfig
from intclip.image_pipeline import ImagePipeline, ModelInput, build_image_pipeline
from intclip.transforms import eval_transform
from pipeline.clip import LoadedClip, load_clip
from pipeline.console import stderr
from pipeline.embeddings import ClassEmbeddings, embedding_cache_file, load_class_embeddings
from pipeline.files import cache_root
from pipeline.images import ImageTransform
from pipeline.taxonomy import Taxonomy, load_taxonomy


@dataclass(frozen=True)
class Components:
    clip: LoadedClip
    embeddings: ClassEmbeddings
    taxonomy: Taxonomy | None
    image_size: int
    data: DataConfig

    @property
    def class_embeddings(self) -> torch.Tensor:
        return self.embeddings.class_embeddings

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
        return ModelInput(device, mean, std, pipeline.normalized_on_device, channels_last)


def build_components(config: TrainConfig, device: torch.device) -> Components:
    """Load the CLIP and the class embeddings made with it, checked against the dataset."""
    clip = load_clip(config.clip.name, config.clip.pretrained, device)
    taxonomy = load_taxonomy(config.data.taxonomy) if config.data.taxonomy else None
    path = config.clip.embeddings or embedding_cache_file(
        config.clip.descriptions,
        config.clip.name,
        config.clip.pretrained,
        config.clip.aggregate,
        cache_root(),
    )
    embeddings = load_class_embeddings(
        path,
        expected_labels=list(range(config.data.num_classes)),
        expected_ids=[c.id for c in taxonomy.classes] if taxonomy else None,
        clip=clip.identity,
    )
    image_size = config.clip.image_size or clip.image_size[0]
    if not config.data.normalize:
        stderr.print(
            "warning: data.normalize is false: images reach CLIP without the mean/std "
            "normalisation it was trained on (the official code's omission, for parity only)",
            markup=False,
        )
    return Components(clip, embeddings, taxonomy, image_size, config.data)
