"""The descriptions format: its rules, its stable writer and its reader's error messages."""

from __future__ import annotations

import json

import pytest

from pipeline.clip.tokens import clip_token_count
from pipeline.common.errors import UserError
from pipeline.descriptions.format import (
    ClassDescriptions,
    DescriptionRules,
    DescriptionsFile,
    GeneratorInfo,
    TaxonomyRef,
    answer_model,
    read_descriptions,
    write_descriptions,
)

RULES = DescriptionRules(num_descriptions=2, min_words=3, max_words=8)
SHA = "0" * 64


def document() -> DescriptionsFile:
    return DescriptionsFile(
        taxonomy=TaxonomyRef(name="toy", sha256=SHA),
        generator=GeneratorInfo(model="m", template_sha256=SHA, params={"seed": 0}),
        classes=[
            ClassDescriptions(
                label=0,
                id="cafés",
                path=["Lieux", "Cafés"],
                descriptions=["Un café en terrasse, l'été.", "Two friends."],
                inputs_sha256=SHA,
            )
        ],
    )


def test_valid_texts_pass():
    RULES.check(["A dog runs on sand.", "Two cats sleep together."])


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["A dog runs on sand."], "expected exactly 2 descriptions, got 1"),
        (["A dog runs on sand.", "   "], "description 2: is empty"),
        (["A dog runs.", "Too short"], "description 2: has 2 words, needs 3 to 8"),
        (["A dog runs.", "one two three four five six seven eight nine"], "has 9 words"),
        (["A dog runs.", "A cat\nsleeps here."], "description 2: spans several lines"),
        (["A dog runs.", "A cat\x07 sleeps here."], "contains control characters"),
        (["A dog runs.", "a  DOG runs."], "description 2 repeats an earlier one"),
    ],
)
def test_each_rule_is_named(texts, expected):
    with pytest.raises(ValueError, match=expected):
        RULES.check(texts)


def test_clip_token_limit_counts_start_and_end_tokens():
    rules = DescriptionRules(num_descriptions=1, min_words=1, max_words=200)
    # "A", "a" and "." are one token each: "A", 73 words "a", "." and start and end make 77
    fitting = "A" + " a" * 73 + "."
    assert clip_token_count(fitting) == 77
    rules.check([fitting])
    with pytest.raises(ValueError, match="has 78 CLIP tokens with start and end, the limit is 77"):
        rules.check(["A" + " a" * 74 + "."])


def test_few_words_can_still_exceed_the_token_limit():
    rules = DescriptionRules(num_descriptions=1, min_words=1, max_words=25)
    text = "Supercalifragilisticexpialidocious-antidisestablishmentarianism " * 5
    assert len(text.split()) == 5
    with pytest.raises(ValueError, match="CLIP tokens"):
        rules.check([text.strip()])


def test_descriptions_are_plain_sentences():
    with pytest.raises(ValueError, match="is not one plain sentence"):
        RULES.check(["A dog runs.", "a cat sleeps here."])
    with pytest.raises(ValueError, match="is not one plain sentence"):
        RULES.check(["A dog runs.", "A cat sleeps here"])
    RULES.check(["A well-fed dog's bowl, 2 bones.", "Three cats sleep."])
    with pytest.raises(ValueError, match="of at most 30 characters"):
        RULES.check(["A dog runs.", "A " + "n" * 31 + " cat."])


def test_rules_reject_inverted_word_bounds():
    with pytest.raises(ValueError, match="min_words 9 exceeds max_words 3"):
        DescriptionRules(min_words=9, max_words=3)


def test_answer_model_fixes_the_count_in_its_schema():
    rules = DescriptionRules(num_descriptions=4, min_words=3, max_words=8)
    schema = answer_model(rules).model_json_schema()
    array = schema["properties"]["descriptions"]
    assert array["minItems"] == array["maxItems"] == 4
    assert answer_model(rules) is answer_model(DescriptionRules(**rules.model_dump()))
    text = schema["$defs"]["Description"]["properties"]["text"]
    assert text["pattern"] == "^[A-Z][A-Za-z0-9,'-]{0,29}( [A-Za-z0-9,'-]{1,30}){2,7}[.]$"


def test_written_file_is_stable_and_only_rewritten_on_change(tmp_path):
    path = tmp_path / "d.json"
    assert write_descriptions(path, document())
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "l'été" in text and "\\u" not in text
    assert text.index('"classes"') < text.index('"generator"') < text.index('"schema_version"')
    assert '\n  "classes": [\n' in text
    mtime = path.stat().st_mtime_ns
    assert not write_descriptions(path, document())
    assert path.stat().st_mtime_ns == mtime
    assert read_descriptions(path) == document()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(schema_version=2), "schema_version: Input should be 1"),
        (lambda d: d["classes"][0].pop("inputs_sha256"), "class 0 'cafés' inputs_sha256: Field"),
        (lambda d: d["classes"].append(dict(d["classes"][0])), "sorted by label, each label once"),
        (lambda d: d.update(colour="red"), "colour: Extra inputs are not permitted"),
    ],
)
def test_reader_names_the_problem(tmp_path, mutate, expected):
    data = document().model_dump(mode="json")
    mutate(data)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=expected) as info:
        read_descriptions(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_reader_reports_json_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{\n  "schema_version": 1,\n  oops\n}\n')
    with pytest.raises(UserError, match=rf"^{path}:3: invalid JSON"):
        read_descriptions(path)
    with pytest.raises(UserError, match="descriptions file not found"):
        read_descriptions(tmp_path / "missing.json")
