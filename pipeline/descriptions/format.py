"""The descriptions JSON: one definition of the format, its rules, and its reader and writer.

The file is reviewed in git diffs and doubles as a lock: each class carries the hash of
everything its request depended on, so an unchanged class is never asked for again.

Two later steps extend it, both optional (a file without them reads as before):
- a choice on val (`intclip-train select-descriptions`): each class keeps every description the
  LLM answered as `candidates`, with its val AP and whether it was kept, and `descriptions`
  holds the kept ones; the file's `selection` says how they were chosen (val only, the image
  features' cache key, how many kept);
- a control (`intclip-prompts build --control random-words`): a file of the same shape whose
  descriptions are each class's name followed by random words; `control` says so.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.clip.tokens import clip_token_count
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text, sha256_json, stable_json
from pipeline.common.safe_load import load_json, read_text_file

SCHEMA_VERSION = 1
CLIP_CONTEXT_LENGTH = 77
MAX_WORD_CHARS = 30  # a longer "word" is a model running on, not English

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class DescriptionRules(BaseModel):
    """What every description must satisfy; sent to the LLM and checked on its answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_descriptions: int = Field(default=5, ge=1, le=64)
    min_words: int = Field(default=5, ge=1)
    max_words: int = Field(default=25, ge=1)
    context_length: int = Field(default=CLIP_CONTEXT_LENGTH, ge=3)

    @model_validator(mode="after")
    def _words_ordered(self) -> DescriptionRules:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} exceeds max_words {self.max_words}")
        return self

    @property
    def sentence_pattern(self) -> str:
        """A plain sentence of `min_words`..`max_words` words, as a regex: sent in the response
        schema, where grammar-constrained servers (llama.cpp) enforce it while generating."""
        char, rest = "[A-Za-z0-9,'-]", MAX_WORD_CHARS - 1
        repeat = f"{{{self.min_words - 1},{self.max_words - 1}}}"
        return f"^[A-Z]{char}{{0,{rest}}}( {char}{{1,{MAX_WORD_CHARS}}}){repeat}[.]$"

    def problems(self, texts: list[str]) -> list[str]:
        """Every rule the texts break, as short sentences the LLM can act on."""
        found = []
        if len(texts) != self.num_descriptions:
            found.append(f"expected exactly {self.num_descriptions} descriptions, got {len(texts)}")
        seen: set[str] = set()
        for number, text in enumerate(texts, start=1):
            found += [f"description {number}: {p}" for p in self._text_problems(text)]
            key = normalised(text)
            if key in seen:
                found.append(f"description {number} repeats an earlier one: {text!r}")
            seen.add(key)
        return found

    def check(self, texts: list[str]) -> None:
        """Raise `ValueError` naming what is wrong; nothing is ever truncated or fixed silently."""
        found = self.problems(texts)
        if found:
            raise ValueError("; ".join(found))

    def _text_problems(self, text: str) -> list[str]:
        if not text.strip():
            return ["is empty"]
        if any(c in "\n\r\u2028\u2029" for c in text):
            return [f"spans several lines: {text!r}"]
        if any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") for c in text):
            return [f"contains control characters: {text!r}"]
        found = []
        words = len(text.split())
        if not self.min_words <= words <= self.max_words:
            found.append(f"has {words} words, needs {self.min_words} to {self.max_words}: {text!r}")
        if not found and not re.fullmatch(self.sentence_pattern, text):
            found.append(
                "is not one plain sentence (a capital first letter, then words of letters, "
                f"digits, commas, apostrophes or hyphens of at most {MAX_WORD_CHARS} characters, "
                "one space apart, one final period): "
                f"{text!r}"
            )
        too_long = token_problem(text, self.context_length)
        return found + ([too_long] if too_long else [])


def token_problem(text: str, context_length: int = CLIP_CONTEXT_LENGTH) -> str | None:
    """Whether `text` overflows CLIP's text context, start and end tokens included."""
    tokens = clip_token_count(text)
    if tokens <= context_length:
        return None
    return f"has {tokens} CLIP tokens with start and end, the limit is {context_length}: {text!r}"


def normalised(text: str) -> str:
    """`text` without case, punctuation or spacing differences: two descriptions that are equal
    after this say the same thing to CLIP's text tower, near enough."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


@cache
def answer_model(rules: DescriptionRules) -> type[BaseModel]:
    """The LLM's response model: a list of objects, its length and the sentence pattern in the
    JSON schema. The pattern is not validated here: `rules.check` names each problem better."""
    description = create_model(
        "Description",
        text=(str, Field(json_schema_extra={"pattern": rules.sentence_pattern})),
    )
    count = rules.num_descriptions
    return create_model(
        "DescriptionsAnswer",
        descriptions=(
            Annotated[list[description], Field(min_length=count, max_length=count)],
            ...,
        ),
    )


def descriptions_sha256(texts: list[str]) -> str:
    """The hash that ties a class's texts to who wrote them: the LLM (`answer_sha256`) or a
    reviewer (`edited.sha256`)."""
    return sha256_json(texts)


class EditMark(BaseModel):
    """A reviewer's edit of a class's descriptions, which `build` keeps whatever changes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sha256: Sha256
    """`descriptions_sha256` of the texts as the reviewer left them (every candidate, in a
    class chosen on val, so that choosing among them keeps the mark): a later change without
    a new mark fails `build --check`."""
    source: str = Field(alias="from", min_length=1)
    """What the texts were written from (the answer they replace, the references read)."""


class Candidate(BaseModel):
    """One description the LLM answered, as the choice on val saw it."""

    model_config = ConfigDict(extra="forbid")

    text: str
    val_ap: float | None = None
    """Zero-shot AP on val, in percent, of this description alone for its class; absent when
    val has no positive of the class."""
    kept: bool


class ClassDescriptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    label: int = Field(ge=0)
    id: str
    path: list[str] = Field(min_length=1)
    descriptions: list[str] = Field(min_length=1)
    inputs_sha256: Sha256
    answer_sha256: Sha256 | None = None
    """`descriptions_sha256` of the LLM's answer, written by `build`: texts that no longer
    match it were changed without an edit mark (absent in files built before it was recorded)."""
    edited: EditMark | None = None
    """Set by `intclip-prompts mark-edited`: the texts are a reviewer's, kept by every build."""
    revised_for: str | None = None
    """Set by `build --review`: the class these descriptions were once confused with, and
    rewritten to avoid; a class is revised once."""
    candidates: list[Candidate] | None = None
    """Set by the choice on val: every description the LLM answered, in its order; then
    `descriptions` holds the kept ones, in the same order."""

    @property
    def answer(self) -> list[str]:
        """What the LLM answered for the class: its candidates once chosen from, else its
        descriptions. The rules of the request apply to these."""
        return [c.text for c in self.candidates] if self.candidates else self.descriptions

    @model_validator(mode="after")
    def _kept_candidates_are_the_descriptions(self) -> ClassDescriptions:
        if self.candidates is not None:
            kept = [c.text for c in self.candidates if c.kept]
            if kept != self.descriptions:
                raise ValueError(
                    "descriptions must be the kept candidates, in their order (edit the "
                    "candidates' kept flags, or choose again with intclip-train "
                    "select-descriptions)"
                )
        return self

    def edit_problem(self) -> str | None:
        """Why these texts are not the ones their author left, if they are not."""
        answered = descriptions_sha256(self.answer)  # the candidates, once chosen from on val
        if self.edited is not None and self.edited.sha256 != answered:
            return "its descriptions changed after they were marked edited: mark them again"
        if self.edited is None and self.answer_sha256 not in (None, answered):
            return (
                "its descriptions differ from the LLM's answer and carry no edit mark: mark the "
                "edit (intclip-prompts mark-edited), or rebuild the class"
            )
        return None


class TaxonomyRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    sha256: Sha256


LLMKind = Literal["openai", "local"]


class ImportedSource(BaseModel):
    """Where `intclip-prompts import-official` read the class sentences."""

    model_config = ConfigDict(extra="forbid")

    repository: str
    file: str
    sha256: Sha256
    """sha256 of the source file as it was read."""
    commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")] | None = None
    """The checkout's commit, when the file was read from a git checkout of the repository."""


class GeneratorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    template_sha256: Sha256 | None = None
    """Hash of the prompt templates; absent for imported sentences, which no template asked."""
    params: dict[str, Any]
    llm: Literal["local"] | None = None
    """`local` when `build --llm local` wrote the file, so a later build asks the same kind of
    server; absent (older files too) for any OpenAI-compatible server."""
    edited: str | None = None
    """How many classes reviewers edited (each class's `edited` says from what): the texts of
    those classes are not the model's."""
    imported: ImportedSource | None = None
    """Set by `import-official`: the file holds sentences read from another codebase, not an
    LLM's answers, and `build` leaves it alone."""


class Selection(BaseModel):
    """How the kept descriptions were chosen: on val alone, by each one's zero-shot AP."""

    model_config = ConfigDict(extra="forbid")

    split: Literal["val"] = "val"
    """The split the choice read: always val, never test."""
    keep: int = Field(ge=1)
    """Descriptions kept per class: those with the best val AP, ties to the earlier."""
    features_key: Sha256
    """The cache key of the val image features it scored (`intclip-train features`)."""
    images: int = Field(ge=1)
    """How many val images were scored."""
    clip: str
    """The CLIP that embedded the texts and the images: its model and weights."""


ControlKind = Literal["random-words"]


class Control(BaseModel):
    """What a control file stands for: random words in place of the LLM's (WaffleCLIP)."""

    model_config = ConfigDict(extra="forbid")

    kind: ControlKind
    seed: int
    """Seeds the random words: the same seed and source give the same file."""
    source_sha256: Sha256
    """sha256 of the descriptions file whose shape (classes, word counts) it copies."""


class DescriptionsFile(BaseModel):
    """`{schema_version, taxonomy, generator, classes}`; classes sorted by label; `selection`
    once chosen on val, `control` for a control file."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    taxonomy: TaxonomyRef
    generator: GeneratorInfo
    classes: list[ClassDescriptions]
    selection: Selection | None = None
    control: Control | None = None

    @field_validator("classes")
    @classmethod
    def _sorted_unique(cls, classes: list[ClassDescriptions]) -> list[ClassDescriptions]:
        labels = [c.label for c in classes]
        if labels != sorted(set(labels)):
            raise ValueError("classes must be sorted by label, each label once")
        first_label: dict[str, int] = {}
        for entry in classes:
            first = first_label.setdefault(entry.id, entry.label)
            if first != entry.label:
                raise ValueError(
                    f"class id {entry.id!r} is given to labels {first} and {entry.label}; "
                    "each class id once"
                )
        return classes

    @model_validator(mode="after")
    def _candidates_need_their_selection(self) -> DescriptionsFile:
        chosen = [entry for entry in self.classes if entry.candidates is not None]
        if chosen and self.selection is None:
            raise ValueError("classes carry candidates but the file has no selection block")
        for entry in chosen:
            kept = len(entry.descriptions)
            if self.selection is not None and kept != min(self.selection.keep, len(entry.answer)):
                raise ValueError(
                    f"class {entry.label} '{entry.id}' keeps {kept} descriptions, the "
                    f"selection says {self.selection.keep}"
                )
        return self

    def by_label(self) -> dict[int, ClassDescriptions]:
        return {entry.label: entry for entry in self.classes}

    def recorded_rules(self) -> DescriptionRules:
        """The rules the file was built under: its recorded parameters, defaults for the rest."""
        fields = DescriptionRules.model_fields.keys() & self.generator.params.keys()
        try:
            return DescriptionRules(**{key: self.generator.params[key] for key in fields})
        except ValidationError as err:
            raise UserError(f"generator.params: {describe_first_error(err)}") from None

    def rule_problems(self) -> list[str]:
        """Every rule a class breaks, as `build --check` finds them (hand edits included); in
        a file chosen on val, also every class answered again since and not chosen from.
        Imported sentences were never asked under these rules: they must only fit CLIP."""
        if self.generator.imported is not None:
            return [
                f"class {entry.label} '{entry.id}': {problem}"
                for entry in self.classes
                for problem in context_problems(entry.descriptions)
            ]
        rules = self.recorded_rules()
        found = [
            f"class {entry.label} '{entry.id}': {problem}"
            for entry in self.classes
            for problem in rules.problems(entry.answer)
        ]
        if self.selection is not None:
            found += [
                f"class {entry.label} '{entry.id}': answered again after the choice on val, "
                f"so it keeps all {len(entry.descriptions)} descriptions: run intclip-train "
                "select-descriptions again"
                for entry in self.classes
                if entry.candidates is None
            ]
        return found

    def edit_problems(self) -> list[str]:
        """Classes whose texts changed since the LLM or a reviewer left them."""
        return [
            f"class {entry.label} '{entry.id}': {problem}"
            for entry in self.classes
            if (problem := entry.edit_problem()) is not None
        ]


def edit_summary(classes: list[ClassDescriptions]) -> str | None:
    """`generator.edited`: how many classes are a reviewer's text, or None when none is."""
    edited = sum(entry.edited is not None for entry in classes)
    if not edited:
        return None
    return (
        f"{edited} of {len(classes)} classes edited in review (see each class's edited.from); "
        "their descriptions are not the model's answers"
    )


def context_problems(texts: list[str]) -> list[str]:
    """Texts that do not fit CLIP's text context with start and end tokens."""
    return [
        f"description {number} {problem}"
        for number, text in enumerate(texts, start=1)
        if (problem := token_problem(text)) is not None
    ]


def read_descriptions(path: Path) -> DescriptionsFile:
    """Load and validate a descriptions file; problems name the file and the class."""
    path = Path(path)
    data = load_json(read_text_file(path, "descriptions file"), path)
    try:
        return DescriptionsFile.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = _describe_location(data, first["loc"])
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        raise UserError(f"{path}: {where}{first['msg']}{more}") from None


def describe_first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    return f"{'.'.join(str(k) for k in first['loc'])}: {first['msg']}"


def _describe_location(data: Any, loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "classes" and isinstance(loc[1], int):
        try:
            entry = data["classes"][loc[1]]
            name = f"class {entry.get('label')} '{entry.get('id')}'"
        except (KeyError, IndexError, TypeError, AttributeError):
            name = f"classes[{loc[1]}]"
        rest = ".".join(str(k) for k in loc[2:])
        return f"{name}{' ' + rest if rest else ''}: "
    return f"{'.'.join(str(k) for k in loc)}: " if loc else ""


def write_descriptions(path: Path, document: DescriptionsFile) -> bool:
    """Write stable JSON atomically, only when the content changed; return whether it did."""
    path = Path(path)
    text = stable_json(document.model_dump(mode="json", exclude_none=True, by_alias=True))
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True
