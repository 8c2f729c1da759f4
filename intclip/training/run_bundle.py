"""A run directory that travels: what `eval` and `predict` need is inside it, or named exactly.

A new run copies its class embeddings, descriptions, taxonomy and model-config file into
`inputs/` and records them in `run.json` by run-relative path and sha256, with the identity of
the CLIP it was trained on. `eval` and `predict` then read those copies, never the original
cache, so the directory can be moved, tarred or copied to another machine. The CLIP weights
are too large to copy: their file is named by absolute path and sha256, and `--pretrained PATH`
points at a copy elsewhere, refused unless its sha256 is the recorded one. Runs from before
`run.json` load as they always did, from the paths their config records.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from intclip.training.config import TrainConfig, load_config
from intclip.training.provenance import ConfigDiff, Invocation, config_diff, ended
from pipeline.clip.loading import FILE_PREFIX, ClipIdentity
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_bytes, atomic_write_text, sha256_file, stable_json
from pipeline.common.safe_load import load_json, read_text_file

RUN_MANIFEST = "run.json"
RUN_CONFIG = "config.yaml"
INPUTS_DIR = "inputs"
RUN_FORMAT = "intclip-run-v2"
"""v2 added `invocations`, `config_diff` and `trackers`; a v1 run.json reads with them empty."""
Role = Literal["clip_model", "class_embeddings", "descriptions", "taxonomy"]
INPUT_NAMES: dict[Role, str] = {
    "clip_model": "clip-model.json",
    "class_embeddings": "class-embeddings.safetensors",
    "descriptions": "descriptions.json",
    "taxonomy": "taxonomy.yaml",
}


class BundledFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    """Relative to the run directory."""
    sha256: str
    source: str
    """Where it was copied from, for the record only."""


class RunManifest(BaseModel):
    """`run.json`: what the run's artefacts were made with, readable without torch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["intclip-run-v1", "intclip-run-v2"]
    clip: ClipIdentity
    clip_weights: str | None
    """Absolute path of the weights file trained on; None for a pretrained tag."""
    files: dict[Role, BundledFile]
    invocations: list[Invocation] = []
    """Every command that worked on the run: the one that made it, then each `--resume`."""
    config_diff: ConfigDiff | None = None
    trackers: dict[str, str] = {}
    """The id of the run in each experiment tracker, which a resumed run continues."""


@dataclass(frozen=True)
class RunInputs:
    recorded: TrainConfig
    """The config as trained: what the run's config hash is computed on."""
    config: TrainConfig
    """The same config pointing at the run's own copies and at the weights found here."""


def _sources(config: TrainConfig, class_embeddings: Path | None) -> dict[Role, Path]:
    candidates: dict[Role, Path | None] = {
        "clip_model": Path(config.clip.name) if Path(config.clip.name).is_file() else None,
        "class_embeddings": class_embeddings,
        "descriptions": config.clip.descriptions,
        "taxonomy": config.data.taxonomy,
    }
    return {role: Path(path) for role, path in candidates.items() if path is not None}


def bundle_inputs(
    run_dir: Path,
    config: TrainConfig,
    clip: ClipIdentity,
    class_embeddings: Path | None,
    started: Invocation,
) -> None:
    """Copy the run's inputs into `inputs/` and write `run.json` with the invocation that
    `started` the run; `class_embeddings` is the cache file read under `model.text: cached`,
    None under `prompts`."""
    files = {}
    for role, source in _sources(config, class_embeddings).items():
        relative = f"{INPUTS_DIR}/{INPUT_NAMES[role]}"
        try:
            data = source.read_bytes()
        except OSError as err:
            raise UserError(f"{source}: cannot copy into the run ({err.strerror})") from err
        atomic_write_bytes(run_dir / relative, data)
        files[role] = BundledFile(
            path=relative, sha256=sha256_file(run_dir / relative), source=str(source)
        )
    weights = Path(config.clip.pretrained)
    manifest = RunManifest(
        format=RUN_FORMAT,
        clip=clip,
        clip_weights=str(weights) if clip.pretrained.startswith(FILE_PREFIX) else None,
        files=files,
        invocations=[started],
        config_diff=config_diff(config),
    )
    _write_manifest(run_dir, manifest)


def _write_manifest(run_dir: Path, manifest: RunManifest) -> None:
    atomic_write_text(run_dir / RUN_MANIFEST, stable_json(manifest.model_dump(mode="json")))


def update_manifest(run_dir: Path, **changes: Any) -> None:
    """Change fields of run.json (made v2); a run made before run.json has none to change."""
    manifest = read_manifest(run_dir)
    if manifest is not None:
        _write_manifest(run_dir, manifest.model_copy(update={"format": RUN_FORMAT, **changes}))


@contextmanager
def recorded(run_dir: Path, started: Invocation) -> Iterator[None]:
    """`started` in run.json's invocations (a resumed run adds itself), and how it ended once
    the block ends, whatever ends it."""
    manifest = read_manifest(run_dir)
    earlier = [] if manifest is None else [i for i in manifest.invocations if i != started]
    update_manifest(run_dir, invocations=[*earlier, started])
    try:
        yield
    except BaseException as error:
        update_manifest(run_dir, invocations=[*earlier, ended(started, error)])
        raise
    update_manifest(run_dir, invocations=[*earlier, ended(started, None)])


def read_manifest(run_dir: Path) -> RunManifest | None:
    """`run.json`, or None for a run made before it existed."""
    path = run_dir / RUN_MANIFEST
    if not path.exists():
        return None
    document = load_json(read_text_file(path, "run manifest"), path)
    try:
        return RunManifest.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{path}: not an intclip run manifest ({where}: {first['msg']})") from None


def load_run_inputs(run_dir: Path, pretrained: Path | None = None) -> RunInputs:
    """The run's config, made to read the run's own inputs and the CLIP weights found here
    (`pretrained`, when given, replaces the recorded weights path after its sha256 is checked)."""
    run_dir = Path(run_dir)
    recorded = load_config(run_dir / RUN_CONFIG)
    manifest = read_manifest(run_dir)
    data = recorded.model_dump(mode="json")
    if pretrained is not None:
        data["clip"]["pretrained"] = str(pretrained)
    if manifest is not None:
        _use_copies(run_dir, manifest, data, recorded)
        if manifest.clip_weights is not None:
            data["clip"]["pretrained"] = _weights_file(run_dir, manifest, pretrained)
    try:
        return RunInputs(recorded, TrainConfig.model_validate(data))
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(
            f"{run_dir / RUN_CONFIG}: does not fit {RUN_MANIFEST} ({first['msg']})"
        ) from None


def _use_copies(run_dir: Path, manifest: RunManifest, data: dict, recorded: TrainConfig) -> None:
    """Point `data` (the config as a dict) at the run's copies of the files it was made from;
    a path edited since in config.yaml is left as the user set it."""
    copies = {role: _checked_copy(run_dir, bundled) for role, bundled in manifest.files.items()}
    sources = {role: bundled.source for role, bundled in manifest.files.items()}
    for section, key, role in (
        ("clip", "name", "clip_model"),
        ("clip", "descriptions", "descriptions"),
        ("data", "taxonomy", "taxonomy"),
    ):
        if role in copies and data[section][key] == sources[role]:
            data[section][key] = copies[role]
    if "class_embeddings" in copies and recorded.model.text == "cached":
        embeddings = data["clip"]["embeddings"]
        if embeddings is None or embeddings == sources["class_embeddings"]:
            data["clip"].update(embeddings=copies["class_embeddings"], descriptions=None)


def _checked_copy(run_dir: Path, bundled: BundledFile) -> str:
    """The absolute path of a copy in the run, refused when missing or changed since."""
    path = (run_dir / bundled.path).absolute()
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise UserError(f"{run_dir / RUN_MANIFEST}: {bundled.path} is outside the run directory")
    if not path.is_file():
        raise UserError(f"{path}: missing; the run directory is incomplete ({RUN_MANIFEST})")
    if sha256_file(path) != bundled.sha256:
        raise UserError(f"{path}: changed since the run was made (sha256 in {RUN_MANIFEST})")
    return str(path)


def _weights_file(run_dir: Path, manifest: RunManifest, pretrained: Path | None) -> str:
    """The weights file to load: the recorded one, or `pretrained` if it is the same file."""
    wanted = manifest.clip.pretrained.removeprefix(FILE_PREFIX)
    recorded = manifest.clip_weights
    if pretrained is None:
        if not Path(recorded).is_file():
            raise UserError(
                f"{run_dir} was trained on the CLIP weights file {recorded} (sha256 "
                f"{wanted[:16]}...), which is not on this machine: pass --pretrained PATH "
                "to a copy of that file"
            )
        return recorded
    if not pretrained.is_file():
        raise UserError(f"--pretrained {pretrained}: no such file")
    found = sha256_file(pretrained)
    if found != wanted:
        raise UserError(
            f"{pretrained} has sha256 {found[:16]}..., but {run_dir} was trained on {recorded} "
            f"with sha256 {wanted[:16]}...: pass a copy of that same file"
        )
    return str(pretrained.absolute())
