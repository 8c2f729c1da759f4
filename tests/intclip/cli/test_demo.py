"""The demo's stand-in LLM; `make demo` itself runs in tests/project/test_readme.py, as the
README shows it."""

from __future__ import annotations

import json


def test_the_stand_in_llm_describes_the_class_asked_about(tmp_path, prompts_cli, monkeypatch):
    """The prompt names the siblings too: each class must get its own colour, no sibling's."""
    from intclip.cli.demo import COLOURS, demo_taxonomy, start_template_llm

    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    taxonomy = tmp_path / "squares.yaml"
    taxonomy.write_text(demo_taxonomy())
    server = start_template_llm()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        code, _, err = prompts_cli(
            "build", "--taxonomy", taxonomy, "--model", "demo", "--num-descriptions", 3,
            "--base-url", url,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert code == 0, err
    document = json.loads(taxonomy.with_name("squares.descriptions.json").read_text())
    for entry, colour in zip(document["classes"], COLOURS, strict=True):
        others = [c for c in COLOURS if c != colour]
        for text in entry["descriptions"]:
            words = text.rstrip(".").split()
            assert colour in words and not any(other in words for other in others), text


def test_the_stand_in_llm_answers_as_many_candidates_as_asked(tmp_path, prompts_cli, monkeypatch):
    from intclip.cli.demo import CANDIDATES, demo_taxonomy, start_template_llm

    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    taxonomy = tmp_path / "squares.yaml"
    taxonomy.write_text(demo_taxonomy())
    server = start_template_llm()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        code, _, err = prompts_cli(
            "build", "--taxonomy", taxonomy, "--model", "demo", "--candidates", CANDIDATES,
            "--base-url", url,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert code == 0, err
    document = json.loads(taxonomy.with_name("squares.descriptions.json").read_text())
    assert all(len(entry["descriptions"]) == CANDIDATES for entry in document["classes"])
