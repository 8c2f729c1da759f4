"""Frozen CLIP image features of a list of images: the one definition of their cache files.

`intclip-train features` (and any run, evaluation or later stage that needs them) computes the
features of a frozen image tower once and keeps them under the cache root:

    <cache root>/features/<key>.safetensors         the features of one image list, merged
    <cache root>/features/<key>.parts/rows-<a>-<b>.safetensors   finished shards, until merged

The key hashes everything the features depend on (`FeatureKey`): the CLIP (model, weights
source and sha256, activation), the images (relative paths with their sizes and modification
times), the transform that turned them into pixels, the pooling (the pooled embedding alone, or
the dense map too) and the open_clip version. Every file carries its key in its header, checked
on every read: a file renamed, copied over another or edited by hand is refused in one line,
never served for inputs it was not made from. Files are written through a temporary file and a
rename, so a killed extraction leaves only whole shards, which the next one keeps.

Tensors: `pooled` [images, D], CLIP's own image embedding (not normalised); with the `dense`
pooling also `dense` [images, D, H, W], the tower's last feature map projected into the joint
space (the sight map of `intclip.model`). All float32, rows in image-list order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import open_clip
import safetensors
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.clip.loading import ClipIdentity
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_bytes, sha256_bytes, sha256_json

FORMAT = "intclip-features-v1"
HEADER_KEY = "intclip"
POOLED_TENSOR = "pooled"
DENSE_TENSOR = "dense"
FEATURES_DIR = "features"
Pooling = Literal["pooled", "dense"]
"""`pooled`: CLIP's image embedding only; `dense`: the projected feature map as well."""


class FeatureTransform(BaseModel):
    """How an image file became the tower's input: every setting that changes its pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int
    eval_resize: str
    pipeline: str
    decode: str
    normalize: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class FeatureKey(BaseModel):
    """Every input the features of an image list depend on; the cache file's name hashes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip: ClipIdentity
    images_sha256: str
    """sha256 over the images' relative paths, sizes and mtimes (`image_list_sha256`)."""
    count: int
    transform: FeatureTransform
    pooling: Pooling
    open_clip: str

    @property
    def digest(self) -> str:
        return sha256_json(self.model_dump(mode="json"))

    def path(self, cache_root: Path) -> Path:
        """`<cache root>/features/<key>.safetensors`."""
        return Path(cache_root) / FEATURES_DIR / f"{self.digest}.safetensors"

    def parts(self, cache_root: Path) -> Path:
        """The folder of the finished shards of an extraction not yet merged."""
        return Path(cache_root) / FEATURES_DIR / f"{self.digest}.parts"

    def with_pooling(self, pooling: Pooling) -> FeatureKey:
        return self.model_copy(update={"pooling": pooling})

    def differences(self, recorded: FeatureKey) -> list[str]:
        """What `recorded` (a file's header) says differently from this key, one phrase each."""
        found = [f"CLIP: {difference}" for difference in recorded.clip.differences(self.clip)]
        if recorded.clip.pretrained != self.clip.pretrained and not found:
            found.append(f"CLIP weights {recorded.clip.pretrained} vs {self.clip.pretrained}")
        names = {
            "images_sha256": "images (paths, sizes, modification times)",
            "count": "image count",
            "transform": "transform",
            "pooling": "pooling",
            "open_clip": "open_clip version",
        }
        for field, name in names.items():
            have, want = getattr(recorded, field), getattr(self, field)
            if have != want:
                shown = (have, want) if field != "images_sha256" else (have[:12], want[:12])
                found.append(f"{name} {shown[0]} in the file, {shown[1]} asked for")
        return found


def feature_key(
    clip: ClipIdentity,
    image_root: Path,
    paths: Sequence[str],
    transform: FeatureTransform,
    pooling: Pooling,
) -> FeatureKey:
    """The key of the features of `paths` (relative to `image_root`) made this way."""
    return FeatureKey(
        clip=clip,
        images_sha256=image_list_sha256(image_root, paths),
        count=len(paths),
        transform=transform,
        pooling=pooling,
        open_clip=open_clip.__version__,
    )


def image_list_sha256(image_root: Path, paths: Sequence[str]) -> str:
    """sha256 over each image's relative path, size and modification time: a changed, replaced
    or touched file changes it, so its features are computed again. Paths stay relative, so a
    copy of the image folder elsewhere (`cp -p`, `rsync -t`) keeps its features."""
    lines = []
    for path in paths:
        try:
            found = os.stat(Path(image_root) / path)
        except OSError as err:
            raise UserError(f"{Path(image_root) / path}: cannot read ({err.strerror})") from None
        lines.append(f"{path}\0{found.st_size}\0{found.st_mtime_ns}")
    return sha256_bytes("\n".join(lines).encode("utf-8"))


class FeatureHeader(BaseModel):
    """A features file's header: its key, the rows of the image list it holds, their paths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["intclip-features-v1"]
    key: FeatureKey
    start: int
    stop: int
    """Rows `start` to `stop` (exclusive) of the image list: all of it in a merged file."""
    paths: list[str]


@dataclass(frozen=True)
class CachedFeatures:
    """A features file read and checked: `pooled` [N, D], `dense` [N, D, H, W] or None."""

    path: Path
    header: FeatureHeader
    pooled: torch.Tensor
    dense: torch.Tensor | None

    @property
    def paths(self) -> list[str]:
        """The images of the rows, relative to the image root."""
        return self.header.paths


def write_features(
    path: Path, header: FeatureHeader, pooled: torch.Tensor, dense: torch.Tensor | None
) -> None:
    """Write one features file (a shard or a merged list) atomically."""
    tensors = {POOLED_TENSOR: pooled.detach().to("cpu", torch.float32).contiguous()}
    if dense is not None:
        tensors[DENSE_TENSOR] = dense.detach().to("cpu", torch.float32).contiguous()
    data = safetensors.torch.save(tensors, metadata={HEADER_KEY: header.model_dump_json()})
    atomic_write_bytes(path, data)


def read_header(path: Path) -> FeatureHeader | None:
    """A features file's header alone, without its tensors; None when it cannot be read as
    one (a shard that is then computed again)."""
    try:
        with safetensors.safe_open(path, framework="pt") as reader:
            return FeatureHeader.model_validate_json((reader.metadata() or {})[HEADER_KEY])
    except Exception:  # missing, damaged, foreign: all mean "not a finished shard"
        return None


def read_features(
    path: Path, key: FeatureKey, rows: tuple[int, int] | None = None
) -> CachedFeatures:
    """Read a features file made with `key` (and, for a shard, holding `rows`), refusing in one
    line a file that is damaged, not ours, or made from other inputs."""
    path = Path(path)
    try:
        with safetensors.safe_open(path, framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise UserError(
            f"{path}: no such features file; make it with intclip-train features"
        ) from None
    except Exception as err:  # safetensors reports any damage as a plain exception
        raise UserError(f"{path}: damaged or not a safetensors file ({err})") from None
    if HEADER_KEY not in metadata:
        raise UserError(f"{path}: not an intclip features file (no {HEADER_KEY!r} header)")
    try:
        header = FeatureHeader.model_validate_json(metadata[HEADER_KEY])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{path}: not an intclip features file ({where}: {first['msg']})") from None
    differences = key.differences(header.key)
    if differences:
        raise UserError(f"{path}: not made from the inputs asked for: {'; '.join(differences)}")
    wanted = rows or (0, key.count)
    if (header.start, header.stop) != wanted:
        raise UserError(
            f"{path}: holds rows {header.start}-{header.stop}, rows {wanted[0]}-{wanted[1]} "
            "asked for"
        )
    features = CachedFeatures(path, header, tensors.get(POOLED_TENSOR), tensors.get(DENSE_TENSOR))
    _check_intact(features, key.pooling)
    return features


def _check_intact(features: CachedFeatures, pooling: Pooling) -> None:
    path, header = features.path, features.header
    count = header.stop - header.start
    expected = {POOLED_TENSOR: 2} | ({DENSE_TENSOR: 4} if pooling == "dense" else {})
    for name, dimensions in expected.items():
        tensor = getattr(features, name)
        if tensor is None:
            raise UserError(f"{path}: missing the {name} tensor")
        if tensor.ndim != dimensions or len(tensor) != count or len(header.paths) != count:
            raise UserError(
                f"{path}: {name} has shape {tuple(tensor.shape)} for {count} images "
                f"({len(header.paths)} paths)"
            )
        if tensor.dtype != torch.float32 or not torch.isfinite(tensor).all():
            raise UserError(f"{path}: {name} must be finite float32")


def shard_rows(count: int, shard_size: int) -> list[tuple[int, int]]:
    """The row ranges [start, stop) of the shards of `count` images, in order."""
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def shard_path(parts: Path, rows: tuple[int, int]) -> Path:
    """A shard's file: named by its rows, so shards of another shard size never match."""
    return Path(parts) / f"rows-{rows[0]:08d}-{rows[1]:08d}.safetensors"
