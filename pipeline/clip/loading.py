"""The one place that builds an open_clip CLIP, so every stage agrees on which CLIP it used.

A model is an open_clip name ("RN101") or the path of an open_clip model-config JSON; weights are
an open_clip pretrained tag, a local checkpoint file, or none (random init, for tests). Files are
read without unpickling arbitrary objects. The result carries an identity (model, weights source,
activation and a checksum of the weights) that checkpoints and caches record to refuse a
different CLIP.

The activation is not in the weights: OpenAI's CLIPs were trained with QuickGELU, and the same
tensors in a GELU model give wrong features without any error. So it is decided, in this order, by
the file's layout (OpenAI's TorchScript archives and state dicts carry `input_resolution`,
`context_length` and `vocab_size`), a pretrained tag's known activation, the model's known tags
when all of them agree, and the model config.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import logging
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import open_clip
import safetensors.torch
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH
from open_clip.utils import to_2tuple
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from pipeline.clip.hub import cached_hub_file, source_url, why_unreachable
from pipeline.common.devices import parse_device
from pipeline.common.errors import UserError
from pipeline.common.files import sha256_file, sha256_json
from pipeline.common.safe_load import load_json, read_text_file

RANDOM_INIT = "random-init"
REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
CONFIG_PREFIX = "config-sha256:"
FILE_PREFIX = "file-sha256:"
Activation = Literal["gelu", "quick_gelu"]
log = logging.getLogger(__name__)


class ClipIdentity(BaseModel):
    """What a CLIP is: enough to tell two CLIPs apart without comparing their weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str  # an open_clip model name, or "config-sha256:<hex>" for a model-config file
    pretrained: str  # an open_clip tag, "file-sha256:<hex>" for a local file, or "random-init"
    weights_sha256: str
    activation: Activation

    @model_validator(mode="before")
    @classmethod
    def _recorded_before_activations(cls, values: Any) -> Any:
        """Identities written before the activation was recorded get the one the loader of the
        time built, so their caches and checkpoints stay valid where it was right."""
        if isinstance(values, dict) and values.get("activation") is None and "model" in values:
            values = {
                **values,
                "activation": legacy_activation(values["model"], values.get("pretrained", "")),
            }
        return values

    def differences(self, other: ClipIdentity) -> list[str]:
        """What makes `other` a different base; the weights source alone does not count."""
        found = []
        if self.model != other.model:
            found.append(f"model {self.model} vs {other.model}")
        if self.activation != other.activation:
            found.append(f"activation {self.activation} vs {other.activation}")
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
    source: str  # the checkpoint file, for messages
    state: dict[str, torch.Tensor] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    activation: Activation


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
    target = parse_device(device)
    spec = _resolve_model(model)
    tokenizer = _tokenizer(spec)
    weights = _resolve_weights(spec, pretrained)
    module = _instantiate(spec, weights.activation)
    if weights.state is not None:
        _load_weights(module, weights.state, weights.source, spec.source)
    module = module.float().requires_grad_(False).eval()
    identity = ClipIdentity(
        model=spec.identity,
        pretrained=weights.identity,
        weights_sha256=state_dict_sha256(module.state_dict()),
        activation=weights.activation,
    )
    return LoadedClip(
        module=module.to(target),
        tokenizer=tokenizer,
        image_mean=weights.mean,
        image_std=weights.std,
        image_size=to_2tuple(module.visual.image_size),
        identity=identity,
    )


def describe_clip_source(model: str, pretrained: str | Path | None) -> tuple[str, str, Activation]:
    """The model and weights identities and the activation `load_clip` would record, without
    building the model: enough to key a cache and to find out that nothing needs computing."""
    spec = _resolve_model(model)
    if pretrained is None:
        return spec.identity, RANDOM_INIT, _config_activation(spec)
    path = _local_weights(pretrained)
    if path is None:
        tag_config = _tag_config(spec, str(pretrained))
        return spec.identity, str(pretrained), _tag_activation(spec, tag_config)
    openai_layout = _is_openai_layout(_read_state_dict(path))
    return spec.identity, _file_identity(path), _file_activation(spec, path, openai_layout)


def legacy_activation(model: str, pretrained: str) -> Activation:
    """What intclip built before it recorded activations: QuickGELU only where the open_clip
    model config or the pretrained tag said so (a model-config file's own setting is not
    recoverable from its hash; such records count as GELU)."""
    if model.startswith(CONFIG_PREFIX):
        return "gelu"
    config = open_clip.get_model_config(model) or {}
    tag_config = {}
    if pretrained != RANDOM_INIT and not pretrained.startswith(FILE_PREFIX):
        tag_config = open_clip.get_pretrained_cfg(model, pretrained) or {}
    return "quick_gelu" if config.get("quick_gelu") or tag_config.get("quick_gelu") else "gelu"


def _local_weights(pretrained: str | Path) -> Path | None:
    """The checkpoint file `pretrained` names, or None when it is a pretrained tag."""
    path = Path(pretrained)
    if path.is_file():
        return path
    if isinstance(pretrained, Path) or path.suffix.lower() in _STATE_DICT_READERS:
        raise UserError(f"checkpoint file not found: {pretrained}")
    return None


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
    config = load_json(read_text_file(path, "model config"), path)
    missing = [
        key for key in REQUIRED_CONFIG_KEYS if not isinstance(config, dict) or key not in config
    ]
    if missing:
        raise UserError(f"{path}: not an open_clip model config (missing {', '.join(missing)})")
    return config


def _resolve_weights(spec: _ModelSpec, pretrained: str | Path | None) -> _WeightsSpec:
    if pretrained is None:
        activation = _config_activation(spec)
        return _WeightsSpec(
            RANDOM_INIT, RANDOM_INIT, None, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, activation
        )
    path = _local_weights(pretrained)
    if path is not None:
        state = _read_state_dict(path)
        openai_layout = _is_openai_layout(state)
        activation = _file_activation(spec, path, openai_layout)
        return _WeightsSpec(
            _file_identity(path),
            str(path),
            _without_openai_extras(state),
            OPENAI_DATASET_MEAN,
            OPENAI_DATASET_STD,
            activation,
        )
    return _download_tag(spec, str(pretrained))


def _file_identity(path: Path) -> str:
    return f"{FILE_PREFIX}{sha256_file(path)}"


def _config_activation(spec: _ModelSpec) -> Activation:
    return "quick_gelu" if spec.config.get("quick_gelu") else "gelu"


def _tag_activation(spec: _ModelSpec, tag_config: Mapping[str, Any]) -> Activation:
    """A tag trained with QuickGELU needs it even under the plain model name."""
    return "quick_gelu" if tag_config.get("quick_gelu") else _config_activation(spec)


def _file_activation(spec: _ModelSpec, path: Path, openai_layout: bool) -> Activation:
    """The activation a local file's weights need, or a one-line refusal of a mismatch."""
    if openai_layout:
        if spec.config.get("quick_gelu", True) is False:
            raise UserError(
                f"{path} holds OpenAI-format CLIP weights, trained with QuickGELU, but "
                f"{spec.source} sets quick_gelu false: remove that key"
            )
        return "quick_gelu"
    if spec.builtin_name is None or spec.config.get("quick_gelu"):
        return _config_activation(spec)
    tags = open_clip.list_pretrained_tags_by_model(spec.builtin_name)
    quick = [
        t for t in tags if open_clip.get_pretrained_cfg(spec.builtin_name, t).get("quick_gelu")
    ]
    if tags and len(quick) == len(tags):
        return "quick_gelu"  # every known set of these weights was trained with QuickGELU
    if quick:
        _note_ambiguous_activation(spec.builtin_name, tuple(quick))
    return "gelu"


@functools.cache
def _note_ambiguous_activation(name: str, quick_tags: tuple[str, ...]) -> None:
    """Once per process: a cache check and the load that follows would otherwise say it twice."""
    log.warning(
        "note: %s's pretrained weights differ in activation; building GELU as named. For "
        "weights of %s pass --clip %s",
        name,
        ", ".join(quick_tags),
        _quickgelu_name(name),
    )


def _quickgelu_name(name: str) -> str:
    """The open_clip name of `name` built with QuickGELU, or a config file that says so."""
    twin = f"{name}-quickgelu"
    if twin in open_clip.list_models():
        return twin
    return 'a model-config .json file with "quick_gelu": true'


def _is_openai_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return any(key in state for key in OPENAI_EXTRA_KEYS)


def _without_openai_extras(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's archives keep three shape constants among the weights; open_clip has no such
    parameters."""
    return {name: tensor for name, tensor in state.items() if name not in OPENAI_EXTRA_KEYS}


def _tag_config(spec: _ModelSpec, tag: str) -> dict[str, Any]:
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
    return tag_config


def _download_tag(spec: _ModelSpec, tag: str) -> _WeightsSpec:
    tag_config = _tag_config(spec, tag)
    activation = _tag_activation(spec, tag_config)
    unreachable = why_unreachable(source_url(tag_config))
    if unreachable is not None:
        path = cached_hub_file(tag_config)
        if path is None:
            raise _weights_error(spec, tag, tag_config, activation, unreachable)
    else:
        try:
            path = Path(open_clip.download_pretrained(tag_config))
        except Exception as err:  # any hub or network failure: the remedy is the same
            raise _weights_error(spec, tag, tag_config, activation, _first_line(err)) from err
    state = _without_openai_extras(_read_state_dict(path))
    return _WeightsSpec(tag, str(path), state, tag_config["mean"], tag_config["std"], activation)


def _weights_error(
    spec: _ModelSpec, tag: str, tag_config: Mapping[str, Any], activation: Activation, reason: str
) -> UserError:
    origin = tag_config.get("hf_hub") or tag_config.get("url")
    model = spec.source
    if activation == "quick_gelu" and not spec.config.get("quick_gelu"):
        model = _quickgelu_name(spec.source)  # a plain file does not say it needs QuickGELU
    return UserError(
        f"cannot download the {spec.builtin_name} {tag!r} weights ({reason}); without network, "
        f"fetch them from {origin} and pass the local .safetensors, .bin or .pt file as "
        f"pretrained (--clip {model} --pretrained PATH)"
    )


def _instantiate(spec: _ModelSpec, activation: Activation) -> nn.Module:
    config = copy.deepcopy(spec.config)
    if "multimodal_cfg" in config:
        raise UserError(f"{spec.source}: CoCa models are not supported")
    config["quick_gelu"] = activation == "quick_gelu"
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
    """A torch.save file, or a TorchScript archive such as OpenAI's own CLIP downloads: TorchScript
    is deserialised by its own restricted loader, never by unpickling Python objects."""
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the format is deprecated, still read
            return dict(torch.jit.load(path, map_location="cpu").state_dict())
    return torch.load(path, map_location="cpu", weights_only=True)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a `constants.pkl` record; torch.save's are not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


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


def _load_weights(
    module: nn.Module, state: dict[str, torch.Tensor], path: str, source: str
) -> None:
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
