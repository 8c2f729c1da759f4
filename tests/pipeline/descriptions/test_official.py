"""`intclip-prompts import-official`: the official sentences from a stand-in checkout.

Every checkout here is written by `testkit.official` with made-up sentences: the official
repository has no licence, so none of its text is in this project.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.common.files import sha256_file
from pipeline.descriptions.format import read_descriptions
from testkit.official import commit_of, made_up_sentences, write_official_checkout
from testkit.paths import ROOT

TAXONOMY = ROOT / "prompts" / "intentonomy.yaml"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def run_import(prompts_cli, source: Path, out: Path, *args: object) -> tuple[int, str, str]:
    return prompts_cli(
        "import-official", "--from", source, "--taxonomy", TAXONOMY, "--out", out, *args
    )


@needs_git
def test_import_from_a_checkout_keeps_label_order_the_hash_and_the_commit(prompts_cli, tmp_path):
    sentences = made_up_sentences(28)
    checkout = write_official_checkout(tmp_path / "IntCLIP", sentences, commit=True)
    out = tmp_path / "intentonomy.official.descriptions.json"

    code, stdout, err = run_import(prompts_cli, checkout, out)

    assert code == 0, err
    source = checkout / "dataloaders" / "intenton.py"
    document = read_descriptions(out)
    imported = document.generator.imported
    assert imported is not None and imported.repository == "github.com/yan9qu/IntCLIP"
    assert imported.sha256 == sha256_file(source) and imported.file == "dataloaders/intenton.py"
    assert imported.commit == commit_of(checkout) and imported.commit in stdout
    assert [entry.label for entry in document.classes] == list(range(28))
    assert document.classes[10].id == "good_parent"
    # one sentence per class, as the official prompt learner reads it: underscores as spaces
    expected = [[sentence.replace("_", " ")] for sentence in sentences]
    assert [entry.descriptions for entry in document.classes] == expected
    assert document.rule_problems() == []  # embeddable: only CLIP's context applies
    code, stdout, _ = run_import(prompts_cli, checkout, out)
    assert code == 0 and stdout.startswith("unchanged:")


def test_the_default_output_sits_beside_the_taxonomy_and_git_ignores_it(
    prompts_cli, tmp_path, monkeypatch
):
    """`--from FILE` outside a git checkout: no commit, the file's hash all the same."""
    source = write_official_checkout(tmp_path / "copy", made_up_sentences(28))
    (tmp_path / "work" / "prompts").mkdir(parents=True)
    shutil.copy(TAXONOMY, tmp_path / "work" / "prompts")
    monkeypatch.chdir(tmp_path / "work")

    code, stdout, err = prompts_cli(
        "import-official", "--from", source / "dataloaders" / "intenton.py"
    )

    assert code == 0, err
    out = Path("prompts/intentonomy.official.descriptions.json")
    assert f"wrote {out}" in stdout and "no git commit found" in stdout
    generator = json.loads(out.read_text())["generator"]
    assert "commit" not in generator["imported"] and generator["params"] == {}
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "-q", str(out)], check=False, timeout=30
        )
        assert ignored.returncode == 0, "the imported official text must never be committed"


def test_the_source_is_parsed_never_run(prompts_cli, tmp_path):
    checkout = write_official_checkout(tmp_path / "IntCLIP", made_up_sentences(28))
    source = checkout / "dataloaders" / "intenton.py"
    marker = tmp_path / "ran"
    source.write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit(9)\n" + source.read_text()
    )

    code, _, err = run_import(prompts_cli, checkout, tmp_path / "x.official.descriptions.json")

    assert code == 0, err
    assert not marker.exists()


DATALOADER = "dataloaders/intenton.py"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, f"{DATALOADER}: official dataloader not found"),
        ("self.classnames = [\n", f"{DATALOADER}:1: not Python source"),
        ("x = 1\n", f"{DATALOADER}: no `self.classnames = [...]` assignment"),
        (
            "class A:\n    def __init__(self):\n        self.classnames = ['a', 2]\n",
            f"{DATALOADER}:3: self.classnames is not a list of string literals",
        ),
        (
            "class A:\n    def __init__(self):\n        self.classnames = load()\n",
            f"{DATALOADER}:3: self.classnames is not a list of string literals",
        ),
        (
            "class A:\n    def __init__(self):\n        self.classnames = ['a', 'b']\n",
            f"{DATALOADER}:3: self.classnames holds 2 sentences, but taxonomy 'intentonomy'",
        ),
        (
            "class A:\n    def __init__(self):\n        self.classnames = [''] * 1 + ['x']\n",
            f"{DATALOADER}:3: self.classnames is not a list of string literals",
        ),
    ],
)
def test_anything_else_is_one_line_and_exit_2(prompts_cli, tmp_path, content, message):
    checkout = tmp_path / "IntCLIP"
    (checkout / "dataloaders").mkdir(parents=True)
    if content is not None:
        (checkout / DATALOADER).write_text(content)
    out = tmp_path / "x.official.descriptions.json"

    code, stdout, err = run_import(prompts_cli, checkout, out)

    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_an_empty_sentence_names_its_class(prompts_cli, tmp_path):
    sentences = made_up_sentences(28)
    sentences[5] = "   "
    checkout = write_official_checkout(tmp_path / "IntCLIP", sentences)
    code, _, err = run_import(prompts_cli, checkout, tmp_path / "x.official.descriptions.json")
    assert code == 2 and "sentence 5 (for class 'easy_life') is empty" in err


def test_descriptions_that_were_not_imported_are_never_overwritten(prompts_cli, tmp_path):
    checkout = write_official_checkout(tmp_path / "IntCLIP", made_up_sentences(28))
    committed = tmp_path / "intentonomy.descriptions.json"
    shutil.copy(ROOT / "prompts" / "intentonomy.descriptions.json", committed)
    before = committed.read_bytes()

    code, _, err = run_import(prompts_cli, checkout, committed)

    assert code == 2 and "holds descriptions that were not imported" in err
    assert committed.read_bytes() == before


def test_build_leaves_an_imported_file_alone(prompts_cli, tmp_path):
    checkout = write_official_checkout(tmp_path / "IntCLIP", made_up_sentences(28))
    out = tmp_path / "x.official.descriptions.json"
    assert run_import(prompts_cli, checkout, out)[0] == 0
    code, _, err = prompts_cli(
        "build", "--taxonomy", TAXONOMY, "--out", out, "--model", "m", "--check"
    )
    assert code == 2 and "holds sentences imported by intclip-prompts import-official" in err
