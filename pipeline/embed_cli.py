"""`intclip-prompts embed`, `cache ls`, `cache verify` and `zeroshot`: stage 2 and its checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from pipeline.clip import load_clip
from pipeline.console import stderr
from pipeline.descriptions import read_descriptions
from pipeline.embeddings import (
    Aggregate,
    compute_embeddings,
    embed_descriptions,
    embedding_cache_file,
    load_class_embeddings,
)
from pipeline.errors import EXIT_CHECK_FAILED, UserError
from pipeline.files import cache_root, sha256_file
from pipeline.images import eval_transform, list_images, open_image
from pipeline.zeroshot import ZeroShotCLIP

app = typer.Typer()
cache_app = typer.Typer(help="Inspect and verify the embedding cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
stdout = Console(highlight=False, soft_wrap=True)

DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ... (auto: CUDA if any).")]
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Cache root (default: $INTCLIP_CACHE_DIR, else cache/ of the intclip checkout "
        "you are in, else ./cache)."
    ),
]


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _source(value: str) -> str:
    """A file argument as an absolute path (so `cache verify` finds it from anywhere)."""
    path = Path(value)
    return str(path.resolve()) if path.is_file() else value


@app.command()
def embed(
    descriptions: Annotated[Path, typer.Option(help="Descriptions JSON of intclip-prompts build.")],
    clip: Annotated[
        str, typer.Option(help="open_clip model name, or an open_clip model-config JSON.")
    ] = "RN101",
    pretrained: Annotated[
        str, typer.Option(help="open_clip pretrained tag, or a local .pt/.bin/.safetensors file.")
    ] = "openai",
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    aggregate: Annotated[
        Aggregate, typer.Option(help="Class embedding: mean of descriptions, or with the name.")
    ] = "mean",
    cache_dir: CacheDirOption = None,
) -> None:
    """Embed every description with CLIP's frozen text tower, once; print the cache file."""
    root = cache_root(cache_dir)
    path = embedding_cache_file(descriptions, clip, pretrained, aggregate, root)
    if _intact(path):
        stderr.print("cache hit: these embeddings exist already, nothing computed")
    else:
        loaded = load_clip(clip, pretrained, _device(device))
        done = embed_descriptions(
            descriptions, loaded, _source(clip), _source(pretrained), aggregate, root, batch_size
        )
        count, per_class, width = done.description_embeddings.shape
        stderr.print(f"embedded {count} classes x {per_class} descriptions, {width} dimensions")
        path = done.path
    stdout.print(str(path), markup=False)


def _intact(path: Path) -> bool:
    """Whether a usable cache file is there; a damaged one is said and then recomputed."""
    if not path.is_file():
        return False
    try:
        load_class_embeddings(path)
    except UserError as err:
        stderr.print(f"warning: {err}; computing it again", markup=False)
        return False
    return True


@cache_app.command("ls")
def cache_ls(cache_dir: CacheDirOption = None) -> None:
    """List cached embeddings with their provenance and size."""
    folder = cache_root(cache_dir) / "embeddings"
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        stdout.print(f"no cached embeddings in {folder}")
        return
    stdout.print(f"{len(files)} cached embedding file(s) in {folder}", markup=False)
    for path in files:
        try:
            loaded = load_class_embeddings(path)
        except UserError as err:
            stdout.print(f"{path.name}  unreadable: {err}", markup=False)
            continue
        meta = loaded.metadata
        shape = "x".join(str(n) for n in loaded.description_embeddings.shape)
        stdout.print(
            f"{path.name}  descriptions={Path(meta.descriptions_path).name}"
            f"@{meta.descriptions_sha256[:8]}  model={meta.model_source}  "
            f"pretrained={meta.pretrained}  aggregate={meta.aggregate}  NxKxD={shape}  "
            f"size={path.stat().st_size / 1024:.0f}KiB",
            markup=False,
        )


@cache_app.command("verify")
def cache_verify(
    path: Annotated[Path, typer.Argument(help="A cache file, as printed by embed.")],
    device: DeviceOption = "auto",
    atol: Annotated[float, typer.Option(help="Largest allowed absolute difference.")] = 1e-5,
) -> None:
    """Recompute a cached file from its recorded sources and compare (exit 1 if it differs)."""
    cached = load_class_embeddings(path)
    meta = cached.metadata
    source = Path(meta.descriptions_path)
    if not source.is_file() or sha256_file(source) != meta.descriptions_sha256:
        raise UserError(f"{path}: its descriptions file {source} is gone or changed since")
    clip = load_clip(meta.model_source, meta.pretrained_source, _device(device))
    changed = meta.clip.differences(clip.identity)
    if changed:
        raise UserError(
            f"{path}: the CLIP at {meta.model_source} / {meta.pretrained_source} is not the one "
            f"recorded ({'; '.join(changed)})"
        )
    recomputed = compute_embeddings(read_descriptions(source), clip, meta.aggregate)
    stored = (cached.class_embeddings, cached.description_embeddings)
    difference = max(
        float((new - old).abs().max()) for new, old in zip(recomputed, stored, strict=True)
    )
    if difference > atol:
        raise UserError(
            f"{path}: differs from a recomputation by up to {difference:.3g} (> {atol:g})",
            EXIT_CHECK_FAILED,
        )
    stdout.print(f"{path}: verified, largest difference {difference:.3g}", markup=False)


@app.command()
def zeroshot(
    embeddings: Annotated[Path, typer.Option(help="A cache file, as printed by embed.")],
    images: Annotated[list[Path], typer.Option(help="Image files or directories, one or more.")],
    top: Annotated[int, typer.Option(min=1, help="Intents shown per image.")] = 5,
    clip: Annotated[
        str | None, typer.Option(help="CLIP model (default: the one recorded in the cache).")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="CLIP weights (default: the ones recorded in the cache).")
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Score images with plain CLIP against the cached class embeddings, no training: a
    sanity check of the descriptions before training."""
    files = list_images(images)
    cached = load_class_embeddings(embeddings)
    meta = cached.metadata
    loaded = load_clip(
        clip or meta.model_source, pretrained or meta.pretrained_source, _device(device)
    )
    cached.require_clip(loaded.identity)
    device_of = next(loaded.module.parameters()).device
    model = ZeroShotCLIP(loaded, cached.class_embeddings).to(device_of).eval()
    transform = eval_transform(loaded.image_size[0], loaded.image_mean, loaded.image_std)
    for path in files:
        with torch.no_grad():
            logits = model(transform(open_image(path)).unsqueeze(0).to(device_of))
        scores = ZeroShotCLIP.scores(logits)[0].cpu()
        stdout.print(str(path), markup=False)
        for row in scores.argsort(descending=True)[:top].tolist():
            stdout.print(
                f"  {scores[row]:.3f}  {cached.labels[row]:>3}  {cached.ids[row]}", markup=False
            )
