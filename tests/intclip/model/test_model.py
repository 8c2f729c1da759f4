"""The IntCLIP model on tiny random ResNet and ViT CLIPs: shapes, freezing, fusion, ablations."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from intclip.model.head import ClassFeatures
from intclip.model.intclip import IntCLIP, ModelConfig
from intclip.training.loss import AsymmetricLoss
from pipeline.clip.loading import LoadedClip, load_clip
from pipeline.common.errors import UserError
from testkit.tiny_clip import TINY_CLIP_CONFIGS, TINY_EMBED_DIM, random_class_embeddings

NUM_CLASSES = 7
TRAINED_PREFIXES = ("encoder.semantic.", "aggregation.", "head.")


def images_for(
    clip: LoadedClip, scale: tuple[float, float] = (1.0, 1.0), seed: int = 0
) -> torch.Tensor:
    """Three random images at `scale` times the tower's native (height, width)."""
    height, width = (
        round(side * factor) for side, factor in zip(clip.image_size, scale, strict=True)
    )
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 3, height, width, generator=generator)


def feature_grid(clip: LoadedClip, images: torch.Tensor) -> tuple[int, int]:
    """The dense grid each tower type produces: ResNets downsample 32x, ViTs by their patch."""
    visual = clip.module.visual
    stride = visual.patch_size[0] if hasattr(visual, "patch_size") else 32
    return images.shape[-2] // stride, images.shape[-1] // stride


def build(clip: LoadedClip, **config: object) -> IntCLIP:
    return IntCLIP(clip, random_class_embeddings(NUM_CLASSES, seed=1), ModelConfig(**config))


def train_steps(model: IntCLIP, clip: LoadedClip, steps: int) -> None:
    optimizer = torch.optim.SGD(
        [{"params": group.parameters} for group in model.parameter_groups()],
        lr=0.5,
        momentum=0.9,
        weight_decay=1e-2,
    )
    targets = (torch.arange(3 * NUM_CLASSES).reshape(3, NUM_CLASSES) % 3 == 0).float()
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        AsymmetricLoss()(model(images_for(clip, seed=step)), targets).backward()
        optimizer.step()


def trained_ids(model: IntCLIP) -> set[int]:
    return {id(parameter) for group in model.parameter_groups() for parameter in group.parameters}


@pytest.mark.parametrize("scale", [(1.0, 1.0), (1.5, 1.5), (1.0, 2.0)])
def test_output_shapes_at_native_and_other_input_sizes(
    tiny_clip: LoadedClip, scale: tuple[float, float]
) -> None:
    model = build(tiny_clip).eval()
    images = images_for(tiny_clip, scale)
    grid = feature_grid(tiny_clip, images)

    features = model.encode(images)
    logits = model(images)

    assert logits.shape == (3, NUM_CLASSES)
    for dense in (features.sight_map, features.semantic_map, features.fused_map):
        assert dense.shape == (3, TINY_EMBED_DIM, *grid)
    assert features.global_token.shape == (3, TINY_EMBED_DIM)
    assert torch.isfinite(logits).all()


def test_global_token_is_clips_own_image_embedding(tiny_clip: LoadedClip) -> None:
    model = build(tiny_clip).eval()
    images = images_for(tiny_clip)
    with torch.no_grad():
        expected = tiny_clip.module.encode_image(images)
        encoded = model.encoder(images)
    torch.testing.assert_close(encoded.sight_global, expected)
    torch.testing.assert_close(model.encode(images).global_token, expected)


def test_vit_dense_map_is_every_patch_token_projected(tiny_clip_files: dict) -> None:
    clip = load_clip(str(TINY_CLIP_CONFIGS["vit"]), tiny_clip_files["vit"])
    model = build(clip).eval()
    images = images_for(clip)
    visual = clip.module.visual
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual(images)
    expected = (tokens @ visual.proj).transpose(1, 2).reshape(3, TINY_EMBED_DIM, 4, 4)
    torch.testing.assert_close(model.encode(images).sight_map, expected)


def test_resnet_dense_map_is_the_attention_pool_read_at_every_position(
    tiny_clip_files: dict,
) -> None:
    clip = load_clip(str(TINY_CLIP_CONFIGS["resnet"]), tiny_clip_files["resnet"])
    model = build(clip).eval()
    images = images_for(clip)
    visual = clip.module.visual
    with torch.no_grad():
        layer4 = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
        pool = visual.attnpool
        tokens = layer4.flatten(2).permute(0, 2, 1) + pool.positional_embedding[1:]
        expected = pool.c_proj(pool.v_proj(tokens)).permute(0, 2, 1).reshape(3, -1, 2, 2)
    torch.testing.assert_close(model.encode(images).sight_map, expected)


def test_only_semantic_branch_aggregation_and_head_get_gradients(tiny_clip: LoadedClip) -> None:
    model = build(tiny_clip).train()
    trained = trained_ids(model)

    model(images_for(tiny_clip)).sum().backward()

    for name, parameter in model.named_parameters():
        is_trained = id(parameter) in trained
        assert parameter.requires_grad == is_trained, name
        assert (parameter.grad is not None) == is_trained, name
    semantic = next(group for group in model.parameter_groups() if group.role == "semantic")
    assert any(parameter.grad.abs().sum() > 0 for parameter in semantic.parameters)


def test_frozen_parameters_and_buffers_stay_bit_identical_while_training(
    tiny_clip: LoadedClip,
) -> None:
    model = build(tiny_clip)
    frozen_before = {
        name: tensor.clone()
        for name, tensor in model.state_dict().items()
        if not name.startswith(TRAINED_PREFIXES)
    }
    frozen_before["text.class_embeddings"] = model.text.class_embeddings.clone()
    clip_before = {name: tensor.clone() for name, tensor in tiny_clip.module.state_dict().items()}
    trained_before = {name: tensor.clone() for name, tensor in model.trained_state_dict().items()}

    train_steps(model, tiny_clip, steps=3)

    assert any(name.startswith("encoder.trunk.") for name in frozen_before)
    assert any(name.startswith("encoder.sight.") for name in frozen_before)
    after = {**model.state_dict(), "text.class_embeddings": model.text.class_embeddings}
    for name, tensor in frozen_before.items():
        assert torch.equal(after[name], tensor), name
    for name, tensor in tiny_clip.module.state_dict().items():
        assert torch.equal(tensor, clip_before[name]), name
    changed = [
        name
        for name, tensor in model.trained_state_dict().items()
        if not torch.equal(tensor, trained_before[name])
    ]
    assert any(name.startswith("semantic.") for name in changed)
    assert "aggregation.alpha" in changed
    assert {"head.log_logit_scale", "head.log_pooling_temperature"} <= set(changed)


def test_frozen_batchnorm_statistics_do_not_move_in_train_mode(tiny_clip_files: dict) -> None:
    clip = load_clip(str(TINY_CLIP_CONFIGS["resnet"]), tiny_clip_files["resnet"])
    model = build(clip, semantic_batchnorm="train").train()
    frozen_norms = [
        module
        for frozen in model.encoder.frozen_modules()
        for module in frozen.modules()
        if isinstance(module, nn.BatchNorm2d)
    ]
    semantic_norms = [m for m in model.encoder.semantic.modules() if isinstance(m, nn.BatchNorm2d)]
    frozen_stats = [(m.running_mean.clone(), m.running_var.clone()) for m in frozen_norms]
    semantic_means = [m.running_mean.clone() for m in semantic_norms]

    model(images_for(clip, scale=(1.5, 1.5)))

    assert frozen_norms and all(not module.training for module in frozen_norms)
    for module, (mean, var) in zip(frozen_norms, frozen_stats, strict=True):
        assert torch.equal(module.running_mean, mean)
        assert torch.equal(module.running_var, var)
    assert all(module.training for module in semantic_norms)
    moved = zip(semantic_norms, semantic_means, strict=True)
    assert any(not torch.equal(module.running_mean, mean) for module, mean in moved)


def test_untrained_model_with_zero_alpha_fuses_to_the_sight_map(tiny_clip: LoadedClip) -> None:
    model = build(tiny_clip).eval()
    assert model.aggregation.alpha.item() == 0.0

    features = model.encode(images_for(tiny_clip, scale=(1.5, 1.5)))

    torch.testing.assert_close(features.semantic_map, features.sight_map)
    torch.testing.assert_close(features.fused_map, features.sight_map)


def test_aggregation_switch(tiny_clip: LoadedClip) -> None:
    images = images_for(tiny_clip)
    with_aggregation = build(tiny_clip).eval()
    with torch.no_grad():
        with_aggregation.aggregation.alpha.fill_(1.0)
    without = build(tiny_clip, aggregation=False).eval()

    fused = with_aggregation.encode(images)
    plain = without.encode(images)

    average = (fused.sight_map + fused.semantic_map) / 2
    assert not torch.allclose(fused.fused_map, average)
    assert without.aggregation is None
    assert [group.role for group in without.parameter_groups()] == ["semantic", "head"]
    assert torch.equal(plain.fused_map, plain.semantic_map)


def test_head_switch_selects_what_is_scored(tiny_clip: LoadedClip) -> None:
    modes = ("global", "regional", "both")
    models = {mode: build(tiny_clip, head=mode, aggregation=False) for mode in modes}
    classes = models["global"].text.class_embeddings
    heads = {
        mode: partial(model.head, classes=ClassFeatures(classes)) for mode, model in models.items()
    }
    generator = torch.Generator().manual_seed(5)
    dense = torch.randn(2, TINY_EMBED_DIM, 3, 3, generator=generator)
    global_token = torch.randn(2, TINY_EMBED_DIM, generator=generator)
    other_dense = torch.randn(2, TINY_EMBED_DIM, 3, 3, generator=generator)
    other_global = torch.randn(2, TINY_EMBED_DIM, generator=generator)
    logits = {mode: head(dense, global_token) for mode, head in heads.items()}

    assert torch.equal(heads["global"](other_dense, global_token), logits["global"])
    assert not torch.allclose(heads["global"](dense, other_global), logits["global"])
    assert torch.equal(heads["regional"](dense, other_global), logits["regional"])
    assert not torch.allclose(heads["regional"](other_dense, global_token), logits["regional"])
    torch.testing.assert_close(logits["both"], (logits["global"] + logits["regional"]) / 2)

    scale = ModelConfig().logit_scale.initial
    expected_global = scale * F.normalize(global_token, dim=-1) @ classes.T
    torch.testing.assert_close(logits["global"], expected_global)
    similarity = torch.einsum("nd,bdp->bnp", classes, F.normalize(dense.flatten(2), dim=1))
    pooled = (torch.softmax(scale * similarity, dim=-1) * similarity).sum(-1)
    torch.testing.assert_close(logits["regional"], scale * pooled)
    assert not torch.allclose(pooled, similarity.mean(-1))


def test_class_bias_shifts_each_class_logit(tiny_clip: LoadedClip) -> None:
    model = build(tiny_clip, class_bias={"initial": -3.0}).eval()
    reference = build(tiny_clip).eval()
    images = images_for(tiny_clip)
    torch.testing.assert_close(model(images), reference(images) - 3.0)


def test_parameter_groups_partition_the_trained_parameters(tiny_clip: LoadedClip) -> None:
    model = build(tiny_clip)
    groups = model.parameter_groups()

    assert [group.role for group in groups] == ["semantic", "aggregation", "head"]
    ids = [id(parameter) for group in groups for parameter in group.parameters]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(set(ids)) == len(ids)
    counts = {group.role: group.count for group in groups}
    assert counts["semantic"] == sum(p.numel() for p in model.encoder.sight.parameters())
    channels, reduced = TINY_EMBED_DIM, TINY_EMBED_DIM // 8
    assert counts["aggregation"] == 2 * (channels * reduced + reduced) + channels**2 + channels + 1
    assert counts["head"] == NUM_CLASSES + 2


def test_trained_state_round_trips_and_refuses_another_layout(tiny_clip: LoadedClip) -> None:
    source = build(tiny_clip)
    train_steps(source, tiny_clip, steps=1)
    target = build(tiny_clip)
    images = images_for(tiny_clip)

    target.load_trained_state_dict(source.trained_state_dict(), "resume")

    assert torch.equal(target.eval()(images), source.eval()(images))
    with pytest.raises(UserError, match=r"resume: unexpected tensor 'aggregation\.alpha'"):
        build(tiny_clip, aggregation=False).load_trained_state_dict(
            source.trained_state_dict(), "resume"
        )
    with pytest.raises(UserError, match="resume: the semantic tensors do not fit this model"):
        build(tiny_clip, semantic_depth=1).load_trained_state_dict(
            source.trained_state_dict(), "resume"
        )


def test_semantic_depth_sets_how_much_is_copied(tiny_clip: LoadedClip) -> None:
    shallow = build(tiny_clip, semantic_depth=1)
    deep = build(tiny_clip, semantic_depth=3)
    shallow_count = shallow.parameter_groups()[0].count
    assert 0 < shallow_count < deep.parameter_groups()[0].count
    torch.testing.assert_close(
        shallow.eval().encode(images_for(tiny_clip)).sight_map,
        deep.eval().encode(images_for(tiny_clip)).sight_map,
    )


def test_semantic_depth_beyond_the_tower_is_refused(tiny_clip: LoadedClip) -> None:
    with pytest.raises(UserError, match="semantic_depth 9 is out of range: this tower has"):
        build(tiny_clip, semantic_depth=9)


def test_unsupported_tower_is_refused(tiny_clip: LoadedClip) -> None:
    class OtherTower(nn.Module):
        output_dim = TINY_EMBED_DIM

    class OtherClip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = OtherTower()

    clip = dataclasses.replace(tiny_clip, module=OtherClip())
    with pytest.raises(UserError, match="image tower OtherTower is not supported"):
        build(clip)


@pytest.mark.parametrize(
    ("vision_change", "message"),
    [
        ({"pool_type": "avg"}, "pooled with 'avg' are not supported"),
        ({"attentional_pool": True}, "attentional pooler"),
    ],
)
def test_vit_without_a_plain_class_token_is_refused(
    tmp_path: Path, vision_change: dict, message: str
) -> None:
    config = json.loads(TINY_CLIP_CONFIGS["vit"].read_text())
    config["vision_cfg"].update(vision_change)
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        build(load_clip(str(path), None))


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        (torch.randn(NUM_CLASSES, TINY_EMBED_DIM + 1), r"shape \(7, 33\); this CLIP needs"),
        (torch.randn(TINY_EMBED_DIM), r"shape \(32,\)"),
        (torch.randn(2, NUM_CLASSES, TINY_EMBED_DIM), r"shape \(2, 7, 32\)"),
        (torch.randn(0, TINY_EMBED_DIM), r"shape \(0, 32\)"),
        (torch.full((NUM_CLASSES, TINY_EMBED_DIM), float("nan")), "non-finite"),
        (torch.zeros(NUM_CLASSES, TINY_EMBED_DIM), "all-zero rows"),
        (torch.ones(NUM_CLASSES, TINY_EMBED_DIM, dtype=torch.long), "must be a float tensor"),
    ],
)
def test_bad_class_embeddings_are_refused(
    tiny_clip: LoadedClip, embeddings: torch.Tensor, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        IntCLIP(tiny_clip, embeddings, ModelConfig())


def test_model_config_rejects_contradictions_and_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="with head 'global' set aggregation off"):
        ModelConfig(head="global")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ModelConfig(aggregation_heads=4)
    with pytest.raises(ValidationError):
        ModelConfig(head="pooled")
    assert ModelConfig(head="global", aggregation=False).head == "global"


def test_aggregation_reduction_wider_than_the_joint_space_is_refused(
    tiny_clip: LoadedClip,
) -> None:
    with pytest.raises(UserError, match="aggregation_reduction 64 leaves no channels of the 32"):
        build(tiny_clip, aggregation_reduction=64)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda(tiny_clip_files: dict) -> None:
    clip = load_clip(str(TINY_CLIP_CONFIGS["resnet"]), tiny_clip_files["resnet"], device="cuda")
    model = build(clip)
    assert model.text.class_embeddings.is_cuda
    logits = model(images_for(clip).cuda())
    logits.sum().backward()
    assert logits.is_cuda and model.aggregation.query.weight.grad is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["RN101", "ViT-B-32"])
def test_full_size_open_clip_architectures(name: str) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        clip = load_clip(name, None)
    model = IntCLIP(clip, torch.randn(28, clip.embed_dim), ModelConfig()).eval()
    images = torch.randn(1, 3, *clip.image_size)

    with torch.no_grad():
        features = model.encode(images)
        torch.testing.assert_close(features.global_token, clip.module.encode_image(images))
        assert features.fused_map.shape == (1, clip.embed_dim, 7, 7)
        assert model(torch.randn(1, 3, 320, 256)).shape == (1, 28)


def test_head_scores_in_float32_under_bfloat16_autocast(tiny_clip: LoadedClip) -> None:
    model = build(tiny_clip, head="both", aggregation=False)
    classes = ClassFeatures(model.text.class_embeddings)
    generator = torch.Generator().manual_seed(6)
    dense = torch.randn(2, TINY_EMBED_DIM, 3, 3, generator=generator)
    global_token = torch.randn(2, TINY_EMBED_DIM, generator=generator)
    plain = model.head(dense, global_token, classes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model.head(dense.bfloat16(), global_token.bfloat16(), classes)
    assert autocast.dtype == torch.float32
    rounded = model.head(dense.bfloat16().float(), global_token.bfloat16().float(), classes)
    torch.testing.assert_close(autocast, rounded, rtol=0, atol=1e-5)
    assert (autocast - plain).abs().max() < 1.0

    official = build(tiny_clip, head="both", aggregation=False, head_precision="autocast")
    official.load_state_dict(model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = official.head(dense.bfloat16(), global_token.bfloat16(), classes)
    assert (low.float() - rounded).abs().max() > 1e-3
