"""`model.class_text_pooling` (issue 23): an image scored against each description of a class,
the similarities then pooled, instead of against the mean of their embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from intclip.data.feature_dataset import FeatureBatch
from intclip.model.frozen_clip import FrozenCLIP, FrozenModelConfig
from intclip.model.head import ClassFeatures, ClassHead, PositiveScalarSetting, ScalarSetting
from intclip.model.intclip import IntCLIP, ModelConfig
from pipeline.clip.loading import LoadedClip
from pipeline.common.errors import UserError
from pipeline.embeddings.pooling import DESCRIPTION_TEMPERATURE, pool_descriptions
from pipeline.embeddings.zeroshot import ZeroShotCLIP
from testkit.tiny_clip import TINY_EMBED_DIM

CLASSES, DESCRIPTIONS = 5, 3


def descriptions(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    texts = torch.randn(CLASSES, DESCRIPTIONS, TINY_EMBED_DIM, generator=generator)
    return F.normalize(texts, dim=-1)


def head(mode: str, pooling: str = "embedding") -> ClassHead:
    fixed = {"learn": False}
    return ClassHead(
        CLASSES,
        mode,
        PositiveScalarSetting(initial=20.0, **fixed),
        PositiveScalarSetting(initial=10.0, **fixed),
        ScalarSetting(initial=0.0, **fixed),
        description_pooling=pooling,
    )


def test_the_three_poolings():
    similarity = torch.tensor([[0.30, 0.32, 0.31]])  # cosines differ by hundredths
    assert pool_descriptions(similarity, "mean", dim=1).item() == pytest.approx(0.31)
    assert pool_descriptions(similarity, "max", dim=1).item() == pytest.approx(0.32)
    soft = pool_descriptions(similarity, "softmax", dim=1).item()
    assert 0.31 < soft < 0.32
    weights = torch.softmax(DESCRIPTION_TEMPERATURE * similarity, dim=1)
    assert soft == pytest.approx((weights * similarity).sum().item())
    assert pool_descriptions(similarity, "softmax", 1, temperature=1e4).item() == pytest.approx(
        0.32
    )


@pytest.mark.parametrize("mode", ["global", "regional", "both", "official"])
@pytest.mark.parametrize("pooling", ["mean", "max", "softmax"])
def test_identical_descriptions_score_as_their_class_embedding(mode, pooling):
    """K copies of one text pool to that text's similarity, in every head form."""
    generator = torch.Generator().manual_seed(1)
    dense = torch.randn(2, TINY_EMBED_DIM, 3, 3, generator=generator)
    token = torch.randn(2, TINY_EMBED_DIM, generator=generator)
    classes = descriptions()[:, 0]
    copies = classes[:, None].expand(CLASSES, DESCRIPTIONS, TINY_EMBED_DIM)
    plain = head(mode)(dense, token, ClassFeatures(classes))
    pooled = head(mode, pooling)(dense, token, ClassFeatures(copies))
    torch.testing.assert_close(pooled, plain)


def test_max_pooling_scores_the_best_description_of_the_token_and_of_each_position():
    generator = torch.Generator().manual_seed(2)
    dense = torch.randn(2, TINY_EMBED_DIM, 3, 3, generator=generator)
    token = torch.randn(2, TINY_EMBED_DIM, generator=generator)
    texts = descriptions()
    each = torch.stack(
        [head("global")(dense, token, ClassFeatures(texts[:, k])) for k in range(DESCRIPTIONS)]
    )
    pooled = head("global", "max")(dense, token, ClassFeatures(texts))
    torch.testing.assert_close(pooled, each.amax(dim=0))

    positions = F.normalize(dense.flatten(2), dim=1)
    best = torch.einsum("nkd,bdp->bnkp", texts, positions).amax(dim=2)  # per position
    spatial = (torch.softmax(20.0 * best, dim=-1) * best).sum(dim=-1)
    regional = head("regional", "max")(dense, token, ClassFeatures(texts))
    with pytest.raises(ValueError, match="description pooling embedding"):
        head("global")(dense, token, ClassFeatures(texts))
    torch.testing.assert_close(regional, 10.0 * spatial)


def test_the_text_head_on_features_pools_each_description(tiny_clip: LoadedClip):
    texts = descriptions()
    config = FrozenModelConfig(head="text", class_text_pooling="max")
    model = FrozenCLIP(tiny_clip, texts, config).eval()
    features = torch.randn(4, TINY_EMBED_DIM, generator=torch.Generator().manual_seed(3))
    cosine = torch.einsum("bd,nkd->bnk", F.normalize(features, dim=-1), texts).amax(dim=-1)
    expected = config.logit_scale.initial * cosine + config.class_bias.initial
    torch.testing.assert_close(model(FeatureBatch(features)), expected)
    assert model.text.source_sha256  # the checkpoint records what it was built on


def test_intclip_takes_description_embeddings(tiny_clip: LoadedClip):
    model = IntCLIP(tiny_clip, descriptions(), ModelConfig(class_text_pooling="softmax"))
    images = torch.randn(2, 3, *tiny_clip.image_size)
    assert model(images).shape == (2, CLASSES)


def test_zero_shot_pools_each_description(tiny_clip: LoadedClip):
    texts = descriptions()
    features = torch.randn(4, TINY_EMBED_DIM, generator=torch.Generator().manual_seed(4))
    model = ZeroShotCLIP(tiny_clip, texts, on_features=True, pooling="mean")
    cosine = torch.einsum("bd,nkd->bnk", F.normalize(features, dim=-1), texts).mean(dim=-1)
    torch.testing.assert_close(model(features), tiny_clip.module.logit_scale.exp() * cosine)
    with pytest.raises(ValueError, match="pooling"):
        ZeroShotCLIP(tiny_clip, texts[:, 0], on_features=True, pooling="max")


def test_the_wrong_shape_or_text_for_the_pooling_is_refused(tiny_clip: LoadedClip):
    with pytest.raises(UserError, match=r"\[num_classes, descriptions, 32\].*pooling max"):
        FrozenCLIP(tiny_clip, descriptions()[:, 0], FrozenModelConfig(head="text",
                   class_text_pooling="max"))  # fmt: skip
    with pytest.raises(UserError, match=r"needs \[num_classes, 32\]"):
        FrozenCLIP(tiny_clip, descriptions(), FrozenModelConfig(head="text"))
    with pytest.raises(ValidationError, match="needs text: cached"):
        ModelConfig(class_text_pooling="max", text="prompts")
    with pytest.raises(ValidationError, match="class_text_pooling is a setting of head: text"):
        FrozenModelConfig(head="mlp", class_text_pooling="max")
    with pytest.raises(ValidationError):
        ModelConfig(class_text_pooling="median")
