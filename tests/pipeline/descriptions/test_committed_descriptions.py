"""The committed Intentonomy descriptions are current, valid and reviewed: what CI checks."""

from __future__ import annotations

import json

from pipeline.common.files import sha256_file
from pipeline.descriptions.format import DescriptionRules, read_descriptions
from testkit.paths import ROOT

TAXONOMY = ROOT / "prompts" / "intentonomy.yaml"
DESCRIPTIONS = ROOT / "prompts" / "intentonomy.descriptions.json"
REVIEW = ROOT / "prompts" / "intentonomy.review.json"


def test_build_check_passes_on_the_committed_file(prompts_cli):
    code, out, err = prompts_cli("build", "--taxonomy", TAXONOMY, "--check")
    assert code == 0, err
    assert "up to date (28 classes)" in out


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


def test_review_report_covers_the_committed_file():
    report = json.loads(REVIEW.read_text())
    document = read_descriptions(DESCRIPTIONS)
    assert [c["id"] for c in report["classes"]] == [e.id for e in document.classes]
    assert report["descriptions_sha256"] == sha256_file(DESCRIPTIONS)
