"""Building descriptions: one LLM request per fine class, skipped when its inputs are unchanged.

The plan is computed without any network: it says, per class, the exact request, the hash of
everything that request depends on, and whether the committed file already answers it. `build`,
`--dry-run` and `--check` are three ways of acting on the same plan.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.clip.tokens import clip_tokenizer
from pipeline.common.errors import EXIT_BAD_INPUT, EXIT_LLM_FAILURE, UserError
from pipeline.common.files import sha256_json
from pipeline.descriptions.format import (
    SCHEMA_VERSION,
    ClassDescriptions,
    DescriptionRules,
    DescriptionsFile,
    GeneratorInfo,
    LLMKind,
    TaxonomyRef,
    answer_model,
    descriptions_sha256,
    edit_summary,
    normalised,
)
from pipeline.descriptions.review import ClassReview
from pipeline.descriptions.taxonomy import FineClass, Taxonomy
from pipeline.descriptions.templates import PromptTemplates
from pipeline.llm.client import LLMAnswer, LLMClient
from pipeline.llm.settings import LLMError

Outcome = Literal["kept", "edited", "cached", "sent", "failed"]
LOAD_CHECKS_WAIT_S = 30.0  # past this without a request sent, the first check loads the tokenizer
REVISION_TEMPLATE = (
    'A review found these descriptions nearer to the class "{other}" ({other_path}) than to '
    '"{name}". Write {count} new descriptions that fit "{name}" and not "{other}", following '
    "every rule."
)
ONE_DESCRIPTION_TEMPLATE = "Write description {number} of {count} now, and only that one."


class BuildSettings(BaseModel):
    """Everything that shapes a request besides the taxonomy and the templates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    rules: DescriptionRules = DescriptionRules()
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    seed: int | None = 0
    one_at_a_time: bool = False
    """Ask for one description per request, K requests per class: a small model keeps to the
    rules far more often with one sentence to write than with K, and a rejected answer sends
    back only the one failing description."""
    llm: LLMKind = "openai"
    """Which kind of server answers; recorded in the file, not part of any request's hash."""

    @property
    def per_request(self) -> int:
        """Descriptions asked for in one request."""
        return 1 if self.one_at_a_time else self.rules.num_descriptions

    @property
    def request_rules(self) -> DescriptionRules:
        """The rules of one request's answer: those of the class, for its share of it."""
        return self.rules.model_copy(update={"num_descriptions": self.per_request})

    @property
    def max_tokens(self) -> int:
        """Room for one request's descriptions of `max_words` words in JSON, counted as if
        every character were a token (grammar-constrained servers may sample that way); stops a
        model that runs on."""
        return self.per_request * (8 * self.rules.max_words + 32) + 64

    def params(self) -> dict[str, Any]:
        """The sampling and format parameters recorded in the descriptions file
        (`one_at_a_time` only when on, so files asked K at a time keep their hashes)."""
        return {
            "num_descriptions": self.rules.num_descriptions,
            "min_words": self.rules.min_words,
            "max_words": self.rules.max_words,
            "temperature": self.temperature,
            "seed": self.seed,
            **({"one_at_a_time": True} if self.one_at_a_time else {}),
        }


_GENERAL_DEFAULTS: dict[str, Any] = {
    **BuildSettings(model="any").params(),
    "one_at_a_time": False,
}
BUILD_DEFAULTS: dict[LLMKind, dict[str, Any]] = {
    "openai": _GENERAL_DEFAULTS,
    # A 135M model on two cores (SmolLM2 by default): one sentence per request, fewer of them.
    "local": {**_GENERAL_DEFAULTS, "num_descriptions": 3, "one_at_a_time": True},
}
"""The settings a build uses when neither a flag nor the output file gives one, by LLM kind."""


class DistinctAcrossClasses:
    """The cross-class rule: no description may repeat one of another class, up to case,
    punctuation and spacing; such descriptions cannot tell the two classes apart.

    The first class to hold a sentence keeps it: `claim` checks and records an answer in one
    step, so of two classes answered at once with the same sentence, the later is asked again.
    """

    def __init__(self, entries: Iterable[ClassDescriptions] = ()) -> None:
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()
        for entry in entries:  # kept as they are, even if two of them clash (--only)
            for text in entry.descriptions:
                self._owners.setdefault(normalised(text), entry.id)

    def problems(self, class_id: str, texts: Sequence[str]) -> list[str]:
        """One line per other class that already holds some of `texts`."""
        repeated: dict[str, list[str]] = {}
        for text in texts:
            owner = self._owners.get(normalised(text), class_id)
            if owner != class_id:
                repeated.setdefault(owner, []).append(repr(text))
        return [
            f"{', '.join(quoted)} repeat(s) class '{owner}'; write descriptions that fit this "
            "class and no other"
            for owner, quoted in repeated.items()
        ]

    def claim(self, class_id: str, texts: Sequence[str]) -> None:
        """Record `texts` as `class_id`'s, or raise ValueError (sent back to the LLM)."""
        with self._lock:
            found = self.problems(class_id, texts)
            if found:
                raise ValueError("; ".join(found))
            for text in texts:
                self._owners[normalised(text)] = class_id


@dataclass(frozen=True)
class ClassJob:
    """One fine class: its request, the hash of its inputs, and the entry that still answers it."""

    fine: FineClass
    messages: list[dict[str, str]]
    inputs_sha256: str
    previous: ClassDescriptions | None
    selected: bool

    @property
    def up_to_date(self) -> bool:
        return (
            self.previous is not None
            and self.previous.inputs_sha256 == self.inputs_sha256
            and self.previous.id == self.fine.id
            and self.previous.path == list(self.fine.path)
        )

    @property
    def edited(self) -> bool:
        """A reviewer's texts: kept by every build, whatever changed."""
        return self.previous is not None and self.previous.edited is not None

    @property
    def name(self) -> str:
        return f"class {self.fine.label} '{self.fine.id}'"

    def one_description(self, number: int, count: int) -> list[dict[str, str]]:
        """The request for description `number` of `count` alone (`one_at_a_time`)."""
        turn = ONE_DESCRIPTION_TEMPLATE.format(number=number, count=count)
        return [*self.messages, {"role": "user", "content": turn}]


@dataclass(frozen=True)
class BuildPlan:
    taxonomy: Taxonomy
    templates: PromptTemplates
    settings: BuildSettings
    jobs: tuple[ClassJob, ...]
    previous: DescriptionsFile | None
    refresh: bool

    @property
    def to_send(self) -> list[ClassJob]:
        """Selected classes whose committed entry is missing, stale or repeats another class's
        description (all of them on refresh), unless a reviewer edited it."""
        return [
            j
            for j in self.jobs
            if j.selected
            and not j.edited
            and (self.refresh or not j.up_to_date or j.fine.label in self.repeated_across_classes)
        ]

    def edited_with_new_inputs(self) -> list[ClassJob]:
        """Edited classes whose request changed since: kept, and worth a reviewer's look."""
        return [j for j in self.jobs if j.selected and j.edited and not j.up_to_date]

    @cached_property
    def repeated_across_classes(self) -> dict[int, list[str]]:
        """Previous entries, by label, that repeat a description of a class with a lower label."""
        entries = sorted(self.previous.classes if self.previous else [], key=lambda e: e.label)
        rule = DistinctAcrossClasses()
        found = {}
        for entry in entries:
            try:
                rule.claim(entry.id, entry.descriptions)
            except ValueError:
                found[entry.label] = rule.problems(entry.id, entry.descriptions)
        return found

    def kept_entries(self) -> list[ClassDescriptions]:
        """The previous entries this build keeps as they are."""
        sending = {job.fine.label for job in self.to_send}
        return [j.previous for j in self.jobs if j.previous and j.fine.label not in sending]

    def document(self, answers: dict[int, list[str]]) -> DescriptionsFile:
        """The output: new answers, else the previous entry; classes never built are left out.
        A previous choice on val stays recorded while some class still holds its candidates."""
        entries = []
        for job in self.jobs:
            if job.fine.label in answers:
                entries.append(_entry(job, answers[job.fine.label]))
            elif job.previous is not None:
                entries.append(job.previous)
        chosen = any(entry.candidates is not None for entry in entries)
        return DescriptionsFile(
            schema_version=SCHEMA_VERSION,
            taxonomy=TaxonomyRef(name=self.taxonomy.name, sha256=self.taxonomy.sha256),
            generator=GeneratorInfo(
                model=self.settings.model,
                template_sha256=self.templates.sha256,
                params=self.settings.params(),
                llm="local" if self.settings.llm == "local" else None,
                edited=edit_summary(entries),
            ),
            classes=entries,
            selection=self.previous.selection if chosen and self.previous else None,
        )

    def stale_reasons(self) -> list[str]:
        """Why the previous file does not match this plan; empty when it is up to date."""
        if self.previous is None:
            return ["no descriptions file yet"]
        reasons = []
        for job in self.jobs:
            if job.previous is None:
                reasons.append(f"{job.name}: no descriptions")
            elif not job.up_to_date and not job.edited:
                reasons.append(
                    f"{job.name}: stale (its path, siblings, templates, model or parameters "
                    "changed)"
                )
            else:
                problems = self.settings.rules.problems(job.previous.answer)
                problems += self.repeated_across_classes.get(job.fine.label, [])
                edit = job.previous.edit_problem()
                problems += [edit] if edit else []
                if self.previous.selection is not None and job.previous.candidates is None:
                    problems.append(
                        "answered after the choice on val: run intclip-train "
                        "select-descriptions again"
                    )
                reasons += [f"{job.name}: {p}" for p in problems]
        known = {job.fine.label for job in self.jobs}
        reasons += [
            f"class {entry.label} '{entry.id}': not in the taxonomy"
            for entry in self.previous.classes
            if entry.label not in known
        ]
        if not reasons and self.document({}) != self.previous:
            reasons.append("file header (taxonomy hash, generator or parameters) is out of date")
        return reasons


def _entry(job: ClassJob, descriptions: list[str]) -> ClassDescriptions:
    return ClassDescriptions(
        label=job.fine.label,
        id=job.fine.id,
        path=list(job.fine.path),
        descriptions=descriptions,
        inputs_sha256=job.inputs_sha256,
        answer_sha256=descriptions_sha256(descriptions),
    )


def plan_build(
    taxonomy: Taxonomy,
    templates: PromptTemplates,
    settings: BuildSettings,
    previous: DescriptionsFile | None = None,
    only: Sequence[str] = (),
    refresh: bool = False,
) -> BuildPlan:
    """Render every request and match it against the previous file; sends nothing."""
    selected = _select(taxonomy, only)
    rules = settings.rules
    schema = answer_model(settings.request_rules).model_json_schema()
    kept = previous.by_label() if previous is not None else {}
    jobs = []
    for fine in taxonomy.classes:
        messages = templates.render(
            {
                "class_name": fine.name,
                "path": " > ".join(fine.path),
                "siblings": "; ".join(fine.siblings) or "none",
                "num_descriptions": str(rules.num_descriptions),
                "min_words": str(rules.min_words),
                "max_words": str(rules.max_words),
            }
        )
        inputs = {
            "model": settings.model,
            "messages": messages,
            "params": settings.params(),
            "schema": schema,
        }
        jobs.append(
            ClassJob(
                fine=fine,
                messages=messages,
                inputs_sha256=sha256_json(inputs),
                previous=kept.get(fine.label),
                selected=fine.label in selected,
            )
        )
    return BuildPlan(taxonomy, templates, settings, tuple(jobs), previous, refresh)


def _select(taxonomy: Taxonomy, only: Sequence[str]) -> set[int]:
    """Labels named by `--only` (a fine id, or any inner id for all classes below it)."""
    if not only:
        return {c.label for c in taxonomy.classes}
    labels: set[int] = set()
    for node_id in only:
        leaves = taxonomy.leaves_under(node_id)
        if not leaves:
            raise UserError(f"--only {node_id}: no such node in {taxonomy.source}", EXIT_BAD_INPUT)
        labels.update(c.label for c in leaves)
    return labels


def _texts(answer: Any) -> list[str]:
    return [description.text for description in answer.descriptions]


def _answer_check(
    rules: DescriptionRules,
    distinct: DistinctAcrossClasses,
    class_id: str,
    earlier: Sequence[str] = (),
) -> Callable[[Any], None]:
    """The rules every answer for `class_id` must pass, none of its texts repeating one of the
    class's `earlier` ones; a passing answer claims its sentences."""
    seen = {normalised(text) for text in earlier}

    def check(answer: Any) -> None:
        texts = _texts(answer)
        rules.check(texts)
        repeated = [repr(text) for text in texts if normalised(text) in seen]
        if repeated:
            raise ValueError(
                f"{', '.join(repeated)} repeat(s) an earlier description of this class; "
                "write a different one"
            )
        distinct.claim(class_id, texts)

    return check


Fetch = Callable[[list[dict[str, str]], type[BaseModel], Callable[[Any], None]], Any]
"""`client.ask`, or `_cache_only(client)`: the answer to one request, or None."""


def _cache_only(client: LLMClient) -> Fetch:
    """`client.cached` as an answer like `client.ask`'s, sending nothing."""

    def fetch(messages: list[dict[str, str]], model: type[BaseModel], check: Callable) -> Any:
        value = client.cached(messages, model, check)
        return None if value is None else LLMAnswer(value=value, from_cache=True, requests=0)

    return fetch


def _class_answers(
    job: ClassJob, settings: BuildSettings, distinct: DistinctAcrossClasses, fetch: Fetch
) -> list[LLMAnswer] | None:
    """The answers that make up a class's descriptions, in order: one request, or one per
    description (`one_at_a_time`), each checked against the rules and the class's earlier
    descriptions; None as soon as `fetch` has none."""
    rules = settings.request_rules
    if not settings.one_at_a_time:
        answer = fetch(
            job.messages, answer_model(rules), _answer_check(rules, distinct, job.fine.id)
        )
        return None if answer is None else [answer]
    count, answers, texts = settings.rules.num_descriptions, [], []
    for number in range(1, count + 1):
        check = _answer_check(rules, distinct, job.fine.id, texts)
        answer = fetch(job.one_description(number, count), answer_model(rules), check)
        if answer is None:
            return None
        answers.append(answer)
        texts += _texts(answer.value)
    return answers


def cached_labels(plan: BuildPlan, client: LLMClient) -> set[int]:
    """Labels among `plan.to_send` that the LLM cache answers, found without sending anything."""
    distinct = DistinctAcrossClasses(plan.kept_entries())
    return {
        job.fine.label
        for job in plan.to_send
        if _class_answers(job, plan.settings, distinct, _cache_only(client)) is not None
    }


def run_build(
    plan: BuildPlan,
    client: LLMClient,
    concurrency: int = 4,
    on_outcome: Callable[[ClassJob, Outcome], None] = lambda job, outcome: None,
) -> DescriptionsFile:
    """Ask for every class in `plan.to_send`, `concurrency` at a time; return the new file.

    A configuration error (bad key, unknown model, no quota) stops every later request. An
    invalid answer fails its class only: the others still finish and land in the LLM cache, so a
    rerun asks only for the failed ones. Any failure raises, and nothing is returned to be written.
    """
    distinct = DistinctAcrossClasses(plan.kept_entries())
    answers: dict[int, list[str]] = {}
    failed: list[tuple[ClassJob, UserError]] = []
    fatal: list[UserError] = []
    stop = threading.Event()

    def ask(job: ClassJob) -> None:
        if stop.is_set():
            return
        try:
            replies = _class_answers(job, plan.settings, distinct, client.ask)
        except LLMError as err:
            on_outcome(job, "failed")
            error = UserError(f"{job.name}: {err}", err.exit_code)
            if err.exit_code == EXIT_LLM_FAILURE:
                failed.append((job, error))
            else:
                fatal.append(error)
                stop.set()
            return
        assert replies is not None  # `client.ask` answers or raises
        on_outcome(job, "cached" if all(reply.from_cache for reply in replies) else "sent")
        answers[job.fine.label] = [text for reply in replies for text in _texts(reply.value)]

    sending = {job.fine.label for job in plan.to_send}
    for job in plan.jobs:
        if job.selected and job.fine.label not in sending:
            on_outcome(job, "edited" if job.edited else "kept")
    if plan.to_send:
        threading.Thread(target=_load_checks, args=(client,), name="checks", daemon=True).start()
    _run_cancellable(ask, plan.to_send, concurrency, stop, client)
    if fatal:
        raise fatal[0]
    if failed:
        failed.sort(key=lambda item: item[0].fine.label)
        names = ", ".join(job.name for job, _ in failed)
        raise UserError(
            f"{len(failed)} class(es) failed after all attempts ({names}); last error: "
            f"{failed[-1][1]}",
            EXIT_LLM_FAILURE,
        )
    return plan.document(answers)


def _load_checks(client: LLMClient) -> None:
    """Load CLIP's tokenizer, which checks every answer, while the first requests wait on the
    server. Loaded before them it would delay them (the CPU is busy importing openai); loaded by
    the first answer it would hold up every answer of that round. A failure to load is reported
    by the first check, not here."""
    if client.wait_for_a_request(LOAD_CHECKS_WAIT_S):
        with contextlib.suppress(Exception):
            clip_tokenizer()


def _run_cancellable(
    work: Callable[[ClassJob], None],
    jobs: Sequence[ClassJob],
    concurrency: int,
    stop: threading.Event,
    client: LLMClient,
) -> None:
    """`work` on every job from `concurrency` daemon threads.

    On Ctrl-C or SIGTERM (an exception in the main thread) the client is cancelled and the
    threads are not waited for: a request in flight cannot hold the build up to its timeout and
    retries, and a daemon thread ends with the process. A bug in a worker is raised here.
    """
    pending: queue.SimpleQueue[ClassJob] = queue.SimpleQueue()
    for job in jobs:
        pending.put(job)
    crashed: list[BaseException] = []

    def worker() -> None:
        while not stop.is_set():
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            try:
                work(job)
            except BaseException as err:
                crashed.append(err)
                stop.set()

    threads = [
        threading.Thread(target=worker, name=f"build-{n}", daemon=True)
        for n in range(max(1, min(concurrency, len(jobs))))
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException:
        stop.set()
        client.cancel()
        raise
    if crashed:
        raise crashed[0]


def revise_flagged(
    plan: BuildPlan,
    document: DescriptionsFile,
    flagged: Sequence[ClassReview],
    client: LLMClient,
) -> DescriptionsFile:
    """Ask once more for each flagged class, naming the class it was confused with.

    The model sees its own descriptions and the review's finding; the request is cached like
    any other, and the entry remembers the revision, so a rerun asks nothing again.
    """
    rules = plan.settings.rules
    entries = document.by_label()
    by_id = {entry.id: entry for entry in document.classes}
    jobs = {job.fine.label: job for job in plan.jobs}
    for review in flagged:
        entry, other = entries[review.label], by_id[review.nearest_other]
        if entry.revised_for is not None or entry.edited is not None or review.label not in jobs:
            continue
        previous = {"descriptions": [{"text": text} for text in entry.answer]}
        feedback = REVISION_TEMPLATE.format(
            other=other.path[-1],
            other_path=" > ".join(other.path),
            name=entry.path[-1],
            count=plan.settings.rules.num_descriptions,
        )
        messages = [
            *jobs[review.label].messages,
            {"role": "assistant", "content": json.dumps(previous)},
            {"role": "user", "content": feedback},
        ]
        others = DistinctAcrossClasses(e for k, e in entries.items() if k != review.label)
        try:
            answer = client.ask(
                messages, answer_model(rules), _answer_check(rules, others, entry.id)
            )
        except LLMError as err:
            raise UserError(f"{jobs[review.label].name}: revision: {err}", err.exit_code) from err
        texts = _texts(answer.value)
        entries[review.label] = entry.model_copy(
            update={
                "descriptions": texts,
                "answer_sha256": descriptions_sha256(texts),
                "revised_for": other.id,
                "candidates": None,
            }
        )
    return document.model_copy(update={"classes": [entries[k] for k in sorted(entries)]})
