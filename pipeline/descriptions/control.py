"""Control descriptions: what the LLM's words are measured against.

WaffleCLIP (Roth et al., ICCV 2023) found that CLIP gains about as much from a class name
followed by random words as from an LLM's descriptions. So a claim that the descriptions help
needs that control beside it: a file of the same shape (same classes, as many descriptions per
class, each as many words long as the one it stands for) whose descriptions are the class name,
a comma, then random words, drawn from CLIP's own vocabulary with a seed. It passes the same
rules as the file it copies, so `embed`, `score-descriptions` and training take it as they are.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from pipeline.clip.tokens import vocabulary_words
from pipeline.common.errors import UserError
from pipeline.common.files import sha256_json
from pipeline.descriptions.format import (
    ClassDescriptions,
    Control,
    ControlKind,
    DescriptionRules,
    DescriptionsFile,
    GeneratorInfo,
    normalised,
)


def random_words_control(
    source: DescriptionsFile, seed: int, source_sha256: str
) -> DescriptionsFile:
    """The random-words control of `source`: per class, per description, the class name and
    then random words, as many words in all as that description (at least one random word).
    A problem is raised without the file's name, which the caller adds."""
    if source.control is not None:
        raise UserError(f"is itself a {source.control.kind} control")
    if not source.classes:
        raise UserError("has no classes")
    # the shape of what is embedded: after a choice on val, the kept descriptions
    params = {**source.generator.params, "num_descriptions": len(source.classes[0].descriptions)}
    rules = DescriptionRules(
        **{k: v for k, v in params.items() if k in DescriptionRules.model_fields}
    )
    words = vocabulary_words()
    entries = []
    for entry in source.classes:
        draw = random.Random(f"{seed}:{entry.label}")
        name = _capitalised(entry.path[-1])
        texts: list[str] = []
        counts = [max(1, len(d.split()) - len(name.split())) for d in entry.descriptions]
        for count in counts:
            text = f"{name}, {' '.join(draw.choice(words) for _ in range(count))}."
            while normalised(text) in map(normalised, texts):  # a repeat breaks the rules
                text = f"{name}, {' '.join(draw.choice(words) for _ in range(count))}."
            texts.append(text)
        problems = rules.problems(texts)
        if problems:
            raise UserError(
                f"class {entry.label} '{entry.id}': its random-words control breaks the file's "
                f"rules ({problems[0]})"
            )
        entries.append(
            ClassDescriptions(
                label=entry.label,
                id=entry.id,
                path=entry.path,
                descriptions=texts,
                inputs_sha256=sha256_json(
                    {"control": "random-words", "seed": seed, "name": name, "words": counts}
                ),
            )
        )
    return DescriptionsFile(
        taxonomy=source.taxonomy,
        generator=GeneratorInfo(
            model="random-words",
            template_sha256=source.generator.template_sha256,
            params=params,
        ),
        classes=entries,
        control=Control(kind="random-words", seed=seed, source_sha256=source_sha256),
    )


def _capitalised(name: str) -> str:
    return name[:1].upper() + name[1:]


CONTROLS: dict[ControlKind, Callable[[DescriptionsFile, int, str], DescriptionsFile]] = {
    "random-words": random_words_control,
}
"""How each control kind is made from a descriptions file, a seed and that file's sha256."""


def control_path(descriptions: Path, kind: ControlKind) -> Path:
    """Where the control of a descriptions file goes: beside it, `<name>.<kind>.descriptions.json`
    for `<name>.descriptions.json` (else `<stem>.<kind>.json`)."""
    name = descriptions.name
    if name.endswith(".descriptions.json"):
        return descriptions.with_name(
            f"{name.removesuffix('.descriptions.json')}.{kind}.descriptions.json"
        )
    return descriptions.with_name(f"{descriptions.stem}.{kind}.json")
