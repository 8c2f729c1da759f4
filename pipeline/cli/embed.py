"""`intclip-prompts embed`, `cache ls`, `cache verify` and `zeroshot`: stage 2 and its checks.

torch, open_clip and the modules built on them are imported inside the commands: the CLI's
`--help` and its commands that need no tensor start without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.common.collector import tensor_command
from pipeline.common.console import stderr, stdout
from pipeline.common.errors import EXIT_CHECK_FAILED, UserError
from pipeline.common.files import cache_root, sha256_file
from pipeline.descriptions.format import read_descriptions
from pipeline.embeddings.class_embedding import TEXT_BATCH_SIZE, Aggregate

if TYPE_CHECKING:
    from pipeline.embeddings.cache import CacheKey

app = typer.Typer()
cache_app = typer.Typer(help="Inspect and verify the embedding cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ... (auto: CUDA if any).")]
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Cache root (default: $INTCLIP_CACHE_DIR, else cache/ of the intclip checkout "
        "you are in, else ./cache)."
    ),
]


def _source(value: str) -> str:
    """A file argument as an absolute path (so `cache verify` finds it from anywhere)."""
    path = Path(value)
    return str(path.resolve()) if path.is_file() else value


@app.command()
@tensor_command
def embed(
    descriptions: Annotated[Path, typer.Option(help="Descriptions JSON of intclip-prompts build.")],
    clip: Annotated[
        str, typer.Option(help="open_clip model name, or an open_clip model-config JSON.")
    ] = "RN101",
    pretrained: Annotated[
        str, typer.Option(help="open_clip pretrained tag, or a local .pt/.bin/.safetensors file.")
    ] = "openai",
    device: DeviceOption = "auto",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Texts per forward pass.")
    ] = TEXT_BATCH_SIZE,
    aggregate: Annotated[
        Aggregate, typer.Option(help="Class embedding: mean of descriptions, or with the name.")
    ] = "mean",
    cache_dir: CacheDirOption = None,
) -> None:
    """Embed every description with CLIP's frozen text tower, once; print the cache file."""
    from pipeline.clip.loading import load_clip
    from pipeline.embeddings.cache import embed_descriptions, embedding_cache_key

    root = cache_root(cache_dir)
    _check_rules(descriptions)
    key = embedding_cache_key(descriptions, clip, pretrained, aggregate)
    path = key.path(root)
    if _intact(path, key):
        stderr.print("cache hit: these embeddings exist already, nothing computed")
    else:
        loaded = load_clip(clip, pretrained, device)
        done = embed_descriptions(
            descriptions, loaded, _source(clip), _source(pretrained), aggregate, root, batch_size
        )
        count, per_class, width = done.description_embeddings.shape
        stderr.print(f"embedded {count} classes x {per_class} descriptions, {width} dimensions")
        path = done.path
    stdout.print(str(path), markup=False)


def _check_rules(descriptions: Path) -> None:
    """Embed only what `build --check` accepts: a file edited by hand is checked again."""
    document = read_descriptions(descriptions)
    if not document.classes:
        raise UserError(f"{descriptions}: no classes to embed")
    problems = document.rule_problems()
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(
            f"{descriptions}: {problems[0]}{more}; fix it or run intclip-prompts build again"
        )


def _intact(path: Path, key: CacheKey) -> bool:
    """Whether a usable cache file made from `key`'s inputs is there; a damaged or foreign one
    is said and then recomputed."""
    from pipeline.embeddings.cache import load_class_embeddings

    if not path.is_file():
        return False
    try:
        load_class_embeddings(path, key=key)
    except UserError as err:
        stderr.print(f"warning: {err}; computing it again", markup=False)
        return False
    return True


@cache_app.command("ls")
@tensor_command
def cache_ls(cache_dir: CacheDirOption = None) -> None:
    """List cached embeddings with their provenance and size."""
    from pipeline.embeddings.cache import load_class_embeddings

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
@tensor_command
def cache_verify(
    path: Annotated[Path, typer.Argument(help="A cache file, as printed by embed.")],
    device: DeviceOption = "auto",
    atol: Annotated[float, typer.Option(min=0, help="Largest allowed absolute difference.")] = 1e-5,
) -> None:
    """Recompute a cached file from its recorded sources and compare (exit 1 if it differs)."""
    from pipeline.clip.loading import load_clip
    from pipeline.embeddings.cache import (
        CLASS_TENSOR,
        DESCRIPTION_TENSOR,
        compute_embeddings,
        embedding_cache_key,
        load_class_embeddings,
    )

    cached = load_class_embeddings(path)
    meta = cached.metadata
    source = Path(meta.descriptions_path)
    if not source.is_file() or sha256_file(source) != meta.descriptions_sha256:
        raise UserError(f"{path}: its descriptions file {source} is gone or changed since")
    clip = load_clip(meta.model_source, meta.pretrained_source, device)
    changed = meta.clip.differences(clip.identity)
    if changed:
        raise UserError(
            f"{path}: the CLIP at {meta.model_source} / {meta.pretrained_source} is not the one "
            f"recorded ({'; '.join(changed)})"
        )
    # The inputs come from the sources themselves, not from what the header says about itself.
    key = embedding_cache_key(source, meta.model_source, meta.pretrained_source, meta.aggregate)
    document = read_descriptions(source)
    problems = key.differences(meta)
    if path.name != key.path(Path()).name:
        problems.append(f"its name is not the key of its inputs, {key.path(Path()).name}")
    if (meta.labels, meta.ids) != (
        [c.label for c in document.classes],
        [c.id for c in document.classes],
    ):
        problems.append(f"its labels and ids are not those of {source}")
    if problems:
        raise UserError(f"{path}: {'; '.join(problems)}", EXIT_CHECK_FAILED)
    recomputed = compute_embeddings(document, clip, meta.aggregate)
    stored = (cached.class_embeddings, cached.description_embeddings)
    for name, new, old in zip((CLASS_TENSOR, DESCRIPTION_TENSOR), recomputed, stored, strict=True):
        if new.shape != old.shape:
            raise UserError(
                f"{path}: {name} has shape {tuple(old.shape)}, a recomputation {tuple(new.shape)}",
                EXIT_CHECK_FAILED,
            )
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
@tensor_command
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
    import torch

    from pipeline.clip.images import eval_transform, list_images, open_image
    from pipeline.clip.loading import load_clip
    from pipeline.embeddings.cache import load_class_embeddings
    from pipeline.embeddings.zeroshot import ZeroShotCLIP

    files = list_images(images)
    cached = load_class_embeddings(embeddings)
    meta = cached.metadata
    loaded = load_clip(clip or meta.model_source, pretrained or meta.pretrained_source, device)
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
