"""The official IntCLIP recipe, one config away: head, loss, BatchNorm, schedule, switches.

The official head and loss are written here again from the official code's formulas
(models/dualcoop.py, utils/asymmetric_loss.py of github.com/yan9qu/IntCLIP), without calling
the project's head or loss, and compared with what the official config builds.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from rich.console import Console
from sklearn.metrics import f1_score
from torch import nn

from intclip.data.synthetic import make_synthetic_intentonomy
from intclip.data.transforms import eval_transform, train_transform
from intclip.metrics.report import build_report, report_table
from intclip.model import prompts as prompts_module
from intclip.model.head import ClassFeatures
from intclip.model.intclip import IntCLIP, ModelConfig
from intclip.model.prompts import PromptedClassText, read_class_texts
from intclip.model.trained import ParameterGroup
from intclip.training.checkpoint import read_checkpoint_header
from intclip.training.config import PACKAGED_CONFIGS, DataConfig, load_config
from intclip.training.loss import AsymmetricLoss
from intclip.training.optimizer import Optimisation, build_optimizer
from intclip.training.state import seed_everything
from pipeline.clip.loading import LoadedClip, load_clip
from pipeline.common.errors import UserError
from testkit.official import made_up_sentences, write_official_checkout
from testkit.paths import ROOT
from testkit.tiny_clip import TINY_CLIP_CONFIGS, random_class_embeddings, save_calm_text_clip

OFFICIAL = PACKAGED_CONFIGS / "intentonomy_rn101_official.yaml"
RECOMMENDED = PACKAGED_CONFIGS / "intentonomy_rn101.yaml"
TAXONOMY = ROOT / "prompts" / "intentonomy.yaml"
NUM_CLASSES = 5


def images_for(clip: LoadedClip, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, *clip.image_size, generator=generator)


def official_model(clip: LoadedClip) -> IntCLIP:
    """The official head on given class features: cached stand-ins for the learned prompts,
    whose features these tests pass to the head directly."""
    config = load_config(OFFICIAL).model.model_copy(update={"text": "cached"})
    return IntCLIP(clip, random_class_embeddings(NUM_CLASSES, seed=1), config)


def official_logits(
    fused: torch.Tensor, global_token: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    """models/dualcoop.py DualCoop.forward: [B, 2, N] (negative, positive) logits."""
    image = torch.cat([global_token[:, :, None], fused.flatten(2)], dim=2)
    image_norm = image / image.norm(dim=1, keepdim=True)
    text = torch.cat([negative, positive])
    text = text / text.norm(dim=-1, keepdim=True)
    output = 20 * F.conv1d(image_norm, text[:, :, None])
    b, c, _ = output.shape
    w_half = F.softmax(output[:, c // 2 :], dim=-1)
    w = torch.cat([w_half, w_half], dim=1)
    output = 5 * (output * w).sum(-1)
    return output.reshape(b, 2, c // 2)


def official_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """utils/asymmetric_loss.py AsymmetricLoss(2, 1) as utils/trainers.py uses it, times 0.03."""
    x_softmax = torch.softmax(logits, dim=1)
    xs_pos, xs_neg = x_softmax[:, 1, :], x_softmax[:, 0, :]
    xs_neg = (xs_neg + 0.05).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=1e-6)) + (1 - y) * torch.log(xs_neg.clamp(min=1e-6))
    with torch.no_grad():
        pt = xs_pos * y + xs_neg * (1 - y)
        one_sided_w = torch.pow(1 - pt, 1 * y + 2 * (1 - y))
    return 0.03 * -(loss * one_sided_w).sum()


def targets_for(batch: int) -> torch.Tensor:
    return (torch.arange(batch * NUM_CLASSES).reshape(batch, NUM_CLASSES) % 3 == 0).float()


def test_official_head_and_loss_match_the_official_formulas(tiny_clip: LoadedClip) -> None:
    model = official_model(tiny_clip).eval()
    official = load_config(OFFICIAL)
    images = images_for(tiny_clip)
    generator = torch.Generator().manual_seed(3)
    negative = torch.randn(NUM_CLASSES, tiny_clip.embed_dim, generator=generator)
    positive = model.text.class_embeddings
    targets = targets_for(len(images))
    criterion = AsymmetricLoss(**official.loss.model_dump())

    with torch.no_grad():
        features = model.encode(images)
        expected = official_logits(features.fused_map, features.global_token, positive, negative)
        with_negatives = model.head(
            features.fused_map, features.global_token, ClassFeatures(positive, negative)
        )
        alone = model(images)

    torch.testing.assert_close(alone, expected[:, 1])
    torch.testing.assert_close(with_negatives, expected[:, 1] - expected[:, 0])
    torch.testing.assert_close(criterion(with_negatives, targets), official_loss(expected, targets))
    positives_only = torch.stack([torch.zeros_like(alone), alone], dim=1)
    torch.testing.assert_close(criterion(alone, targets), official_loss(positives_only, targets))


def test_fixed_head_scalars_are_not_trained(tiny_clip: LoadedClip) -> None:
    model = official_model(tiny_clip)
    assert [p for p in model.head.parameters()] == []
    assert not any(name.startswith("head.") for name in model.trained_state_dict())
    learned = IntCLIP(
        tiny_clip,
        random_class_embeddings(NUM_CLASSES, seed=1),
        ModelConfig(head="official", logit_scale={"initial": 100.0, "learn": True}),
    )
    assert {name for name, _ in learned.head.named_parameters()} == {
        "log_pooling_temperature",
        "log_logit_scale",
        "class_bias",
    }
    torch.testing.assert_close(learned.head.log_logit_scale.exp(), torch.tensor(100.0))


@pytest.mark.parametrize("head", ["global", "regional", "both"])
def test_every_head_subtracts_negative_class_features(tiny_clip: LoadedClip, head: str) -> None:
    config = ModelConfig(head=head, aggregation=head != "global")
    model = IntCLIP(tiny_clip, random_class_embeddings(NUM_CLASSES, seed=1), config)
    features = model.encode(images_for(tiny_clip))
    positive = model.text.class_embeddings
    same = ClassFeatures(positive, positive)
    with torch.no_grad():
        logits = model.head(features.fused_map, features.global_token, same)
    torch.testing.assert_close(logits, torch.zeros_like(logits))  # no bias yet: l_pos - l_neg


def batchnorm_statistics(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": tensor.clone()
        for name, norm in module.named_modules()
        if isinstance(norm, nn.BatchNorm2d)
        for key, tensor in norm.state_dict().items()
        if key.startswith(("running_", "num_batches"))
    }


def one_training_step(model: IntCLIP, clip: LoadedClip) -> None:
    optimizer = torch.optim.SGD([p for g in model.parameter_groups() for p in g.parameters], lr=0.1)
    model.train()
    images = images_for(clip, seed=1)
    AsymmetricLoss()(model(images), targets_for(len(images))).backward()
    optimizer.step()


@pytest.mark.parametrize("mode", ["frozen", "train"])
def test_semantic_batchnorm_switch(tiny_clip_files: dict, mode: str) -> None:
    clip = load_clip(str(TINY_CLIP_CONFIGS["resnet"]), tiny_clip_files["resnet"])
    model = IntCLIP(
        clip, random_class_embeddings(NUM_CLASSES, seed=1), ModelConfig(semantic_batchnorm=mode)
    )
    semantic_before = batchnorm_statistics(model.encoder.semantic)
    clip_before = batchnorm_statistics(clip.module)
    all_before = batchnorm_statistics(model)
    buffers_before = {name: buffer.clone() for name, buffer in model.named_buffers()}

    one_training_step(model, clip)

    changed = [n for n, b in model.named_buffers() if not torch.equal(b, buffers_before[n])]
    assert bool(changed) == model.trains_buffers == (mode == "train")  # DDP sends them only then

    assert semantic_before and clip_before
    for name, tensor in clip_before.items():
        assert torch.equal(batchnorm_statistics(clip.module)[name], tensor), name
    semantic_after = batchnorm_statistics(model.encoder.semantic)
    if mode == "frozen":
        after = batchnorm_statistics(model)
        assert all(torch.equal(after[name], tensor) for name, tensor in all_before.items())
    else:
        assert all(not torch.equal(semantic_after[n], t) for n, t in semantic_before.items())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.schedule.warmup=constant"], "warmup_lr is set exactly when warmup is 'constant'"),
        (["optim.schedule.warmup_lr=0.001"], "warmup_lr is set exactly when warmup is 'constant'"),
        (["optim.lr_multipliers.backbone=0.1"], "optim.lr_multipliers.backbone"),
        (["optim.lr_multipliers.head=0"], "optim.lr_multipliers.head"),
        (["optim.schedule.unit=epoch", "optim.warmup_epochs=0.5"], "a whole number"),
        (["model.semantic_batchnorm=moving"], "model.semantic_batchnorm"),
        (["model.head=pooled"], "model.head"),
        (["model.logit_scale.initial=0"], "model.logit_scale.initial"),
        (["model.class_bias.learn=maybe"], "model.class_bias.learn"),
        (["loss.reduction=max"], "loss.reduction"),
        (["data.eval_resize=pad"], "data.eval_resize"),
        (['model.prompts.class_text_format="{text}!"'], "model.prompts.class_text_format"),
        (["model.prompts.random_init=sometimes"], "model.prompts.random_init"),
        (["optim.schedule.cosine_epochs=all"], "optim.schedule.cosine_epochs"),
        (["augment.enabled=sometimes"], "augment.enabled"),
    ],
)
def test_bad_switches_are_refused_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(RECOMMENDED, overrides)


def test_each_official_value_is_one_setting_away_from_the_recommended_config() -> None:
    official = load_config(OFFICIAL)
    overrides = [
        "data.eval_resize=squash",
        "data.normalize=false",
        "data.num_workers=16",
        "model.semantic_depth=2",
        "model.head=official",
        "model.pooling_temperature={initial: 20.0, learn: false}",
        "model.logit_scale={initial: 100.0, learn: false}",
        "model.class_bias={initial: 0.0, learn: false}",
        "model.head_precision=autocast",
        "augment.enabled=false",
        "optim.lr=0.0004",
        "model.text=prompts",
        "clip.descriptions=prompts/intentonomy.official.descriptions.json",
        "data.pipeline=torchvision",
        "model.prompts={n_ctx: 16, class_specific: true, init: null, random_init: per_class, "
        "class_text: descriptions, class_text_format: '{text}.'}",
        "optim.lr_multipliers={semantic: 0.1, aggregation: 0.1, head: 1.0, prompts: 1.0}",
        "optim.weight_decay_on=all",
        "optim.epochs=60",
        "optim.schedule={unit: epoch, warmup: constant, warmup_lr: 1.0e-5, cosine_epochs: epochs}",
        "optim.eval_batch_size=100",
        "optim.grad_clip=null",
        "loss.eps=1.0e-6",
        "loss.reduction=sum",
        "loss.weight=0.03",
        "precision=fp16",
    ]
    assert load_config(RECOMMENDED, overrides) == official


def test_fp16_steps_on_the_cpu_keep_the_weights_finite() -> None:
    """The official config's fp16 (GradScaler) on the CPU: the first step the scaler lets
    through after skipping overflowing ones must be an ordinary SGD step (torch's fused CPU SGD
    wrote 1e29 into the weights there)."""
    config = load_config(OFFICIAL).optim
    inputs = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    weights = []
    for scaled in (True, False):
        torch.manual_seed(0)
        layer = nn.Linear(8, 4)
        group = ParameterGroup("semantic", list(layer.parameters()))
        optimizer = build_optimizer(config, [group], torch.device("cpu"), loss_scaled=scaled)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16) if scaled else None
        for _ in range(6):  # the scale halves from 2**16 until the gradients fit fp16
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaled):
                loss = layer(inputs).float().pow(2).sum()
            if scaler is None:
                loss.backward()
                optimizer.step()
                break
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        weights.append(layer.weight.detach())
    assert torch.isfinite(weights[0]).all()
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-2, atol=1e-3)


def wide_image() -> Image.Image:
    """20 x 40 px: the left quarter black, the rest white."""
    pixels = np.full((20, 40, 3), 255, dtype=np.uint8)
    pixels[:, :10] = 0
    return Image.fromarray(pixels)


def data_config(**switches: object) -> DataConfig:
    return DataConfig(image_root=".", train="t", val="v", **switches)


def test_eval_resize_and_normalize_switches() -> None:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    cropped = eval_transform(16, mean, std, data_config())(wide_image())
    squashed = eval_transform(16, mean, std, data_config(eval_resize="squash"))(wide_image())
    raw = eval_transform(16, mean, std, data_config(eval_resize="squash", normalize=False))(
        wide_image()
    )

    assert cropped.shape == squashed.shape == raw.shape == (3, 16, 16)
    assert torch.allclose(squashed, (raw - 0.5) / 0.25)
    # the squash keeps the black quarter; the centre crop keeps only white pixels
    assert raw[:, :, :3].max() < 0.05 and raw[:, :, -1].min() > 0.95
    assert cropped.min() > 1.5  # white is 2.0 after normalisation, black -2.0


def test_augmentation_off_trains_on_the_evaluation_transform() -> None:
    config = load_config(OFFICIAL)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    plain = train_transform(16, mean, std, config.augment, config.data)
    evaluation = eval_transform(16, mean, std, config.data)
    torch.manual_seed(0)
    first = plain(wide_image())
    assert torch.equal(first, plain(wide_image()))
    assert torch.equal(first, evaluation(wide_image()))
    augmented = train_transform(16, mean, std, load_config(RECOMMENDED).augment, config.data)
    outputs = {tuple(augmented(wide_image()).flatten().tolist()) for _ in range(4)}
    assert len(outputs) > 1


# ---- the official config trains, resumes exactly, and follows the official schedule ----

EPOCHS = 3
BATCH = 8
TRAIN_IMAGES = 24
OFFICIAL_CLASSES = 28
N_CTX = 16


@pytest.fixture(scope="module")
def official_checkout(tmp_path_factory) -> tuple[Path, list[str]]:
    """A stand-in checkout of the official code holding 28 made-up class sentences."""
    sentences = made_up_sentences(OFFICIAL_CLASSES)
    root = tmp_path_factory.mktemp("official-checkout") / "IntCLIP"
    return write_official_checkout(root, sentences), sentences


@pytest.fixture(scope="module")
def official_workspace(tmp_path_factory, official_checkout) -> Path:
    """The official config as shipped, after `intclip-prompts import-official`, on generated
    28-class data and a tiny ResNet CLIP whose logits start unsaturated."""
    root = tmp_path_factory.mktemp("official")
    sentences_file = root / "intentonomy.official.descriptions.json"
    checkout, _ = official_checkout
    imported = subprocess.run(
        [str(Path(sys.executable).parent / "intclip-prompts"), "import-official",
         "--from", str(checkout), "--taxonomy", str(TAXONOMY), "--out", str(sentences_file)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    dataset = make_synthetic_intentonomy(
        root / "data", num_classes=OFFICIAL_CLASSES, sizes=(TRAIN_IMAGES, 12, 12), image_size=32
    )
    weights = save_calm_text_clip(
        TINY_CLIP_CONFIGS["resnet"], root / "calm-rn.safetensors", seed=0, attention_gain=0.01
    )
    config = yaml.safe_load(OFFICIAL.read_text())
    config["data"].update(
        image_root=str(dataset.image_root),
        train=str(dataset.train),
        val=str(dataset.val),
        test=str(dataset.test),
        taxonomy=str(TAXONOMY),
        num_workers=0,
    )
    config["clip"].update(
        name=str(TINY_CLIP_CONFIGS["resnet"]),
        pretrained=str(weights),
        image_size=None,
        descriptions=str(sentences_file),
    )
    config["optim"].update(epochs=EPOCHS, batch_size=BATCH)
    config.update(device="cpu", output_dir=str(root / "runs"))
    path = root / "official.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def official_prompt_ids(sentence: str) -> list[int]:
    """models/dualcoop.py MLCPromptLearner, written out: the class name with underscores as
    spaces, after 16 "X" and a space, with a full stop; the whole string tokenised at once by
    CLIP's tokenizer, padded to 77."""
    prompt = " ".join(["X"] * N_CTX) + " " + sentence.replace("_", " ") + "."
    return open_clip.tokenize([prompt])[0].tolist()


def test_the_official_prompts_have_the_official_token_ids_for_all_28_classes(
    tiny_clip: LoadedClip, official_checkout, tmp_path, prompts_cli
) -> None:
    checkout, sentences = official_checkout
    out = tmp_path / "intentonomy.official.descriptions.json"
    code, _, err = prompts_cli(
        "import-official", "--from", checkout, "--taxonomy", TAXONOMY, "--out", out
    )
    assert code == 0, err
    prompts = load_config(OFFICIAL).model.prompts
    texts = read_class_texts(out, prompts.class_text)

    built = PromptedClassText(tiny_clip, texts, prompts).tokens
    tokens = torch.zeros(len(built), 77, dtype=torch.long)
    tokens[:, : built.shape[1]] = built

    assert tokens.tolist() == [official_prompt_ids(sentence) for sentence in sentences]
    assert len(set(map(tuple, tokens.tolist()))) == OFFICIAL_CLASSES


def test_running_the_official_config_before_importing_names_the_command(train_cli, tmp_path):
    config = yaml.safe_load(OFFICIAL.read_text())
    config["data"].update(image_root=str(tmp_path), train="t.json", val="v.json")
    path = tmp_path / "official.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = train_cli("run", "--config", path)
    assert code == 2 and err.count("\n") == 1, err
    assert "prompts/intentonomy.official.descriptions.json: not found" in err
    assert "intclip-prompts import-official --from <checkout of github.com/yan9qu/IntCLIP>" in err


def recorded_learning_rates(monkeypatch) -> list[dict[str, float]]:
    """Every step's learning rate per parameter group, taken or skipped by fp16's scaler."""
    steps: list[dict[str, float]] = []
    original = Optimisation.step

    def step(self):
        steps.append({group["name"]: group["lr"] for group in self.optimizer.param_groups})
        return original(self)

    monkeypatch.setattr(Optimisation, "step", step)
    return steps


def official_schedule(epoch: int, base_lr: float, epochs: int) -> float:
    """Dassl's ConstantWarmupScheduler(1 epoch, 1e-5) before CosineAnnealingLR(T_max=MAX_EPOCH),
    its epoch count recounted after warm-up: it follows the run's epochs, never reaching 0."""
    if epoch == 0:
        return 1e-5
    return base_lr * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


@pytest.mark.slow
def test_official_config_trains_resumes_exactly_and_follows_the_official_schedule(
    official_workspace, train_cli, monkeypatch
):
    lrs = recorded_learning_rates(monkeypatch)
    config = ("--config", official_workspace)
    code, out, err = train_cli("run", *config, "--set", "run_name=straight")
    assert code == 0, err
    assert "warning: data.normalize is false" in err
    straight = Path(out.strip().splitlines()[-1])
    steps_per_epoch = math.ceil(TRAIN_IMAGES / BATCH)
    assert len(lrs) == EPOCHS * steps_per_epoch
    bases = {"semantic": 4e-5, "aggregation": 4e-5, "prompts": 4e-4}
    assert set(lrs[0]) == set(bases)
    for step, rates in enumerate(lrs):
        epoch = step // steps_per_epoch
        for group, rate in rates.items():
            expected = official_schedule(epoch, bases[group], EPOCHS)
            assert rate == pytest.approx(expected, rel=1e-9)

    code, out, err = train_cli("run", *config, "--set", "run_name=halves", "--stop-after", 2)
    assert code == 0, err
    halves = Path(out.strip().splitlines()[-1])
    code, _, err = train_cli("run", "--resume", halves)
    assert code == 0, err

    resumed_lrs = lrs[EPOCHS * steps_per_epoch :]
    assert resumed_lrs == lrs[: EPOCHS * steps_per_epoch]
    first = torch.load(straight / "last.pt", weights_only=True)["model"]
    second = torch.load(halves / "last.pt", weights_only=True)["model"]
    assert first.keys() == second.keys() and "prompts.positive" in first
    for name in first:
        assert torch.equal(first[name], second[name]), name
    header = read_checkpoint_header(straight / "best.safetensors")
    assert header.config.head == "official" and header.config.semantic_batchnorm == "frozen"
    assert header.config.prompts.class_text_format == "{text}."
    assert header.training["optim"]["schedule"]["unit"] == "epoch"
    assert header.training["data"]["normalize"] is False

    code, out, err = train_cli("eval", "--run", straight, "--threshold", "0.5", "--json")
    assert code == 0, err
    report = json.loads(out)
    scores = np.load(straight / "test_scores.npy")
    assert report["fixed_threshold"] == 0.5
    test = json.loads((official_workspace.parent / "data" / "synthetic_test.json").read_text())
    truth = np.zeros_like(scores, dtype=np.int64)
    for row, annotation in enumerate(test["annotations"]):
        truth[row, annotation["category_ids"]] = 1
    expected = 100 * f1_score(truth, scores > 0.5, average="macro", zero_division=0)
    assert report["at_fixed_threshold"]["macro_f1"] == pytest.approx(expected)


# ---- one trained step of the official recipe, against the official formulas ----


def official_text_features(
    clip: LoadedClip, contexts: torch.Tensor, token_ids: torch.Tensor
) -> torch.Tensor:
    """models/dualcoop.py: the prompt is the start token's embedding, the learned contexts and
    the embedded rest of the tokenised prompt; TextEncoder runs CLIP's transformer over all 77
    positions and projects the feature at the end token (the largest id)."""
    module = clip.module
    embedded = module.token_embedding(token_ids)
    x = torch.cat([embedded[:, :1], contexts, embedded[:, 1 + contexts.shape[1] :]], dim=1)
    x = x + module.positional_embedding
    x = module.ln_final(module.transformer(x, attn_mask=module.attn_mask))
    return x[torch.arange(len(x)), token_ids.argmax(dim=-1)] @ module.text_projection


def official_image_features(
    clip: LoadedClip, semantic: nn.Module, aggregation: dict[str, torch.Tensor], images
) -> tuple[torch.Tensor, torch.Tensor]:
    """clip/model.py ModifiedResNet_conv_proj.forward: a shared stem and layer1-2; CLIP's
    layer3-4 (sight) and their trained copy (semantic); the attention pool's value and output
    projections at every position (AttentionConv, position embeddings added); then PAA,
    `gamma * attended + (sight + semantic) / 2`, queries and keys from the semantic map.
    The global token is intclip's declared departure (docs/parity.md): the attention pool's
    output for the semantic branch, CLIP's own image embedding."""
    visual = clip.module.visual
    with torch.no_grad():
        x = images
        for conv, norm in ((visual.conv1, visual.bn1), (visual.conv2, visual.bn2),
                           (visual.conv3, visual.bn3)):  # fmt: skip
            x = torch.relu(norm(conv(x)))
        shared = visual.layer2(visual.layer1(visual.avgpool(x)))
        sight_features = visual.layer4(visual.layer3(shared))
    semantic_features = semantic(shared)
    pool = visual.attnpool

    def dense(features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = features.shape
        tokens = features.reshape(batch, channels, -1).permute(2, 0, 1)
        tokens = (
            torch.cat([tokens.mean(dim=0, keepdim=True), tokens])
            + pool.positional_embedding[:, None]
        )
        projected = F.linear(F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias),
                             pool.c_proj.weight, pool.c_proj.bias)  # fmt: skip
        return projected[1:].permute(1, 2, 0).reshape(batch, -1, height, width)

    sight, intent = dense(sight_features), dense(semantic_features)
    batch, channels, height, width = intent.shape
    query = F.conv2d(intent, aggregation["query.weight"], aggregation["query.bias"])
    key = F.conv2d(intent, aggregation["key.weight"], aggregation["key.bias"])
    value = F.conv2d(sight, aggregation["value.weight"], aggregation["value.bias"])
    energy = torch.bmm(query.view(batch, -1, height * width).permute(0, 2, 1),
                       key.view(batch, -1, height * width))  # fmt: skip
    attention = torch.softmax(energy, dim=-1)
    attended = torch.bmm(value.view(batch, -1, height * width), attention.permute(0, 2, 1))
    fused = (
        aggregation["alpha"] * attended.view(batch, channels, height, width) + (sight + intent) / 2
    )
    return fused, pool(semantic_features)


def official_step(
    clip: LoadedClip, start: IntCLIP, images: torch.Tensor, targets: torch.Tensor, lr: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One official training step from `start`'s weights, by the formulas: logits [B, 2, N],
    the loss gradient and the SGD direction (gradient + 5e-4 x weight, momentum's first buffer)
    of every trained tensor, keyed like `trained_state_dict`."""
    visual = clip.module.visual
    semantic = copy.deepcopy(nn.Sequential(visual.layer3, visual.layer4)).eval()
    semantic.requires_grad_(True)
    leaves = {f"semantic.{name}": p for name, p in semantic.named_parameters()}
    aggregation = {
        name: p.detach().clone().requires_grad_()
        for name, p in start.aggregation.named_parameters()
    }
    leaves.update({f"aggregation.{name}": p for name, p in aggregation.items()})
    contexts = {
        name: p.detach().clone().requires_grad_()
        for name, p in start.text.contexts.named_parameters()
    }
    leaves.update({f"prompts.{name}": p for name, p in contexts.items()})

    fused, global_token = official_image_features(clip, semantic, aggregation, images)
    token_ids = torch.zeros(len(start.text.tokens), 77, dtype=torch.long)
    token_ids[:, : start.text.tokens.shape[1]] = start.text.tokens
    positive = official_text_features(clip, contexts["positive"], token_ids)
    negative = official_text_features(clip, contexts["negative"], token_ids)
    logits = official_logits(fused, global_token, positive, negative)
    loss = official_loss(logits, targets)
    gradients = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    directions = {name: gradients[name] + 5e-4 * leaves[name].detach() for name in leaves}
    return logits.detach(), gradients, directions


def squashed_images(
    annotations: Path, image_root: Path, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """dataloaders/intenton.py's test transform, Resize((size, size)) and ToTensor, with
    intclip's declared bicubic filter; labels binarised (softprob > 0)."""
    data = json.loads(annotations.read_text())
    files = {image["id"]: image["filename"] for image in data["images"]}
    images, labels = [], []
    for annotation in data["annotations"]:
        with Image.open(image_root / files[annotation["image_id"]]) as image:
            squashed = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(squashed).copy()).permute(2, 0, 1) / 255)
        labels.append([float(p > 0) for p in annotation["category_ids_softprob"]])
    return torch.stack(images), torch.tensor(labels)


def role_names(model: IntCLIP) -> dict[str, list[str]]:
    """Each optimiser group's tensors, by name, in the order the optimiser holds them."""
    names = {
        role: [f"{role}.{name}" for name, _ in module.named_parameters()]
        for role, module in model.trained_modules().items()
    }
    return {role: group for role, group in names.items() if group}  # the head's are fixed


@pytest.mark.slow
def test_a_trained_step_of_the_official_recipe_is_the_official_formulas(
    official_workspace, train_cli, monkeypatch
):
    """`intclip-train run` on the official config (one step: 24 images, batch 24, one epoch)
    against the official step written out above, from the same starting weights. The logits
    start unsaturated and every trained group gets a loss gradient, so the comparison has
    teeth. fp32 here: the official fp16 autocast is its own row of docs/parity.md."""
    built: list[torch.Tensor] = []
    prompt_tokens = prompts_module._prompt_tokens

    def recorded(*args, **kwargs):
        tokens, owner = prompt_tokens(*args, **kwargs)
        built.append(tokens)
        return tokens, owner

    monkeypatch.setattr(prompts_module, "_prompt_tokens", recorded)
    one_step = ["optim.epochs=1", f"optim.batch_size={TRAIN_IMAGES}", "precision=fp32"]
    overrides = [arg for setting in one_step for arg in ("--set", setting)]
    code, out, err = train_cli("run", "--config", official_workspace, *overrides)
    assert code == 0, err
    run = Path(out.strip().splitlines()[-1])
    config = load_config(official_workspace, one_step)

    (tokens,) = built  # import-official, then run: the official token ids, all 28 classes
    checkout_sentences = made_up_sentences(OFFICIAL_CLASSES)
    padded = torch.zeros(OFFICIAL_CLASSES, 77, dtype=torch.long)
    padded[:, : tokens.shape[1]] = tokens
    assert padded.tolist() == [official_prompt_ids(s) for s in checkout_sentences]

    clip = load_clip(config.clip.name, config.clip.pretrained)
    seed_everything(config.seed)
    start = IntCLIP(clip, read_class_texts(config.clip.descriptions, "descriptions"), config.model)
    before = {name: tensor.clone() for name, tensor in start.trained_state_dict().items()}
    images, targets = squashed_images(config.data.train, config.data.image_root, 64)
    logits, gradients, directions = official_step(clip, start, images, targets, lr=1e-5)

    difference = logits[:, 1] - logits[:, 0]
    assert difference.abs().max() < 10 and difference.abs().mean() < 4, "saturated logits"
    for role, names in role_names(start).items():
        assert sum(gradients[name].norm() for name in names) > 0, role

    state = torch.load(run / "last.pt", weights_only=True)
    groups = {group["name"]: group["params"] for group in state["optimizer"]["param_groups"]}
    assert groups.keys() == {"semantic", "aggregation", "prompts"}
    for role, names in role_names(start).items():
        for index, name in zip(groups[role], names, strict=True):
            direction = directions[name]
            buffer = state["optimizer"]["state"][index]["momentum_buffer"]
            torch.testing.assert_close(
                buffer, direction, rtol=1e-3, atol=1e-4 * direction.abs().max().item(), msg=name
            )
            expected = before[name] - 1e-5 * direction  # constant warm-up lr, every group
            torch.testing.assert_close(state["model"][name], expected, rtol=1e-6, atol=1e-8)


def test_report_table_shows_the_official_and_any_fixed_threshold_row() -> None:
    generator = np.random.default_rng(0)
    labels = (generator.random((20, 3)) > 0.6).astype(np.int64)
    labels[0] = 1
    scores = generator.random((20, 3)).astype(np.float32)
    ids = ["a", "b", "c"]
    console = Console(width=200, record=True)

    report = build_report("test", (labels, scores), (labels, scores), ids, None)
    console.print(report_table(report))
    expected = 100 * f1_score(labels, scores > 0.5, average="micro", zero_division=0)
    assert "fine @ 0.5" in console.export_text() and "fine @ 0.3" not in console.export_text()
    assert report.at_half.micro_f1 == pytest.approx(expected)
    report = build_report("test", (labels, scores), (labels, scores), ids, None, 0.3)
    console.print(report_table(report))
    expected = 100 * f1_score(labels, scores > 0.3, average="micro", zero_division=0)
    assert "fine @ 0.3" in console.export_text()
    assert report.at_fixed_threshold.micro_f1 == pytest.approx(expected)


def test_eval_threshold_out_of_range_is_refused(train_cli, tmp_path):
    code, _, err = train_cli("eval", "--run", tmp_path, "--threshold", "1.5")
    assert code == 2 and "--threshold" in err
