"""`model.text: prompts`: learned DualCoOp contexts on tiny random ResNet and ViT CLIPs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from intclip.metrics.multilabel import mean_average_precision
from intclip.model.class_text import plain_class_embeddings
from intclip.model.intclip import IntCLIP, ModelConfig
from intclip.model.prompts import PromptConfig, PromptedClassText, read_class_texts
from intclip.training.checkpoint import load_model, read_checkpoint_header, save_model
from intclip.training.loss import AsymmetricLoss
from pipeline.clip.loading import LoadedClip, load_clip
from pipeline.common.errors import UserError
from pipeline.common.files import sha256_file
from pipeline.descriptions.format import write_descriptions
from pipeline.embeddings.cache import compute_embeddings
from testkit.descriptions import descriptions_document
from testkit.tiny_clip import TINY_CLIP_CONFIGS

TEXTS = {
    "cats": ["A cat sleeps on a sofa.", "A kitten plays with wool.", "Two cats share a bowl."],
    "dogs": ["A dog fetches a ball.", "A puppy naps in the sun.", "A dog swims in a lake."],
    "beach": ["Waves break on the sand.", "Umbrellas line a beach.", "A shell lies in the surf."],
}
PROMPTS = {"text": "prompts", "prompts": {"n_ctx": 4}}


@pytest.fixture
def descriptions(tmp_path: Path) -> Path:
    path = tmp_path / "toy.descriptions.json"
    write_descriptions(path, descriptions_document(TEXTS))
    return path


def images_for(clip: LoadedClip, count: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, *clip.image_size, generator=generator)


def prompt_model(clip: LoadedClip, descriptions: Path, **config: object) -> IntCLIP:
    settings = ModelConfig(**{**PROMPTS, **config})
    return IntCLIP(clip, read_class_texts(descriptions, settings.prompts.class_text), settings)


def sgd_step(model: IntCLIP, images: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer = torch.optim.SGD([p for g in model.parameter_groups() for p in g.parameters], lr=1.0)
    model.train()
    optimizer.zero_grad()
    AsymmetricLoss()(model(images), targets).backward()
    optimizer.step()


def test_zero_length_contexts_give_the_cached_embeddings(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    cached, _ = compute_embeddings(descriptions_document(TEXTS), tiny_clip, "mean")
    texts = read_class_texts(descriptions, "descriptions")

    model = IntCLIP(tiny_clip, texts, ModelConfig(text="prompts", prompts=PromptConfig(n_ctx=0)))
    with torch.no_grad():
        positive, negative = model.text()

    torch.testing.assert_close(positive, cached, rtol=0, atol=1e-6)
    torch.testing.assert_close(negative, cached, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain_class_embeddings(tiny_clip, texts), cached, rtol=0, atol=1e-6)


def test_class_names_as_text_give_the_names_embeddings(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    names = {name: [f"Animals > {name}"] for name in TEXTS}
    document = descriptions_document(names, {name: names[name] for name in TEXTS})
    expected, _ = compute_embeddings(document, tiny_clip, "mean")

    texts = read_class_texts(descriptions, "name")
    assert [entry.texts for entry in texts.classes] == [("Cats",), ("Dogs",), ("Beach",)]
    path = descriptions.with_name("names.descriptions.json")
    write_descriptions(path, document)
    named = plain_class_embeddings(tiny_clip, read_class_texts(path, "name"))
    torch.testing.assert_close(named, expected, rtol=0, atol=1e-6)


def test_one_sgd_step_changes_the_contexts_and_nothing_of_clip(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    model = prompt_model(tiny_clip, descriptions)
    clip_before = {name: t.clone() for name, t in tiny_clip.module.state_dict().items()}
    contexts_before = {name: t.clone() for name, t in model.text.contexts.state_dict().items()}
    frozen_text = {name: t.clone() for name, t in model.text.state_dict().items()}

    sgd_step(model, images_for(tiny_clip), torch.eye(3))

    assert not model.text.tower.training and model.training
    assert model.text.contexts.positive.shape == (3, 4, 32)  # class-specific, n_ctx 4, width 32
    for name, tensor in model.text.contexts.state_dict().items():
        assert not torch.equal(tensor, contexts_before[name]), name
    for name, tensor in tiny_clip.module.state_dict().items():
        assert torch.equal(tensor, clip_before[name]), name
    for name, tensor in model.text.state_dict().items():
        if not name.startswith("contexts."):
            assert torch.equal(tensor, frozen_text[name]), name
    assert {g.role for g in model.parameter_groups()} == {
        "semantic",
        "aggregation",
        "head",
        "prompts",
    }


def test_eval_features_are_computed_once_per_state_of_the_contexts(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    model = prompt_model(tiny_clip, descriptions)
    calls = []
    model.text.tower.register_forward_hook(lambda *_: calls.append(1))
    model.eval()
    with torch.no_grad():
        first, second = model(images_for(tiny_clip)), model(images_for(tiny_clip, seed=1))
    assert len(calls) == 1 and first.shape == second.shape

    sgd_step(model, images_for(tiny_clip), torch.eye(3))
    calls.clear()
    model.eval()
    with torch.no_grad():
        cached = model.text()
        again = model.text()
        model.text._without_grad = None
        fresh = model.text()
    assert len(calls) == 2  # once after the step, once after the cache was dropped
    assert again is cached
    for got, want in zip(cached, fresh, strict=True):
        assert torch.equal(got, want)


def test_logit_is_the_difference_of_positive_and_negative_scores(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    model = prompt_model(tiny_clip, descriptions, head="global", aggregation=False).eval()
    images = images_for(tiny_clip)
    with torch.no_grad():
        positive, negative = model.text()
        token = torch.nn.functional.normalize(model.encode(images).global_token, dim=-1)
        scale = model.head.log_logit_scale.exp()
        expected = scale * (token @ positive.T - token @ negative.T)
        logits = model(images)
    torch.testing.assert_close(logits, expected)
    two_way = torch.softmax(
        torch.stack([scale * token @ negative.T, scale * token @ positive.T]), 0
    )
    torch.testing.assert_close(torch.sigmoid(logits), two_way[1])


@pytest.mark.parametrize("head", ["global", "regional", "both", "official"])
def test_every_head_mode_trains_the_contexts(
    tiny_clip: LoadedClip, descriptions: Path, head: str
) -> None:
    model = prompt_model(tiny_clip, descriptions, head=head, aggregation=head != "global")
    before = model.text.contexts.negative.detach().clone()
    sgd_step(model, images_for(tiny_clip), torch.eye(3))
    assert not torch.equal(model.text.contexts.negative, before)


def test_shared_contexts_and_a_phrase_as_initialisation(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    model = prompt_model(
        tiny_clip, descriptions, prompts={"n_ctx": 4, "class_specific": False, "init": "a b c d"}
    )
    tokens = tiny_clip.tokenizer(["a b c d"])[0, 1:5]
    expected = tiny_clip.module.token_embedding(tokens)
    assert torch.equal(model.text.contexts.positive, expected)
    assert torch.equal(model.text.contexts.negative, expected)
    assert model(images_for(tiny_clip)).shape == (3, 3)


def test_contexts_are_drawn_per_class_by_default_and_shared_on_request(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    """The official draw: one normal(0, 0.02) tensor [classes, n_ctx, W] for the positive
    contexts, then one for the negative ones, from the seeded generator."""
    texts = read_class_texts(descriptions, "descriptions")
    torch.manual_seed(7)
    drawn = PromptedClassText(tiny_clip, texts, PromptConfig(n_ctx=4)).contexts
    torch.manual_seed(7)
    positive = torch.empty(3, 4, 32).normal_(std=0.02)
    negative = torch.empty(3, 4, 32).normal_(std=0.02)
    assert torch.equal(drawn.positive, positive) and torch.equal(drawn.negative, negative)
    assert not torch.equal(positive[0], positive[1])

    shared = prompt_model(tiny_clip, descriptions, prompts={"n_ctx": 4, "random_init": "shared"})
    contexts = shared.text.contexts.positive
    assert contexts.shape == (3, 4, 32) and contexts.std() > 0
    assert torch.equal(contexts[0], contexts[1]) and torch.equal(contexts[1], contexts[2])


@pytest.mark.parametrize("text_format", ["{text}", "{text}."])
def test_class_text_format_is_tokenised_as_one_prompt_string(
    tiny_clip: LoadedClip, tmp_path: Path, text_format: str
) -> None:
    """Token ids of the whole prompt string "X X X X <text>." (with `{text}.`): a text ending
    in punctuation takes the full stop into its last token, as one string does."""
    texts = {"a": ["Keeping things tidy (and neat)"], "b": ["Ready, set, go!"], "c": ["A cat"]}
    path = tmp_path / "punctuated.descriptions.json"
    write_descriptions(path, descriptions_document(texts))
    model = prompt_model(tiny_clip, path, prompts={"n_ctx": 4, "class_text_format": text_format})
    prompts = ["X X X X " + text_format.format(text=t) for (t,) in texts.values()]
    expected = tiny_clip.tokenizer(prompts)[:, : model.text.tokens.shape[1]]
    assert torch.equal(model.text.tokens, expected)
    if text_format == "{text}.":
        assert tiny_clip.tokenizer.encode(").") != tiny_clip.tokenizer.encode(")")


def test_texts_that_no_longer_fit_are_refused_naming_the_class(
    tiny_clip: LoadedClip, tmp_path: Path
) -> None:
    long_text = " ".join(["word"] * 70)  # 72 tokens: fits alone, not with 16 contexts
    path = tmp_path / "long.descriptions.json"
    write_descriptions(path, descriptions_document({"cats": ["A cat."], "dogs": [long_text]}))
    compute_embeddings(descriptions_document({"dogs": [long_text]}), tiny_clip, "mean")

    with pytest.raises(UserError, match=r"class 1 'dogs': 88 tokens with 16 learned context"):
        IntCLIP(tiny_clip, read_class_texts(path, "descriptions"), ModelConfig(text="prompts"))


def test_init_phrase_of_another_length_is_refused(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    with pytest.raises(UserError, match=r"has 3 tokens but model.prompts.n_ctx is 4"):
        prompt_model(tiny_clip, descriptions, prompts={"n_ctx": 4, "init": "a photo of"})


def test_a_text_tower_it_cannot_drive_is_refused(descriptions: Path, tmp_path: Path) -> None:
    config = json.loads(TINY_CLIP_CONFIGS["vit"].read_text())
    path = tmp_path / "custom-text.json"
    path.write_text(json.dumps({**config, "custom_text": True}))
    clip = load_clip(str(path), None)

    with pytest.raises(UserError, match="text tower TextTransformer of CustomTextCLIP cannot"):
        prompt_model(clip, descriptions)


def test_cached_and_prompt_sources_are_not_interchangeable(
    tiny_clip: LoadedClip, descriptions: Path
) -> None:
    texts = read_class_texts(descriptions, "descriptions")
    with pytest.raises(UserError, match=r"model\.text: cached cannot use class texts"):
        IntCLIP(tiny_clip, texts, ModelConfig())
    with pytest.raises(UserError, match=r"model\.text: prompts cannot use class embeddings"):
        IntCLIP(tiny_clip, torch.randn(3, 32), ModelConfig(text="prompts"))


def test_checkpoint_round_trip_holds_the_contexts(
    tiny_clip: LoadedClip, descriptions: Path, tmp_path: Path
) -> None:
    model = prompt_model(tiny_clip, descriptions)
    sgd_step(model, images_for(tiny_clip), torch.eye(3))
    path = tmp_path / "model.safetensors"
    save_model(model.eval(), path)

    header = read_checkpoint_header(path)
    assert header.descriptions_sha256 == sha256_file(descriptions)
    assert header.class_embeddings_sha256 is None and header.config.text == "prompts"
    texts = read_class_texts(descriptions, "descriptions")
    loaded = load_model(path, tiny_clip, texts).eval()
    assert torch.equal(loaded.text.contexts.positive, model.text.contexts.positive)
    images = images_for(tiny_clip, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))

    with pytest.raises(UserError, match=r"trained with model\.text: prompts; it cannot load as "):
        load_model(path, tiny_clip, plain_class_embeddings(tiny_clip, texts))
    write_descriptions(descriptions, descriptions_document({**TEXTS, "beach": ["Sand."] * 3}))
    with pytest.raises(UserError, match="other class texts \\(descriptions_sha256 differs\\)"):
        load_model(path, tiny_clip, read_class_texts(descriptions, "descriptions"))


def test_a_cached_checkpoint_refuses_to_load_as_prompts(
    tiny_clip: LoadedClip, descriptions: Path, tmp_path: Path
) -> None:
    texts = read_class_texts(descriptions, "descriptions")
    path = tmp_path / "cached.safetensors"
    save_model(IntCLIP(tiny_clip, plain_class_embeddings(tiny_clip, texts), ModelConfig()), path)
    with pytest.raises(UserError, match=r"trained with model\.text: cached; it cannot load as "):
        load_model(path, tiny_clip, texts)


def squares(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [count, 3, 32, 32] showing a bright square per label in its own quadrant."""
    labels = (torch.rand(count, 4, generator=generator) < 0.4).float()
    images = 0.3 * torch.randn(count, 3, 32, 32, generator=generator)
    for label in range(4):
        top, left = 16 * (label // 2), 16 * (label % 2)
        images[:, :, top : top + 16, left : left + 16] += 2.0 * labels[:, label, None, None, None]
    return images, labels


def val_map_after_training(clip: LoadedClip, class_text, config: ModelConfig) -> float:
    torch.manual_seed(0)
    model = IntCLIP(clip, class_text, config)
    parameters = [p for g in model.parameter_groups() for p in g.parameters]
    optimizer = torch.optim.AdamW(parameters, lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    val_images, val_labels = squares(64, generator)
    model.train()
    for _ in range(80):
        images, labels = squares(16, generator)
        optimizer.zero_grad()
        AsymmetricLoss()(model(images), labels).backward()
        optimizer.step()
    with torch.no_grad():
        scores = torch.sigmoid(model.eval()(val_images)).numpy()
    return mean_average_precision(val_labels.numpy().astype(np.int64), scores)


def test_prompts_learn_where_uninformative_cached_embeddings_cannot(
    tiny_clip_files: dict, tmp_path: Path
) -> None:
    clip = load_clip(str(TINY_CLIP_CONFIGS["vit"]), tiny_clip_files["vit"])
    same = {f"class{i}": ["A photo of something."] for i in range(4)}
    path = tmp_path / "same.descriptions.json"
    write_descriptions(path, descriptions_document(same))
    texts = read_class_texts(path, "descriptions")
    cached = plain_class_embeddings(clip, texts)  # four identical rows: no class information
    settings = {"head": "global", "aggregation": False}

    cached_map = val_map_after_training(clip, cached, ModelConfig(**settings))
    prompts_map = val_map_after_training(clip, texts, ModelConfig(**settings, **PROMPTS))

    assert prompts_map > cached_map + 20, (prompts_map, cached_map)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prompts_train_under_bf16_autocast_on_cuda(tiny_clip_files: dict, descriptions: Path):
    clip = load_clip(str(TINY_CLIP_CONFIGS["resnet"]), tiny_clip_files["resnet"], device="cuda")
    model = prompt_model(clip, descriptions)
    clip_before = {name: t.clone() for name, t in clip.module.state_dict().items()}
    before = model.text.contexts.positive.detach().clone()
    optimizer = torch.optim.SGD([p for g in model.parameter_groups() for p in g.parameters], lr=1.0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model.train()(images_for(clip).cuda())
    AsymmetricLoss()(logits.float(), torch.eye(3, device="cuda")).backward()
    optimizer.step()
    assert (
        model.text.contexts.positive.is_cuda and model.text.contexts.positive.dtype == torch.float32
    )
    assert not torch.equal(model.text.contexts.positive, before)
    for name, tensor in clip.module.state_dict().items():
        assert torch.equal(tensor, clip_before[name]), name
