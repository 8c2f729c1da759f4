"""No hang: a wrong --base-url fails the build at once, and Ctrl-C or SIGTERM stop a build
whose requests are all in flight without waiting for them, their timeouts or their retries."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.fake_openai import FakeOpenAI, Hang

BIN = Path(sys.executable).parent


def test_connection_refused_fails_the_whole_build_at_once(prompts_cli, toy_taxonomy, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out, err = prompts_cli(
        "build", "--taxonomy", toy_taxonomy, "--model", "m", "--base-url",
        f"http://127.0.0.1:{port}/v1", "--concurrency", "1",
    )  # fmt: skip
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: class 0 'cats': nothing answers at http://127.0.0.1:{port}/v1 "
        "([Errno 111] Connection refused): check --base-url or OPENAI_BASE_URL"
    ]
    assert "0 asked, 1 failed" in err  # dogs and beach were never tried
    assert sorted(p for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "codes"), [(signal.SIGINT, {130, 1}), (signal.SIGTERM, {-15})])
def test_a_signal_stops_a_build_with_every_request_in_flight(toy_taxonomy, signum, codes):
    with FakeOpenAI() as server:
        server.enqueue(*[Hang(600)] * 3)
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url}
        command = [
            str(BIN / "intclip-prompts"), "build", "--taxonomy", str(toy_taxonomy),
            "--model", "m", "--concurrency", "3", "--timeout", "600",
        ]  # fmt: skip
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.request_count < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.request_count == 3
        process.send_signal(signum)
        try:
            _, err = process.communicate(timeout=30)  # the requests would hang for 600 s
        finally:
            process.kill()
    assert process.returncode in codes, err
    assert "Traceback" not in err
    assert not (toy_taxonomy.parent / "toy.descriptions.json").exists()
