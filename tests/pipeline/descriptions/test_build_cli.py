"""`intclip-prompts build`, `--check`, `--dry-run` and `diff` against a loopback LLM server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path

import pytest

from pipeline.clip import tokens as clip_tokens
from pipeline.descriptions import templates
from testkit.fake_openai import (
    TEST_API_KEY,
    Content,
    FakeOpenAI,
    Hang,
    descriptions_json,
    quota_exhausted,
    unauthorized,
)
from testkit.paths import TOY_TAXONOMY

TOY = TOY_TAXONOMY
API_KEY = TEST_API_KEY


@pytest.fixture
def build(prompts_cli):
    """`intclip-prompts build --taxonomy T --model toy-llm ARGS...`."""

    def run(taxonomy: Path, *args: str) -> tuple[int, str, str]:
        return prompts_cli("build", "--taxonomy", taxonomy, "--model", "toy-llm", *args)

    return run


def output_of(taxonomy: Path) -> Path:
    return taxonomy.parent / "toy.descriptions.json"


def test_build_writes_stable_sorted_json(project, fake_openai, build):
    code, out, err = build(project, "--num-descriptions", "3")
    assert code == 0, err
    assert fake_openai.request_count == 3
    data = json.loads(output_of(project).read_text())
    assert [c["label"] for c in data["classes"]] == [0, 1, 2]
    assert data["classes"][0]["path"] == ["Animals", "Cats"]
    assert all(len(c["descriptions"]) == 3 for c in data["classes"])
    assert data["generator"]["model"] == "toy-llm"
    assert data["generator"]["params"]["num_descriptions"] == 3
    assert data["taxonomy"]["name"] == "toy" and len(data["taxonomy"]["sha256"]) == 64
    assert f"wrote {output_of(project)}" in out
    assert "3 asked" in err and "0 failed" in err


def test_prompt_gives_path_and_siblings(project, fake_openai, build):
    build(project, "--only", "cats")
    user = fake_openai.bodies[0]["messages"][-1]["content"]
    assert "Animals > Cats" in user and "Dogs" in user and "exactly 5 different" in user
    assert fake_openai.bodies[0]["response_format"]["type"] == "json_schema"


def test_rerun_sends_nothing_and_leaves_the_file_untouched(project, fake_openai, build):
    build(project)
    first = output_of(project).read_bytes()
    mtime = output_of(project).stat().st_mtime_ns
    code, out, _ = build(project)
    assert code == 0 and fake_openai.request_count == 3
    assert "unchanged" in out
    assert output_of(project).read_bytes() == first
    assert output_of(project).stat().st_mtime_ns == mtime


def test_committed_file_is_the_lock_even_with_an_empty_cache(project, fake_openai, build, tmp_path):
    build(project)
    cache = tmp_path / "cache"
    assert any((cache / "llm").iterdir())
    for entry in (cache / "llm").iterdir():
        entry.unlink()
    code, _, err = build(project)
    assert code == 0 and fake_openai.request_count == 3
    assert "3 up to date" in err


def test_editing_one_class_regenerates_only_it(project, fake_openai, build, prompts_cli, tmp_path):
    build(project)
    before = json.loads(output_of(project).read_text())
    project.write_text(TOY.replace("name: Beach", "name: Seaside"))
    code, _, _ = build(project)
    assert code == 0 and fake_openai.request_count == 4
    after = json.loads(output_of(project).read_text())
    assert after["classes"][:2] == before["classes"][:2]
    assert after["classes"][2]["path"] == ["Places", "Seaside"]
    assert after["classes"][2]["descriptions"] != before["classes"][2]["descriptions"]

    old = tmp_path / "old.json"
    old.write_text(json.dumps(before))
    code, out, _ = prompts_cli("diff", str(old), str(output_of(project)))
    assert code == 1
    assert "class 2 'beach'" in out and "class 0" not in out and "class 1" not in out
    assert "  - Photo 1" in out and "  + Photo 1" in out
    code, out, _ = prompts_cli("diff", str(old), str(old))
    assert code == 0 and "no differences" in out


def test_renaming_a_parent_regenerates_its_children(project, fake_openai, build):
    build(project)
    project.write_text(TOY.replace("name: Animals", "name: Pets"))
    build(project)
    assert fake_openai.request_count == 5  # cats and dogs again, beach kept


def test_check_detects_missing_stale_and_fresh(project, fake_openai, build, prompts_cli):
    code, _, err = build(project, "--check")
    assert code == 1 and "missing" in err
    build(project)
    code, out, _ = prompts_cli("build", "--taxonomy", str(project), "--check")
    assert code == 0 and "up to date" in out  # model and parameters come from the file
    project.write_text(TOY.replace("name: Dogs", "name: Wolves"))
    code, _, err = prompts_cli("build", "--taxonomy", str(project), "--check")
    assert code == 1 and "class 1 'dogs': stale" in err
    code, _, err = prompts_cli("build", "--taxonomy", str(project), "--check", "--min-words", "2")
    assert code == 1 and "class 0 'cats': stale" in err
    assert fake_openai.request_count == 3


def test_check_validates_hand_edits(project, build, prompts_cli):
    build(project)
    data = json.loads(output_of(project).read_text())
    data["classes"][0]["descriptions"][0] = "Too short."
    output_of(project).write_text(json.dumps(data))
    code, _, err = prompts_cli("build", "--taxonomy", str(project), "--check")
    assert code == 1 and "class 0 'cats': description 1: has 2 words" in err


def test_dry_run_sends_nothing(project, fake_openai, build):
    build(project, "--only", "cats")
    output_of(project).unlink()
    code, out, _ = build(project, "--dry-run")
    assert code == 0 and fake_openai.request_count == 1
    assert "Animals > Dogs" in out and "Places > Beach" in out
    assert "1 answered by the LLM cache, 2 request(s) would be sent" in out
    assert not output_of(project).exists()


def test_only_accepts_several_ids_and_inner_nodes(project, fake_openai, build):
    code, _, err = build(project, "--only", "cats", "beach")
    assert code == 0 and fake_openai.request_count == 2
    assert "1 class(es) have no descriptions yet" in err
    code, _, _ = build(project, "--only", "animals")
    assert code == 0 and fake_openai.request_count == 3
    assert len(json.loads(output_of(project).read_text())["classes"]) == 3


def test_refresh_asks_again(project, fake_openai, build):
    build(project)
    build(project, "--refresh")
    assert fake_openai.request_count == 6


def test_invalid_answer_is_sent_back_then_accepted(project, fake_openai, build):
    fake_openai.enqueue(Content(descriptions_json(["Too few.", "Far too few."])))
    code, _, err = build(project, "--only", "cats", "--concurrency", "1")
    assert code == 0, err
    assert fake_openai.request_count == 2
    resent = fake_openai.bodies[1]["messages"]
    assert "descriptions: List should have at least 5 items" in resent[-1]["content"]
    # the re-ask samples with the next seed: a deterministic server would repeat itself
    assert [body["seed"] for body in fake_openai.bodies] == [0, 1]


def test_class_fails_after_bounded_attempts_naming_the_class(project, fake_openai, build):
    long_text = " ".join(["word"] * 40)
    fake_openai.enqueue(*[Content(descriptions_json([long_text] * 5))] * 2)
    code, _, err = build(project, "--only", "dogs", "--max-attempts", "2")
    assert code == 3
    assert fake_openai.request_count == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "class 1 'dogs'" in error_lines[0] and "has 40 words, needs 5 to 25" in error_lines[0]
    assert not output_of(project).exists()


def test_other_classes_are_cached_when_one_fails(project, fake_openai, build):
    bad = Content("not json at all")
    fake_openai.enqueue(bad, bad, bad)
    code, _, _ = build(project, "--concurrency", "1")
    assert code == 3 and fake_openai.request_count == 5  # 3 bad answers for cats, then 2 good
    code, _, _ = build(project)
    assert code == 0 and fake_openai.request_count == 6  # only cats is asked again


@pytest.mark.parametrize(
    ("fault", "expected"),
    [(unauthorized(), "authentication failed (401)"), (quota_exhausted(), "quota exhausted")],
)
def test_configuration_errors_stop_at_once(project, fake_openai, build, fault, expected):
    fake_openai.enqueue(*[fault] * 3)
    code, _, err = build(project, "--concurrency", "1")
    assert code == 2 and fake_openai.request_count == 1
    assert err.count("error:") == 1 and expected in err and API_KEY not in err


def test_json_schema_rejection_falls_back(project, build, monkeypatch):
    with FakeOpenAI(reject_json_schema_status=400) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        code, _, err = build(project, "--concurrency", "1")
        assert code == 0
        kinds = [body["response_format"]["type"] for body in server.bodies]
    assert kinds == ["json_schema", "json_object", "json_object", "json_object"]
    assert "json_object mode" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--only", "cows"), "--only cows: no such node"),
        (("--min-words", "9", "--max-words", "3"), "min_words 9 exceeds max_words 3"),
        (("--num-descriptions", "0"), "invalid num_descriptions"),
        (("--base-url", "ftp://x"), "must be an http:// or https:// URL"),
        (("--templates", "/nonexistent"), "prompt template not found"),
    ],
)
def test_bad_options_are_one_line_exit_2(project, fake_openai, build, args, expected):
    code, _, err = build(project, *args)
    assert code == 2, err
    assert err.count("\n") == 1 and expected in err
    assert fake_openai.request_count == 0


def test_without_templates_anywhere_the_error_names_the_remedy(
    project, fake_openai, build, monkeypatch, tmp_path
):
    """As in an installed wheel, which has no prompts/templates of the checkout to fall back on."""
    monkeypatch.setattr(templates, "DEFAULT_TEMPLATE_DIR", tmp_path / "site-packages" / "none")
    code, _, err = build(project)
    assert code == 2 and err.count("\n") == 1, err
    assert str(project.parent / "templates") in err and "pass --templates DIR" in err
    assert fake_openai.request_count == 0


def test_model_is_required_without_a_previous_file(project, prompts_cli):
    code, _, err = prompts_cli("build", "--taxonomy", str(project))
    assert code == 2 and "no model: pass --model or set INTCLIP_LLM_MODEL" in err


def test_api_key_is_never_written(project, build, tmp_path):
    build(project)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY not in path.read_text(errors="ignore"), path


def test_sigkill_mid_build_resumes_without_asking_again(project, tmp_path):
    """A build killed half-way keeps every answer it received in the LLM cache."""
    with FakeOpenAI() as server:
        server.enqueue(Content(server.responder({"messages": ["a"]})), Hang(30))
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url}
        command = [
            str(Path(sys.executable).parent / "intclip-prompts"),
            *("build", "--taxonomy", str(project), "--model", "toy-llm", "--concurrency", "1"),
        ]
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while server.request_count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.request_count == 2  # cats answered, dogs hanging
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not output_of(project).exists()
        assert not list(project.parent.glob("*.tmp"))

        finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert finished.returncode == 0, finished.stderr
        asked = [body["messages"][-1]["content"] for body in server.bodies[2:]]
    assert len(asked) == 2
    assert all("Intent class: Cats" not in content for content in asked)


def test_no_key_needed_when_nothing_must_be_asked(project, build, monkeypatch, fake_openai):
    build(project)
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    code, out, err = build(project)
    assert code == 0, err
    assert "3 classes: 3 up to date, 0 from the LLM cache, 0 asked, 0 failed" in err
    assert "unchanged" in out and fake_openai.request_count == 3


def test_no_key_with_a_class_to_ask_names_the_count_and_both_remedies(
    project, build, monkeypatch, fake_openai
):
    build(project)
    project.write_text(TOY.replace("name: Beach", "name: Seaside"))
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    code, _, err = build(project)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("error: 1 class(es) need asking an LLM and no API key is set")
    assert "OPENAI_API_KEY" in line and "--base-url" in line and "--llm local" in line
    assert fake_openai.request_count == 3
    code, out, _ = build(project, "--dry-run")  # planning still needs no key
    assert code == 0 and "1 request(s) would be sent; nothing was sent" in out


def test_a_remote_server_without_a_key_is_refused_before_asking(project, build, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    code, _, err = build(project, "--base-url", "https://llm.example.org/v1")
    assert code == 2 and "3 class(es) need asking an LLM" in err


def five(prefix: str) -> list[str]:
    return [f"{prefix} number {n} shows people smiling together." for n in range(1, 6)]


def test_a_class_repeating_another_class_is_asked_again(project, fake_openai, build):
    fake_openai.enqueue(
        Content(descriptions_json(five("Photo"))),
        Content(descriptions_json([t.title().replace(" Shows", ", Shows") for t in five("Photo")])),
    )
    code, _, err = build(project, "--concurrency", "1")
    assert code == 0, err
    assert fake_openai.request_count == 4  # cats, dogs twice (a repeat of cats), beach
    resent = fake_openai.bodies[2]["messages"][-1]["content"]
    assert "repeat(s) class 'cats'" in resent
    data = json.loads(output_of(project).read_text())
    assert data["classes"][0]["descriptions"] == five("Photo")
    assert data["classes"][1]["descriptions"] != data["classes"][0]["descriptions"]


def test_repeats_across_classes_fail_after_bounded_attempts(project, fake_openai, build):
    fake_openai.enqueue(*[Content(descriptions_json(five("Photo")))] * 4)
    code, _, err = build(project, "--only", "cats", "dogs", "--concurrency", "1")
    assert code == 3
    assert "class 1 'dogs'" in err and "repeat(s) class 'cats'" in err
    assert not output_of(project).exists()


def test_check_and_build_catch_repeats_across_classes_in_the_file(
    project, fake_openai, build, prompts_cli
):
    build(project)
    data = json.loads(output_of(project).read_text())
    data["classes"][2]["descriptions"][4] = data["classes"][0]["descriptions"][1].lower()
    output_of(project).write_text(json.dumps(data))
    code, _, err = prompts_cli("build", "--taxonomy", str(project), "--check")
    assert code == 1 and "class 2 'beach': 'photo" in err and "repeat(s) class 'cats'" in err
    code, _, err = build(project)
    assert code == 0, err
    assert fake_openai.request_count == 3 and "1 from the LLM cache" in err
    code, _, _ = prompts_cli("build", "--taxonomy", str(project), "--check")
    assert code == 0


def test_without_model_a_recorded_model_plans_but_is_not_sent(
    project, build, prompts_cli, fake_openai, monkeypatch
):
    """The file does not record which OpenAI-compatible server wrote it: its model plans the
    build, and asking needs --model or INTCLIP_LLM_MODEL."""
    build(project)
    code, out, err = prompts_cli("build", "--taxonomy", project)
    assert code == 0 and "3 up to date" in err and "unchanged" in out
    project.write_text(TOY.replace("name: Beach", "name: Seaside"))
    for extra in ((), ("--dry-run",)):
        code, _, err = prompts_cli("build", "--taxonomy", project, *extra)
        assert code == 2
        (line,) = err.splitlines()
        assert "written by toy-llm on an OpenAI-compatible server" in line
        assert "1 class(es) need asking" in line and "--model" in line
    assert fake_openai.request_count == 3
    monkeypatch.setenv("INTCLIP_LLM_MODEL", "toy-llm")
    code, _, err = prompts_cli("build", "--taxonomy", project)
    assert code == 0 and "1 asked" in err and fake_openai.request_count == 4


def test_a_local_files_model_is_never_sent_to_another_server(
    project, build, prompts_cli, fake_openai
):
    build(project)
    data = json.loads(output_of(project).read_text())
    data["generator"].update(model="SmolLM2-135M-Instruct-Q8_0", llm="local")
    output_of(project).write_text(json.dumps(data))
    project.write_text(TOY.replace("name: Beach", "name: Seaside"))
    code, _, err = prompts_cli("build", "--taxonomy", project, "--llm", "openai")
    assert code == 2
    (line,) = err.splitlines()
    assert "written by SmolLM2-135M-Instruct-Q8_0 on a local llama.cpp server" in line
    assert fake_openai.request_count == 3
    assert json.loads(output_of(project).read_text()) == data
    code, _, err = build(project, "--llm", "openai")
    assert code == 0, err
    assert fake_openai.request_count == 4 and fake_openai.bodies[3]["model"] == "toy-llm"
    assert "llm" not in json.loads(output_of(project).read_text())["generator"]


def test_one_tokenizer_is_loaded_while_the_first_requests_wait(
    project, fake_openai, build, monkeypatch
):
    """CLIP's tokenizer checks every answer: it is built once, on its own thread, while the
    server holds the first requests (here until it exists), not by each thread at its first
    answer."""
    loaded = threading.Event()
    builders = []

    @cache
    def load() -> clip_tokens.ClipTokenizer:
        builders.append(threading.current_thread().name)
        tokenizer = clip_tokens.ClipTokenizer(clip_tokens.vocabulary_file())
        loaded.set()
        return tokenizer

    monkeypatch.setattr(clip_tokens, "_load_tokenizer", load)
    answer = fake_openai.responder

    def after_the_tokenizer(request: dict) -> str:
        loaded.wait(10)
        return answer(request)

    fake_openai.responder = after_the_tokenizer
    code, _, err = build(project, "--concurrency", "3")
    assert code == 0, err
    assert builders == ["checks"]


# ---- a reviewer's edit survives: mark-edited, kept by build, guarded by --check ----

EDITED = [
    "A dog runs across a park with a stick.",
    "A puppy sleeps curled up on a rug.",
    "A dog waits by the door for a walk.",
    "Two dogs play tug with a rope toy.",
    "A dog swims after a ball in a lake.",
]
EDIT_SOURCE = "the LLM's answer, rewritten by a reviewer from the class path"


def edit_class(taxonomy: Path, label: int, texts: list[str]) -> None:
    data = json.loads(output_of(taxonomy).read_text())
    data["classes"][label]["descriptions"] = texts
    output_of(taxonomy).write_text(json.dumps(data))


def test_a_hand_edit_without_the_mark_fails_check(project, build, prompts_cli):
    build(project)
    data = json.loads(output_of(project).read_text())
    assert all(len(entry["answer_sha256"]) == 64 for entry in data["classes"])
    edit_class(project, 1, EDITED)  # follows every rule: only the missing mark is wrong

    code, _, err = prompts_cli("build", "--taxonomy", project, "--check")

    assert code == 1
    assert "class 1 'dogs': its descriptions differ from the LLM's answer and carry no edit " in err
    assert "mark-edited" in err


def test_a_marked_edit_survives_changed_inputs_and_refresh(
    project, fake_openai, build, prompts_cli
):
    build(project)
    edit_class(project, 1, EDITED)
    out = output_of(project)
    code, stdout, err = prompts_cli(
        "mark-edited", "dogs", "--descriptions", out, "--from", EDIT_SOURCE
    )
    assert code == 0, err
    assert f"marked 1 class(es) edited in review {out}" in stdout
    entry = json.loads(out.read_text())["classes"][1]
    assert entry["edited"] == {"from": EDIT_SOURCE, "sha256": entry["edited"]["sha256"]}
    assert json.loads(out.read_text())["generator"]["edited"].startswith("1 of 3 classes edited")
    code, stdout, _ = prompts_cli("build", "--taxonomy", project, "--check")
    assert code == 0 and "up to date (3 classes, 1 edited in review)" in stdout

    project.write_text(TOY.replace("name: Dogs", "name: Hounds"))  # dogs' own inputs change
    code, _, err = build(project)
    assert code == 0, err
    assert "class 1 'dogs' was edited in review and is kept, although its inputs changed" in err
    assert "1 edited in review (kept)" in err
    assert json.loads(out.read_text())["classes"][1]["descriptions"] == EDITED
    asked = fake_openai.request_count
    code, _, err = build(project, "--refresh")
    assert code == 0 and fake_openai.request_count == asked + 2  # cats and beach only
    assert json.loads(out.read_text())["classes"][1]["descriptions"] == EDITED
    code, _, err = prompts_cli("build", "--taxonomy", project, "--check")
    assert code == 0, err

    edit_class(project, 1, [*EDITED[:4], "A dog chews a bone in the garden."])
    code, _, err = prompts_cli("build", "--taxonomy", project, "--check")
    assert code == 1
    assert "class 1 'dogs': its descriptions changed after they were marked edited" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["wolves"], "no class 'wolves'"),
        ([], "name the edited classes by id, or pass --all"),
        (["dogs", "--all"], "name the edited classes by id, or pass --all"),
        (["dogs", "--from", " "], "--from must say what the edit was made from"),
        (["cats"], "class 0 'cats': description 5: has 2 words, needs 5 to 25"),
    ],
)
def test_mark_edited_refuses_what_it_cannot_vouch_for(project, build, prompts_cli, args, message):
    build(project)
    edit_class(project, 0, [*EDITED[:4], "Short one."])
    before = output_of(project).read_bytes()
    source = [] if "--from" in args else ["--from", EDIT_SOURCE]
    code, _, err = prompts_cli("mark-edited", *args, "--descriptions", output_of(project), *source)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert output_of(project).read_bytes() == before


def test_mark_edited_all_marks_every_class(project, build, prompts_cli):
    build(project)
    code, _, err = prompts_cli(
        "mark-edited", "--all", "--descriptions", output_of(project), "--from", EDIT_SOURCE
    )
    assert code == 0, err
    data = json.loads(output_of(project).read_text())
    assert all(entry["edited"]["from"] == EDIT_SOURCE for entry in data["classes"])
    code, stdout, _ = prompts_cli(
        "mark-edited", "--all", "--descriptions", output_of(project), "--from", EDIT_SOURCE
    )
    assert code == 0 and stdout.startswith("already marked:")
