"""The one place that builds an open_clip CLIP, so every stage agrees on which CLIP it used.

A model is an open_clip name ("RN101") or the path of an open_clip model-config JSON; weights are
an open_clip pretrained tag, a local checkpoint file, or none (random init, for tests). Files are
read without unpickling arbitrary objects. The result carries an identity (model, weights source
and a checksum of the weights) that checkpoints and caches record to refuse a different CLIP.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import safetensors.torch
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH
from open_clip.utils import to_2tuple
from pydantic import BaseModel, ConfigDict
from torch import nn

from pipeline.errors import UserError
from pipeline.files import sha256_file, sha256_json
from pipeline.hub import cached_hub_file, source_url, why_unreachable

RANDOM_INIT = "random-init"
REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


class ClipIdentity(BaseModel):
    """What a CLIP is: enough to tell two CLIPs apart without comparing their weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str  # an open_clip model name, or "config-sha256:<hex>" for a model-config file
    pretrained: str  # an open_clip tag, "file-sha256:<hex>" for a local file, or "random-init"
    weights_sha256: str

    def differences(self, other: ClipIdentity) -> list[str]:
        """What makes `other` a different base; the weights source alone does not count."""
        found = []
        if self.model != other.model:
            found.append(f"model {self.model} vs {other.model}")
        if self.weights_sha256 != other.weights_sha256:
            found.append(
                f"weights sha256 {self.weights_sha256[:12]}... vs {other.weights_sha256[:12]}..."
            )
        return found


@dataclass(frozen=True)
class LoadedClip:
    """A frozen CLIP in eval mode with what it takes to feed it and to recognise it later."""

    module: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_size: tuple[int, int]
    identity: ClipIdentity

    @property
    def embed_dim(self) -> int:
        """Width of CLIP's joint image-text space."""
        return int(self.module.visual.output_dim)


@dataclass(frozen=True)
class _ModelSpec:
    identity: str
    config: dict[str, Any]
    builtin_name: str | None
    source: str


@dataclass(frozen=True)
class _WeightsSpec:
    identity: str
    path: Path | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    quick_gelu: bool


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Checksum of a tensor's dtype, shape and bytes; the same on every device."""
    digest = hashlib.sha256()
    _update_digest(digest, tensor)
    return digest.hexdigest()


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Checksum over named tensors in sorted name order, so it does not depend on dict order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode("utf-8"))
        _update_digest(digest, state[name])
    return digest.hexdigest()


def _update_digest(digest: Any, tensor: torch.Tensor) -> None:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def load_clip(
    model: str, pretrained: str | Path | None, device: str | torch.device = "cpu"
) -> LoadedClip:
    """Build a frozen CLIP from an open_clip name or config JSON and a tag, file or nothing."""
    target = _parse_device(device)
    spec = _resolve_model(model)
    tokenizer = _tokenizer(spec)
    weights = _resolve_weights(spec, pretrained)
    module = _instantiate(spec, weights.quick_gelu)
    if weights.path is not None:
        _load_weights(module, weights.path, spec.source)
    module = module.float().requires_grad_(False).eval()
    identity = ClipIdentity(
        model=spec.identity,
        pretrained=weights.identity,
        weights_sha256=state_dict_sha256(module.state_dict()),
    )
    return LoadedClip(
        module=module.to(target),
        tokenizer=tokenizer,
        image_mean=weights.mean,
        image_std=weights.std,
        image_size=to_2tuple(module.visual.image_size),
        identity=identity,
    )


def describe_clip_source(model: str, pretrained: str | Path | None) -> tuple[str, str]:
    """The model and weights identities `load_clip` would record, without loading any weights:
    enough to key a cache and to find out that nothing needs computing."""
    spec = _resolve_model(model)
    if pretrained is None:
        return spec.identity, RANDOM_INIT
    path = _local_weights(pretrained)
    return spec.identity, f"file-sha256:{sha256_file(path)}" if path else str(pretrained)


def _local_weights(pretrained: str | Path) -> Path | None:
    """The checkpoint file `pretrained` names, or None when it is a pretrained tag."""
    path = Path(pretrained)
    if path.is_file():
        return path
    if isinstance(pretrained, Path) or path.suffix.lower() in _STATE_DICT_READERS:
        raise UserError(f"checkpoint file not found: {pretrained}")
    return None


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"invalid device {device!r}: {err}") from err
    if target.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    return target


def _resolve_model(model: str) -> _ModelSpec:
    path = Path(model)
    if path.suffix.lower() == ".json" or path.is_file():
        config = _read_model_config(path)
        return _ModelSpec(f"config-sha256:{sha256_json(config)}", config, None, str(path))
    config = open_clip.get_model_config(model)
    if config is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown open_clip model {model!r}{hint} (or pass a model-config .json file)"
        )
    return _ModelSpec(model, config, model, model)


def _read_model_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"model config file not found: {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a JSON model config ({err})") from err
    missing = [
        key for key in REQUIRED_CONFIG_KEYS if not isinstance(config, dict) or key not in config
    ]
    if missing:
        raise UserError(f"{path}: not an open_clip model config (missing {', '.join(missing)})")
    return config


def _resolve_weights(spec: _ModelSpec, pretrained: str | Path | None) -> _WeightsSpec:
    if pretrained is None:
        return _WeightsSpec(RANDOM_INIT, None, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, False)
    path = _local_weights(pretrained)
    if path is not None:
        identity = f"file-sha256:{sha256_file(path)}"
        return _WeightsSpec(identity, path, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, False)
    return _download_tag(spec, str(pretrained))


def _download_tag(spec: _ModelSpec, tag: str) -> _WeightsSpec:
    if spec.builtin_name is None:
        raise UserError(
            f"pretrained tag {tag!r} needs an open_clip model name; "
            f"with the config file {spec.source} pass a local checkpoint file instead"
        )
    tag_config = open_clip.get_pretrained_cfg(spec.builtin_name, tag)
    if not tag_config:
        tags = open_clip.list_pretrained_tags_by_model(spec.builtin_name)
        known = f"known tags: {', '.join(tags)}" if tags else "it has no known tags"
        raise UserError(
            f"{tag!r} is neither a checkpoint file nor a pretrained tag of "
            f"{spec.builtin_name} ({known})"
        )
    origin = tag_config.get("hf_hub") or tag_config.get("url")
    unreachable = why_unreachable(source_url(tag_config))
    if unreachable is not None:
        path = cached_hub_file(tag_config)
        if path is None:
            raise _weights_error(spec, tag, origin, unreachable)
    else:
        try:
            path = Path(open_clip.download_pretrained(tag_config))
        except Exception as err:  # any hub or network failure: the remedy is the same
            raise _weights_error(spec, tag, origin, _first_line(err)) from err
    return _WeightsSpec(
        tag, path, tag_config["mean"], tag_config["std"], tag_config.get("quick_gelu", False)
    )


def _weights_error(spec: _ModelSpec, tag: str, origin: str, reason: str) -> UserError:
    return UserError(
        f"cannot download the {spec.builtin_name} {tag!r} weights ({reason}); without network, "
        f"fetch them from {origin} and pass the local .safetensors, .bin or .pt file as "
        "pretrained (--pretrained PATH)"
    )


def _instantiate(spec: _ModelSpec, quick_gelu: bool) -> nn.Module:
    config = copy.deepcopy(spec.config)
    if "multimodal_cfg" in config:
        raise UserError(f"{spec.source}: CoCa models are not supported")
    if quick_gelu:
        config["quick_gelu"] = True  # the tag's weights were trained with QuickGELU
    text_config = config["text_cfg"]
    custom_text = config.pop("custom_text", False) or "hf_model_name" in text_config
    if "hf_model_name" in text_config:
        text_config["hf_model_pretrained"] = False  # the full CLIP weights are loaded next
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        return model_class(**config)
    except (TypeError, ValueError, AssertionError) as err:
        raise UserError(f"{spec.source}: invalid open_clip model config ({err})") from err


def _torch_state_dict(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


_STATE_DICT_READERS: dict[str, Callable[[Path], Any]] = {
    ".safetensors": safetensors.torch.load_file,
    ".pt": _torch_state_dict,
    ".pth": _torch_state_dict,
    ".bin": _torch_state_dict,
}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    reader = _STATE_DICT_READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"{path}: unsupported checkpoint type {path.suffix!r} "
            f"(expected {', '.join(_STATE_DICT_READERS)})"
        )
    try:
        content = reader(path)
    except Exception as err:  # every parser failure means the same thing: an unreadable file
        raise UserError(f"{path}: cannot read checkpoint ({_first_line(err)})") from err
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(
        isinstance(value, torch.Tensor) for value in content.values()
    ):
        raise UserError(f"{path}: not a state dict of named tensors")
    return {name.removeprefix("module."): tensor for name, tensor in content.items()}


def _load_weights(module: nn.Module, path: Path, source: str) -> None:
    state = _read_state_dict(path)
    expected = module.state_dict()
    problems = {
        "missing keys": [name for name in expected if name not in state],
        "unexpected keys": [name for name in state if name not in expected],
        "shape mismatches": [
            f"{name} {tuple(state[name].shape)} vs {tuple(tensor.shape)}"
            for name, tensor in expected.items()
            if name in state and state[name].shape != tensor.shape
        ],
    }
    found = [
        f"{len(items)} {kind} ({', '.join(items[:3])})" for kind, items in problems.items() if items
    ]
    if found:
        raise UserError(f"{path} does not fit model {source}: {'; '.join(found)}")
    module.load_state_dict(state, strict=True)


def _tokenizer(spec: _ModelSpec) -> Callable[..., torch.Tensor]:
    if spec.builtin_name is not None:
        return open_clip.get_tokenizer(spec.builtin_name)
    text_config = spec.config["text_cfg"]
    if text_config.get("hf_tokenizer_name"):
        raise UserError(
            f"{spec.source}: Hugging Face tokenizers are not supported for model-config files; "
            "use an open_clip model name"
        )
    return open_clip.SimpleTokenizer(
        context_length=text_config.get("context_length", DEFAULT_CONTEXT_LENGTH),
        **(text_config.get("tokenizer_kwargs") or {}),
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
