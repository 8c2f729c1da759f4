"""`pipeline.clip.loading.load_clip`: names, config files, tags and local files, safely."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import huggingface_hub
import open_clip
import pytest
import safetensors.torch
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

import pipeline.clip.loading
from pipeline.clip.loading import (
    RANDOM_INIT,
    ClipIdentity,
    describe_clip_source,
    load_clip,
    state_dict_sha256,
    tensor_sha256,
)
from pipeline.common.errors import UserError
from pipeline.common.files import sha256_file, sha256_json
from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_openai_clip, save_random_clip

RESNET_CONFIG = TINY_CLIP_CONFIGS["resnet"]
VIT_CONFIG = TINY_CLIP_CONFIGS["vit"]


@pytest.mark.parametrize("tower", sorted(TINY_CLIP_CONFIGS))
def test_config_file_gives_a_frozen_clip_with_tokenizer_and_identity(tower: str) -> None:
    config_path = TINY_CLIP_CONFIGS[tower]
    config = json.loads(config_path.read_text())
    clip = load_clip(str(config_path), None)

    assert not clip.module.training
    assert not any(parameter.requires_grad for parameter in clip.module.parameters())
    tokens = clip.tokenizer(["a photo of a dog", "friends at a party"])
    assert tokens.shape == (2, config["text_cfg"]["context_length"])
    assert clip.module.encode_text(tokens).shape == (2, config["embed_dim"])
    size = config["vision_cfg"]["image_size"]
    assert clip.image_size == (size, size)
    images = torch.zeros(1, 3, *clip.image_size)
    assert clip.module.encode_image(images).shape == (1, clip.embed_dim)
    assert (clip.image_mean, clip.image_std) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    assert clip.identity.model == f"config-sha256:{sha256_json(config)}"
    assert clip.identity.pretrained == RANDOM_INIT
    assert clip.identity.weights_sha256 == state_dict_sha256(clip.module.state_dict())


def test_config_identity_follows_content_not_layout(tmp_path: Path) -> None:
    config = json.loads(RESNET_CONFIG.read_text())
    relaid = tmp_path / "relaid.json"
    relaid.write_text(json.dumps(config, indent=None, sort_keys=True))
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**config, "embed_dim": 64}))

    original = load_clip(str(RESNET_CONFIG), None).identity.model
    assert load_clip(str(relaid), None).identity.model == original
    assert load_clip(str(changed), None).identity.model != original


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_checkpoint_files_load_the_same_weights(tmp_path: Path, suffix: str) -> None:
    reference = save_random_clip(VIT_CONFIG, tmp_path / "reference.safetensors", seed=3)
    checkpoint = save_random_clip(VIT_CONFIG, tmp_path / f"weights{suffix}", seed=3)

    clip = load_clip(str(VIT_CONFIG), checkpoint)

    assert clip.identity.pretrained == f"file-sha256:{sha256_file(checkpoint)}"
    assert (
        clip.identity.weights_sha256
        == load_clip(str(VIT_CONFIG), reference).identity.weights_sha256
    )
    assert clip.identity.weights_sha256 != load_clip(str(VIT_CONFIG), None).identity.weights_sha256


def test_training_checkpoint_with_wrapped_state_dict_loads(tmp_path: Path) -> None:
    reference = load_clip(str(RESNET_CONFIG), save_random_clip(RESNET_CONFIG, tmp_path / "a.pt", 4))
    wrapped = {
        "epoch": 3,
        "state_dict": {f"module.{k}": v for k, v in reference.module.state_dict().items()},
    }
    torch.save(wrapped, tmp_path / "wrapped.pt")

    clip = load_clip(str(RESNET_CONFIG), tmp_path / "wrapped.pt")

    assert clip.identity.weights_sha256 == reference.identity.weights_sha256


def test_weights_checksum_sees_every_tensor_and_dtype() -> None:
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    same = {"b": torch.ones(3), "a": torch.arange(6.0).reshape(2, 3)}
    edited = {"a": state["a"].clone(), "b": torch.ones(3)}
    edited["a"][1, 2] += 1e-6

    assert state_dict_sha256(state) == state_dict_sha256(same)
    assert state_dict_sha256(state) != state_dict_sha256(edited)
    assert state_dict_sha256(state) != state_dict_sha256({"a": state["a"]})
    assert tensor_sha256(state["a"]) != tensor_sha256(state["a"].double())
    assert tensor_sha256(state["a"]) != tensor_sha256(state["a"].reshape(3, 2))


def test_unknown_model_name_lists_close_matches() -> None:
    with pytest.raises(UserError, match=r"unknown open_clip model 'RN10'.*RN101.*RN50"):
        load_clip("RN10", None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"model\.json:1: invalid JSON"),
        ("[" * 100 + "]" * 100, "nested deeper than 64 levels"),
        (b"\xff\xfe{}", "model config is not UTF-8 text"),
        ('{"embed_dim": 32, "vision_cfg": {}}', "missing text_cfg"),
        ("[1, 2]", "missing embed_dim"),
        ('{"embed_dim": 32, "vision_cfg": {"bogus": 1}, "text_cfg": {}}', "invalid open_clip"),
    ],
)
def test_bad_model_config_names_the_file(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    """Read through the bounded loader: a deep or non-UTF-8 file is one line, not a crash."""
    path = tmp_path / "model.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as raised:
        load_clip(str(path), None)
    assert str(path) in str(raised.value)


def test_missing_config_file_is_reported() -> None:
    with pytest.raises(UserError, match=r"model config file not found: nowhere/model\.json"):
        load_clip("nowhere/model.json", None)


def test_unknown_tag_lists_the_known_tags() -> None:
    with pytest.raises(UserError, match=r"'nonsense' is neither a checkpoint file.*openai"):
        load_clip("RN50", "nonsense")


def test_tag_without_a_builtin_model_asks_for_a_file() -> None:
    with pytest.raises(UserError, match="pass a local checkpoint file"):
        load_clip(str(RESNET_CONFIG), "openai")


def never_download(*args: object, **kwargs: object) -> str:
    raise AssertionError("an offline machine must not try to download")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_hub_fails_at_once_and_says_how_to_pass_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(open_clip, "download_pretrained", never_download)
    with pytest.raises(UserError) as raised:
        load_clip("RN50", "openai")
    message = str(raised.value)
    assert "cannot download the RN50 'openai' weights (127.0.0.1 is unreachable: " in message
    assert "timm/resnet50_clip.openai" in message and "--pretrained PATH" in message
    assert "\n" not in message


def test_hf_hub_offline_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(open_clip, "download_pretrained", never_download)
    with pytest.raises(UserError, match=r"weights \(HF_HUB_OFFLINE is set\); without network"):
        load_clip("RN101", "openai")


def test_offline_uses_the_hugging_face_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A copy already in the hub cache is used offline (here a broken one, to see it read)."""
    snapshot = tmp_path / "models--timm--resnet50_clip.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"not weights")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(open_clip, "download_pretrained", never_download)
    with pytest.raises(UserError, match="cannot read checkpoint") as raised:
        load_clip("RN50", "openai")
    assert str(snapshot / "open_clip_model.safetensors") in str(raised.value)


def test_a_failed_download_explains_how_to_pass_a_local_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreachable(*args: object, **kwargs: object) -> str:
        raise OSError("[Errno -2] Name or service not known\nRetrying...")

    monkeypatch.setattr(
        pipeline.clip.loading, "why_unreachable", lambda url: None
    )  # the probe passed
    monkeypatch.setattr(open_clip, "download_pretrained", unreachable)
    with pytest.raises(UserError) as raised:
        load_clip("RN50", "openai")
    message = str(raised.value)
    assert "cannot download the RN50 'openai' weights (" in message
    assert "Name or service not known" in message
    assert "timm/resnet50_clip.openai" in message
    assert "--clip RN50-quickgelu --pretrained PATH" in message
    assert "\n" not in message


def test_missing_checkpoint_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint file not found"):
        load_clip(str(RESNET_CONFIG), str(tmp_path / "absent.safetensors"))
    with pytest.raises(UserError, match="checkpoint file not found"):
        load_clip(str(RESNET_CONFIG), tmp_path / "absent")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.safetensors", b"\x00\x01 not safetensors", "cannot read checkpoint"),
        ("garbage.pt", b"PK\x03\x04 truncated zip", "cannot read checkpoint"),
        ("weights.ckpt", b"anything", "unsupported checkpoint type '.ckpt'"),
    ],
)
def test_unreadable_checkpoint_names_the_file(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as raised:
        load_clip(str(RESNET_CONFIG), path)
    assert str(path) in str(raised.value)


def test_truncated_safetensors_checkpoint_is_refused(tmp_path: Path) -> None:
    path = save_random_clip(RESNET_CONFIG, tmp_path / "clip.safetensors", seed=0)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_clip(str(RESNET_CONFIG), path)


class _Exploit:
    """Unpickling this would create a file: proof that pickled code never runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(1), "payload": _Exploit(marker)}, path)

    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_clip(str(RESNET_CONFIG), path)
    assert not marker.exists()


def test_non_tensor_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pt"
    torch.save({"visual.proj": 3}, path)
    with pytest.raises(UserError, match="not a state dict of named tensors"):
        load_clip(str(RESNET_CONFIG), path)


def test_weights_of_another_architecture_do_not_fit(tmp_path: Path) -> None:
    vit_weights = save_random_clip(VIT_CONFIG, tmp_path / "vit.safetensors", seed=0)
    with pytest.raises(
        UserError,
        match=r"does not fit model .*tiny-rn\.json: \d+ missing keys \(.*\); \d+ unexpected keys",
    ):
        load_clip(str(RESNET_CONFIG), vit_weights)


def test_weights_with_other_shapes_do_not_fit(tmp_path: Path) -> None:
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**json.loads(VIT_CONFIG.read_text()), "embed_dim": 48}))
    weights = save_random_clip(wider, tmp_path / "wider.safetensors", seed=0)
    with pytest.raises(UserError, match=r"2 shape mismatches \(text_projection \(32, 48\) vs"):
        load_clip(str(VIT_CONFIG), weights)


def test_unavailable_or_invalid_device_is_a_user_error() -> None:
    with pytest.raises(UserError, match="invalid device 'gpu0'"):
        load_clip(str(RESNET_CONFIG), None, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load_clip(str(RESNET_CONFIG), None, device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loads_onto_cuda_with_the_same_identity(tiny_clip_files: dict) -> None:
    on_cpu = load_clip(str(RESNET_CONFIG), tiny_clip_files["resnet"])
    on_gpu = load_clip(str(RESNET_CONFIG), tiny_clip_files["resnet"], device="cuda")
    assert next(on_gpu.module.parameters()).is_cuda
    assert on_gpu.identity == on_cpu.identity


@pytest.mark.parametrize("torchscript", [True, False], ids=["torchscript", "state-dict"])
def test_openai_format_weights_build_a_quickgelu_model(tmp_path: Path, torchscript: bool) -> None:
    weights = tmp_path / "ViT-tiny.pt"
    reference = save_openai_clip(VIT_CONFIG, weights, seed=5, torchscript=torchscript)

    clip = load_clip(str(VIT_CONFIG), weights)

    assert clip.identity.activation == "quick_gelu"
    assert describe_clip_source(str(VIT_CONFIG), weights)[2] == "quick_gelu"
    tokens = clip.tokenizer(["friends laughing at a party"])
    images = torch.rand(2, 3, *clip.image_size)
    as_gelu = load_clip(str(VIT_CONFIG), None)
    as_gelu.module.load_state_dict(clip.module.state_dict())
    assert as_gelu.identity.activation == "gelu"
    with torch.no_grad():
        expected = reference.encode_text(tokens)
        torch.testing.assert_close(clip.module.encode_text(tokens), expected)
        torch.testing.assert_close(clip.module.encode_image(images), reference.encode_image(images))
        assert not torch.allclose(as_gelu.module.encode_text(tokens), expected, atol=1e-3)


def test_openai_weights_with_a_config_that_refuses_quickgelu_name_the_fix(tmp_path: Path) -> None:
    weights = tmp_path / "openai.pt"
    save_openai_clip(VIT_CONFIG, weights, seed=5, torchscript=False)
    config = tmp_path / "gelu.json"
    config.write_text(json.dumps({**json.loads(VIT_CONFIG.read_text()), "quick_gelu": False}))

    with pytest.raises(UserError) as raised:
        load_clip(str(config), weights)

    message = str(raised.value)
    assert "OpenAI-format CLIP weights, trained with QuickGELU" in message
    assert f"{config} sets quick_gelu false: remove that key" in message
    assert "\n" not in message


def test_a_plain_model_name_takes_the_activation_its_known_weights_were_trained_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"visual.proj": torch.zeros(2, 2)}, weights)

    assert describe_clip_source("RN101", weights)[2] == "quick_gelu"  # openai and yfcc15m
    assert describe_clip_source("RN101-quickgelu", weights)[2] == "quick_gelu"
    assert not caplog.records
    assert describe_clip_source("ViT-B-32", weights)[2] == "gelu"  # tags differ: as named
    assert "For weights of openai, laion400m_e31" in caplog.text
    assert "pass --clip ViT-B-32-quickgelu" in caplog.text


def test_identities_recorded_before_the_activation_get_the_one_then_built() -> None:
    def legacy(model: str, pretrained: str) -> ClipIdentity:
        return ClipIdentity.model_validate(
            {"model": model, "pretrained": pretrained, "weights_sha256": "0" * 64}
        )

    assert legacy("RN101", "openai").activation == "quick_gelu"
    assert legacy("RN101-quickgelu", "file-sha256:ab").activation == "quick_gelu"
    assert legacy("RN101", "file-sha256:ab").activation == "gelu"
    assert legacy("config-sha256:ab", RANDOM_INIT).activation == "gelu"
    now = legacy("RN101", "file-sha256:ab").model_copy(update={"activation": "quick_gelu"})
    assert legacy("RN101", "file-sha256:ab").differences(now) == ["activation gelu vs quick_gelu"]
