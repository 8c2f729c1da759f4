"""The committed Intentonomy descriptions are current, valid and reviewed: what CI checks."""

from __future__ import annotations

import json

import pytest

from pipeline.cli.review import MINILM_NAME
from pipeline.common.files import sha256_file
from pipeline.descriptions.format import DescriptionRules, read_descriptions
from pipeline.descriptions.review import minilm_embedder, minilm_installed, review_descriptions
from testkit.paths import ROOT

TAXONOMY = ROOT / "prompts" / "intentonomy.yaml"
DESCRIPTIONS = ROOT / "prompts" / "intentonomy.descriptions.json"
BASELINE = ROOT / "prompts" / "intentonomy.smollm2.descriptions.json"
REVIEW = ROOT / "prompts" / "intentonomy.review.json"


def test_build_check_passes_on_the_committed_file(prompts_cli):
    code, out, err = prompts_cli("build", "--taxonomy", TAXONOMY, "--check")
    assert code == 0, err
    assert "up to date (28 classes, 28 edited in review)" in out


def test_every_class_follows_the_recorded_rules():
    document = read_descriptions(DESCRIPTIONS)
    params = document.generator.params
    rules = DescriptionRules(
        num_descriptions=params["num_descriptions"],
        min_words=params["min_words"],
        max_words=params["max_words"],
    )
    assert [entry.label for entry in document.classes] == list(range(28))
    for entry in document.classes:
        rules.check(entry.descriptions)


def test_the_file_says_it_was_written_in_review_and_from_what():
    document = read_descriptions(DESCRIPTIONS)
    assert document.generator.edited is not None
    assert document.generator.edited.startswith("28 of 28 classes edited in review")
    baseline = read_descriptions(BASELINE).by_label()
    for entry in document.classes:
        assert entry.edited is not None and entry.edit_problem() is None, entry.id
        assert "prompts/intentonomy.smollm2.descriptions.json" in entry.edited.source
        assert "Intentonomy paper" in entry.edited.source
        replaced = baseline[entry.label]  # the SmolLM2 answer this edit replaced
        assert entry.inputs_sha256 == replaced.inputs_sha256
        assert entry.descriptions != replaced.descriptions


def test_the_smollm2_baseline_is_current_and_its_own(prompts_cli):
    code, out, err = prompts_cli("build", "--taxonomy", TAXONOMY, "--out", BASELINE, "--check")
    assert code == 0, err
    assert "up to date (28 classes)" in out
    document = read_descriptions(BASELINE)
    assert document.generator.model == "SmolLM2-135M-Instruct.Q4_1"
    assert all(entry.edited is None and entry.answer_sha256 for entry in document.classes)


def test_review_report_covers_the_committed_file_and_flags_nothing():
    report = json.loads(REVIEW.read_text())
    document = read_descriptions(DESCRIPTIONS)
    assert [c["id"] for c in report["classes"]] == [e.id for e in document.classes]
    assert report["descriptions_sha256"] == sha256_file(DESCRIPTIONS)
    assert [c["id"] for c in report["classes"] if c["reasons"]] == []


@pytest.mark.slow
@pytest.mark.skipif(not minilm_installed(), reason="needs the review extra")
def test_review_with_the_real_embedder_flags_no_committed_class():
    """What `intclip-prompts review` reports (the CLI's embedder is a stand-in under tests)."""
    report = review_descriptions(read_descriptions(DESCRIPTIONS), minilm_embedder(), MINILM_NAME)
    assert report.flagged == []
    recorded = {c["id"]: c["margin"] for c in json.loads(REVIEW.read_text())["classes"]}
    assert recorded == pytest.approx({c.id: c.margin for c in report.classes}, abs=1e-3)
