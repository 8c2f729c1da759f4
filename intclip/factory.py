"""Building what a config describes: its CLIP, its class embeddings, its datasets' transforms.

Training, evaluation, prediction and the zero-shot baseline all start here, so they cannot
disagree on which CLIP, which embeddings or which normalisation they use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intclip.config import TrainConfig
from intclip.image_pipeline import ImagePipeline, ModelInput, build_image_pipeline
from pipeline.clip import LoadedClip, load_clip
from pipeline.embeddings import ClassEmbeddings, embedding_cache_file, load_class_embeddings
from pipeline.files import cache_root
from pipeline.images import ImageTransform, eval_transform
from pipeline.taxonomy import Taxonomy, load_taxonomy


@dataclass(frozen=True)
class Components:
    clip: LoadedClip
    embeddings: ClassEmbeddings
    taxonomy: Taxonomy | None
    image_size: int

    @property
    def class_embeddings(self) -> torch.Tensor:
        return self.embeddings.class_embeddings

    def eval_transform(self) -> ImageTransform:
        return eval_transform(self.image_size, self.clip.image_mean, self.clip.image_std)

    def image_pipeline(self, config: TrainConfig) -> ImagePipeline:
        """The datasets' transforms of opened files, as `data.pipeline` chooses."""
        mean, std = self.clip.image_mean, self.clip.image_std
        return build_image_pipeline(
            config.data.pipeline, self.image_size, mean, std, config.augment
        )

    def model_input(
        self, pipeline: ImagePipeline, device: torch.device, channels_last: bool = False
    ) -> ModelInput:
        """What turns the pipeline's batches into the model's input on `device`."""
        mean, std = self.clip.image_mean, self.clip.image_std
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
    return Components(clip, embeddings, taxonomy, image_size)
