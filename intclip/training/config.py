"""The training configuration: one YAML file, validated, overridable from the command line.

Every section rejects unknown keys, so a typo in a config is an error, not a silent default.
`--set optim.lr=0.01` overrides any leaf; values are parsed as YAML (`model.aggregation=false`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from intclip.data.config import AugmentConfig, DataConfig
from intclip.model.intclip import ModelConfig
from intclip.model.models import AnyModelConfig, without_model_kind
from intclip.model.trained import Role
from intclip.runtime.precision import Precision
from intclip.training.loss import Reduction
from pipeline.common.config_section import ConfigSection
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text
from pipeline.common.safe_load import load_yaml, read_text_file

PACKAGED_CONFIGS = Path(__file__).parents[1] / "configs"


def _one_directory_name(name: str) -> str:
    """A run name is one path component, so the run directory stays inside `output_dir`."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError("must be one directory name inside output_dir, not a path")
    return name


RunName = Annotated[str, AfterValidator(_one_directory_name)]


class ClipSection(ConfigSection):
    """The base CLIP and the class embeddings computed with it by `intclip-prompts embed`."""

    name: str = "RN101"
    """An open_clip model name, or the path of an open_clip model-config JSON."""
    pretrained: str = "openai"
    """An open_clip pretrained tag, or a local checkpoint file."""
    image_size: int | None = Field(default=None, ge=32, le=2048)
    """Input size, 32 to 2048 pixels; default: the tower's own. Position embeddings are
    resampled to it."""
    descriptions: Path | None = None
    """Descriptions file whose cached embeddings (for this CLIP and `aggregate`) are used;
    with `model.text: prompts`, the file the prompts' class texts are read from."""
    aggregate: Literal["mean", "mean+name"] = "mean"
    """Class embedding: the mean of the descriptions' embeddings, or that mean with the class
    name's embedding averaged in."""
    embeddings: Path | None = None
    """An embedding cache file, instead of `descriptions` + `aggregate`."""

    @model_validator(mode="after")
    def _one_embedding_source(self) -> ClipSection:
        if (self.descriptions is None) == (self.embeddings is None):
            raise ValueError("give exactly one of descriptions (with aggregate) or embeddings")
        return self


class ScheduleConfig(ConfigSection):
    """Warm-up, then cosine decay of every group's learning rate."""

    unit: Literal["step", "epoch"] = "step"
    """Change the learning rate after every batch, or once per epoch (the official code)."""
    warmup: Literal["linear", "constant"] = "linear"
    """Ramp up linearly to each group's learning rate, or hold every group at `warmup_lr`."""
    warmup_lr: PositiveFloat | None = None
    """The learning rate of every group during a constant warm-up (official: 1e-5)."""
    cosine_epochs: PositiveFloat | Literal["epochs"] | None = None
    """Period of the cosine after warm-up, in epochs. `null` (the default): the epochs left
    after warm-up, so it reaches zero at the end; `epochs`: `optim.epochs` itself, as the
    official code's Dassl scheduler (T_max = MAX_EPOCH, counted after warm-up, so it never
    reaches zero); a number pins it whatever `optim.epochs` says."""

    @model_validator(mode="after")
    def _warmup_lr_with_constant_warmup(self) -> ScheduleConfig:
        if (self.warmup == "constant") != (self.warmup_lr is not None):
            raise ValueError("warmup_lr is set exactly when warmup is 'constant'")
        return self


class OptimConfig(ConfigSection):
    """The optimiser, its learning-rate schedule, batch sizes, epochs and step options."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    """SGD with momentum, or AdamW; fused kernels where torch has them."""
    lr: float = Field(default=0.002, gt=0)
    """Base learning rate of every parameter group (see `lr_multipliers`)."""
    lr_multipliers: dict[Role, PositiveFloat] = Field(default_factory=dict)
    """Per trained part (semantic, aggregation, head), times `lr`; a part not listed gets 1."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum (unused by AdamW)."""
    weight_decay: NonNegativeFloat = 5e-4
    """Decoupled for AdamW, L2 for SGD; see `weight_decay_on`."""
    weight_decay_on: Literal["all", "matrices"] = "matrices"
    """Decay every trained parameter (the official code), or only weight matrices, not gains,
    biases and scalars."""
    epochs: PositiveInt = 50
    """Training epochs; the cosine schedule ends with them."""
    warmup_epochs: NonNegativeFloat = 1.0
    """Epochs of warm-up before the cosine decay (fractions allowed with `schedule.unit: step`)."""
    schedule: ScheduleConfig = ScheduleConfig()
    batch_size: PositiveInt = 64
    """Training images per micro-batch, over all processes together."""
    eval_batch_size: PositiveInt = 128
    """Images per batch in validation, evaluation and prediction."""
    grad_clip: PositiveFloat | None = 1.0
    """Max gradient norm; None turns clipping off (0 would zero every gradient)."""
    compile: bool = False
    """Compile the model with torch.compile (slow first steps, faster after)."""
    channels_last: bool = True
    """Channels-last memory format for ResNet towers (faster convolutions on GPUs)."""
    check_finite_every: PositiveInt = 50
    """Steps between checks that the loss is finite: each check waits for the device."""
    grad_accumulation: PositiveInt = 1
    """Micro-batches of `batch_size` per optimiser step: the effective batch is
    `batch_size * grad_accumulation`. An epoch's last step takes the micro-batches left."""
    early_stop_patience: PositiveInt | None = None
    """Stop once val mAP has not improved for this many validations; None trains every epoch."""

    @model_validator(mode="after")
    def _whole_warmup_epochs_per_epoch(self) -> OptimConfig:
        if self.schedule.unit == "epoch" and not float(self.warmup_epochs).is_integer():
            raise ValueError("with schedule unit 'epoch', warmup_epochs must be a whole number")
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs {self.warmup_epochs:g} exceeds epochs {self.epochs}: the run "
                "would end still warming up"
            )
        return self


class LossConfig(ConfigSection):
    """Asymmetric loss (Ridnik et al. 2021)."""

    gamma_neg: NonNegativeFloat = 2.0
    """Focusing exponent of the negative term."""
    gamma_pos: NonNegativeFloat = 1.0
    """Focusing exponent of the positive term."""
    clip: float = Field(default=0.05, ge=0, lt=1)
    """Probability margin shifted off the negatives (0 turns it off; 1 would zero them all)."""
    eps: float = Field(default=1e-8, gt=0)
    """Lower bound inside the logarithms."""
    reduction: Reduction = "mean"
    """Over all batch elements and classes: `mean`, or `sum` (the official code)."""
    weight: PositiveFloat = 1.0
    """Multiplies the loss (the official code's `--loss_w` 0.03)."""


class InitFrom(ConfigSection):
    """Trained weights a new run starts from (`--init-from`), with the checksum they had."""

    path: Path
    """A run directory (its best checkpoint) or a `.safetensors` checkpoint."""
    sha256: str | None = None
    """The checkpoint's sha256; filled in when the run starts, checked when given."""


Tracker = Literal["tensorboard", "wandb", "mlflow"]


class LogConfig(ConfigSection):
    """Experiment trackers a run writes to besides its own files (metrics.csv, train.log)."""

    trackers: list[Tracker] = Field(default_factory=list)
    """Any of `tensorboard` (event files in the run's `tensorboard/`), `wandb` (offline, in the
    run's `wandb/`, unless `WANDB_MODE` or `WANDB_API_KEY` says otherwise) and `mlflow` (a file
    store in the run's `mlruns/` unless `MLFLOW_TRACKING_URI` names another). Each needs its
    extra: `pip install 'intclip[wandb]'`. All get the same scalars, the config and the final
    report."""
    project: str = Field(default="intclip", min_length=1)
    """The W&B project and the MLflow experiment the run is logged under."""

    @model_validator(mode="after")
    def _each_tracker_once(self) -> LogConfig:
        if len(set(self.trackers)) != len(self.trackers):
            raise ValueError("trackers: name each tracker once")
        return self


class EvalConfig(ConfigSection):
    """Evaluation options beyond the protocol, each reported beside its rows."""

    rerank_top_k: PositiveInt | None = None
    """Also report the scores with each image's top k classes re-ranked by their zero-shot
    similarity with the class's descriptions (CLIP's image embedding against each description's
    cached embedding, pooled by `rerank_pooling`), beside the plain rows with the gain; None:
    off. `eval --rerank-top-k K` sets it for one evaluation."""
    rerank_pooling: Literal["mean", "max", "softmax"] = "mean"
    """How a class's per-description similarities become its re-ranking score."""


class TrainConfig(ConfigSection):
    """A training run: one YAML file of these sections and keys."""

    data: DataConfig
    clip: ClipSection
    model: AnyModelConfig = ModelConfig()
    """IntCLIP (`model.head`: global, regional, both, official), or a head on the frozen
    tower's features (`linear`, `mlp`, `text`), each with its own keys."""
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    seed: int = Field(default=0, ge=0, lt=2**32)
    """Seeds the new modules' initial weights and, with the epoch, every epoch's randomness
    (0 to 2**32 - 1, numpy's range)."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ..."""
    output_dir: Path = Path("runs")
    """Where run directories are created."""
    run_name: RunName | None = None
    """Run directory name under `output_dir`; default: config name and a timestamp."""
    log: LogConfig = LogConfig()
    """Experiment trackers."""
    precision: Precision = "auto"
    """Autocast of the forward pass: `auto` (bf16 on CUDA, fp32 elsewhere), `fp32`, `bf16`, or
    `fp16` with a scaled loss (torch.amp.GradScaler)."""
    init_from: InitFrom | None = None
    """Start from another run's trained weights, with a fresh optimiser and schedule."""
    eval: EvalConfig = EvalConfig()
    """Evaluation options."""

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_moved_to_trackers(cls, data: Any) -> Any:
        """`tensorboard: true|false`, the key before `log.trackers` (every older run's
        config.yaml has it), still reads: true adds `tensorboard` to the trackers."""
        if not isinstance(data, dict) or "tensorboard" not in data:
            return data
        data = dict(data)
        enabled = data.pop("tensorboard")
        if not isinstance(enabled, bool):
            raise ValueError("tensorboard: must be true or false (now log.trackers: [tensorboard])")
        log = data.get("log") or {}
        if not isinstance(log, dict):
            return data  # the section's own validation names the problem
        trackers = list(log.get("trackers") or [])
        if enabled and "tensorboard" not in trackers:
            data["log"] = {**log, "trackers": [*trackers, "tensorboard"]}
        return data

    @model_validator(mode="after")
    def _features_are_of_the_evaluation_view(self) -> TrainConfig:
        if self.model.input == "features" and self.augment.enabled:
            raise ValueError(
                "model.input: features reads features of the evaluation view of each image, "
                "computed once, so image augmentation cannot apply: set augment.enabled: false "
                "(or model.input: images to run the tower on augmented images)"
            )
        return self

    @model_validator(mode="after")
    def _prompts_read_the_descriptions(self) -> TrainConfig:
        if self.model.text != "prompts":
            return self
        if self.clip.descriptions is None:
            raise ValueError(
                "model.text: prompts reads the class texts from clip.descriptions; "
                "set it instead of clip.embeddings"
            )
        if self.clip.aggregate != "mean":
            raise ValueError(
                "clip.aggregate applies to cached embeddings; with model.text: prompts "
                "choose the class text with model.prompts.class_text"
            )
        return self


def load_config(path: Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply `key=value` overrides, validate; errors name file and key."""
    path = Path(path)
    data = load_yaml(read_text_file(path, "config file"), path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of sections")
    for override in overrides or []:
        _apply_override(data, override)
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as err:
        problems = [
            f"{'.'.join(str(k) for k in without_model_kind(e['loc']))}: {e['msg']}"
            for e in err.errors(include_url=False)
        ]
        raise UserError(f"{path}: {'; '.join(problems)}") from None
    non_finite = [key for key, value in config_leaves(config.model_dump()) if _is_non_finite(value)]
    if non_finite:
        raise UserError(f"{path}: {', '.join(non_finite)}: must be a finite number")
    return config


def config_leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf, list items included, e.g. `augment.crop_scale.0`."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    leaves = []
    for key, value in items:
        if isinstance(value, dict | list | tuple):
            leaves += config_leaves(value, f"{prefix}{key}.")
        else:
            leaves.append((f"{prefix}{key}", value))
    return leaves


def _is_non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {override!r}: expected key=value, e.g. optim.lr=0.01")
    value = load_yaml(raw, f"--set {override!r}")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {override!r}: '{part}' is not a section")
        node = child
    node[leaf] = value


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """Every path of the config made absolute, so the run's config.yaml means the same files
    whatever directory `eval` or `predict` is started from."""
    data = config.model_dump(mode="json")
    for section, keys in (
        ("data", ("image_root", "train", "val", "test", "taxonomy")),
        ("clip", ("descriptions", "embeddings")),
    ):
        for key in keys:
            if data[section][key] is not None:
                data[section][key] = str(Path(data[section][key]).absolute())
    for key in ("name", "pretrained"):
        if Path(data["clip"][key]).is_file():
            data["clip"][key] = str(Path(data["clip"][key]).absolute())
    data["output_dir"] = str(Path(data["output_dir"]).absolute())
    return TrainConfig.model_validate(data)


def save_config(config: TrainConfig, path: Path) -> None:
    """The resolved config of a run, reloadable with `load_config`."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(path, text)
