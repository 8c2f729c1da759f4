"""The demo's stand-in LLM and its refusal of an unusable output path; `make demo` itself runs in
tests/project/test_readme.py, as the README shows it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def built_by_the_stand_in(tmp_path, prompts_cli, monkeypatch, *args: object) -> list[dict]:
    """`intclip-prompts build ARGS` of the demo's taxonomy against its stand-in LLM: the
    classes written."""
    from intclip.cli.demo import demo_taxonomy, start_template_llm

    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    taxonomy = tmp_path / "squares.yaml"
    taxonomy.write_text(demo_taxonomy())
    server = start_template_llm()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        code, _, err = prompts_cli(
            "build", "--taxonomy", taxonomy, "--model", "demo", "--base-url", url, *args
        )
    finally:
        server.shutdown()
    assert code == 0, err
    return json.loads(taxonomy.with_name("squares.descriptions.json").read_text())["classes"]


def test_the_stand_in_llm_describes_the_class_asked_about(tmp_path, prompts_cli, monkeypatch):
    """The prompt names the siblings too: each class must get its own colour, no sibling's."""
    from intclip.cli.demo import COLOURS

    classes = built_by_the_stand_in(tmp_path, prompts_cli, monkeypatch, "--num-descriptions", 3)
    for entry, colour in zip(classes, COLOURS, strict=True):
        others = [c for c in COLOURS if c != colour]
        for text in entry["descriptions"]:
            words = text.rstrip(".").split()
            assert colour in words and not any(other in words for other in others), text


@pytest.mark.parametrize("where", ["onto a file", "under a file", "read-only"])
def test_a_demo_folder_it_cannot_write_is_one_line(tmp_path, where):
    import os
    import shutil

    from testkit.disk import snapshot

    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    target = {"onto a file": blocker, "under a file": blocker / "demo",
              "read-only": locked / "demo"}[where]  # fmt: skip
    command = [sys.executable, "-m", "intclip.cli.demo", str(target)]
    if where == "read-only" and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("as root this needs util-linux's setpriv")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
    before = snapshot(tmp_path)
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    cause = "Permission denied" if where == "read-only" else "Not a directory"
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: {target}: cannot write the demo there ({cause})\n"
    assert snapshot(tmp_path) == before


def test_the_stand_in_llm_answers_as_many_candidates_as_asked(tmp_path, prompts_cli, monkeypatch):
    from intclip.cli.demo import CANDIDATES

    classes = built_by_the_stand_in(tmp_path, prompts_cli, monkeypatch, "--candidates", CANDIDATES)
    assert all(len(entry["descriptions"]) == CANDIDATES for entry in classes)
