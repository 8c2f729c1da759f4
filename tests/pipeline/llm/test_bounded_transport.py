"""`intclip-prompts build` against hostile loopback servers: every request within a total
deadline (a server that trickles its headers or its body is cut off and asked again), every
answer decoded within a cap (a gzip bomb is refused in one line, in bounded memory), redirects
to anything but http(s) named and never retried, and a server's control characters escaped."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

import pipeline.cli.main
from pipeline.llm.transport import MAX_RESPONSE_BYTES
from testkit.disk import snapshot
from testkit.fake_openai import Encoded, FakeOpenAI, Redirect, Refusal, Trickle
from testkit.hostile_http import gzip_bomb


def build(prompts_cli, taxonomy: Path, server: FakeOpenAI, *args: object):
    return prompts_cli(
        "build", "--taxonomy", taxonomy, "--model", "m", "--base-url", server.base_url,
        "--concurrency", "1", "--skip-review", *args,
    )  # fmt: skip


@pytest.fixture
def quick_retries(monkeypatch) -> None:
    """Two tries per request, 10 ms apart: a failure after every retry, without the minute
    of backoff a real build would spend first."""
    settings = pipeline.cli.main._llm_settings

    def fast(*args, **kwargs):
        policy = {"max_transport_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.01}
        return settings(*args, **kwargs).model_copy(update=policy)

    monkeypatch.setattr(pipeline.cli.main, "_llm_settings", fast)


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickling_answer_is_cut_at_the_deadline_and_asked_again(prompts_cli, toy_taxonomy, part):
    with FakeOpenAI() as server:
        server.enqueue(Trickle(0.2, part))  # about 800 bytes: minutes, a byte at a time
        code, out, err = build(prompts_cli, toy_taxonomy, server, "--timeout", "1")
        requests = server.request_count
    assert code == 0, err
    assert requests == 4  # the cut one, asked again, then the other two classes
    assert out.startswith("wrote ")


def test_a_server_that_always_trickles_fails_in_one_line(prompts_cli, toy_taxonomy, quick_retries):
    before = snapshot(toy_taxonomy.parent.parent)
    with FakeOpenAI() as server:
        server.enqueue(*[Trickle(0.2, "body")] * 6)
        code, out, err = build(prompts_cli, toy_taxonomy, server, "--timeout", "0.5")
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 3 and out == "", err
    assert errors == [
        "error: 3 class(es) failed after all attempts (class 0 'cats', class 1 'dogs', class 2 "
        f"'beach'); last error: class 2 'beach': no answer from {server.base_url} within 0.5 s, "
        "2 attempts (--timeout bounds each request in all, from connecting to the last byte "
        "of the answer)"
    ]
    assert {p for p in snapshot(toy_taxonomy.parent.parent) if not p.startswith("cache")} == {
        p for p in before if not p.startswith("cache")
    }


def test_a_gzip_bomb_is_refused_at_the_cap_in_bounded_memory(prompts_cli, toy_taxonomy):
    bomb = gzip_bomb(200 << 20)  # 200 KB that inflates to 200 MB
    before = snapshot(toy_taxonomy.parent)
    with FakeOpenAI() as server:
        server.enqueue(*[Encoded(bomb)] * 3)
        tracemalloc.start()
        try:
            code, out, err = build(prompts_cli, toy_taxonomy, server)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        requests = server.request_count
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 3 and out == "", err
    assert requests == 3  # one request per class: nothing is retried
    assert errors == [
        "error: 3 class(es) failed after all attempts (class 0 'cats', class 1 'dogs', class 2 "
        f"'beach'); last error: class 2 'beach': the answer of {server.base_url} was refused: "
        f"the response is larger than {MAX_RESPONSE_BYTES:,} bytes once decompressed"
    ]
    assert peak < 4 * MAX_RESPONSE_BYTES, peak
    assert snapshot(toy_taxonomy.parent) == before


def test_a_redirect_to_a_file_url_is_named_and_not_retried(prompts_cli, toy_taxonomy):
    before = snapshot(toy_taxonomy.parent)
    with FakeOpenAI() as server:
        server.enqueue(Redirect("file:///etc/passwd"))
        result = build(prompts_cli, toy_taxonomy, server)
        requests = server.request_count
    code, out, err = result
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and out == "", err
    assert requests == 1
    assert errors == [
        f"error: class 0 'cats': {server.base_url} answered with a redirect to "
        "'file://127.0.0.1/etc/passwd': only http and https URLs are followed; check "
        "--base-url or OPENAI_BASE_URL"  # httpx gives a Location without a host the server's
    ]
    assert snapshot(toy_taxonomy.parent) == before


def test_control_characters_of_a_reply_are_escaped_in_the_message(prompts_cli, toy_taxonomy):
    with FakeOpenAI() as server:
        server.enqueue(*[Refusal("no\x1b[2J\x1b]0;owned\x07")] * 3)
        code, _, err = build(prompts_cli, toy_taxonomy, server, "--max-attempts", "1")
    assert code == 3
    assert "\x1b" not in err and "\x07" not in err
    assert (
        "class 2 'beach': no valid answer after 1 attempts: the answer was a refusal: "
        "no\\x1b[2J\\x1b]0;owned\\x07" in err
    )
