"""The LLM client against a real loopback server: retries, re-asks, fallback, cache, threads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from pipeline.common.errors import EXIT_BAD_INPUT, EXIT_LLM_FAILURE, UserError
from pipeline.llm.cache import LLMCache
from pipeline.llm.client import LLMAnswer, LLMClient
from pipeline.llm.settings import LLMError, LLMSettings
from testkit.fake_openai import (
    Body,
    Content,
    ErrorReply,
    FakeOpenAI,
    Hang,
    Refusal,
    descriptions_json,
    model_not_found,
    quota_exhausted,
    rate_limited,
    server_error,
    unauthorized,
)
from testkit.paths import ROOT

COUNT = 3
MAX_WORDS = 12
SECRET_KEY = "sk-test-do-not-leak-0123456789"
MESSAGES = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "Describe photos expressing 'Success in occupation'."},
]


class Description(BaseModel):
    text: str


class DescriptionsAnswer(BaseModel):
    descriptions: list[Description] = Field(min_length=COUNT, max_length=COUNT)


def at_most_max_words(answer: DescriptionsAnswer) -> None:
    for number, description in enumerate(answer.descriptions, start=1):
        if len(description.text.split()) > MAX_WORDS:
            raise ValueError(f"description {number} has more than {MAX_WORDS} words")


def fast_settings(server: FakeOpenAI, **overrides: Any) -> LLMSettings:
    """Settings that keep every retry and timeout short."""
    values = {
        "model": "fake-model",
        "base_url": server.base_url,
        "timeout": 0.5,
        "seed": 7,
        "max_transport_attempts": 4,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        **overrides,
    }
    return LLMSettings(**values)


def ask(
    client: LLMClient, messages: list[dict[str, str]] = MESSAGES
) -> LLMAnswer[DescriptionsAnswer]:
    return client.ask(messages, DescriptionsAnswer, check=at_most_max_words)


def failure(client: LLMClient) -> LLMError:
    """The error the next ask raises, checked to be a single line."""
    with pytest.raises(LLMError) as caught:
        ask(client)
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_valid_answer_takes_one_request(fake_openai: FakeOpenAI) -> None:
    answer = ask(LLMClient(fast_settings(fake_openai)))

    assert len(answer.value.descriptions) == COUNT
    assert (answer.from_cache, answer.requests, fake_openai.request_count) == (False, 1, 1)
    body = fake_openai.bodies[0]
    assert (body["model"], body["temperature"], body["seed"]) == ("fake-model", 0.7, 7)
    assert body["messages"] == MESSAGES
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "DescriptionsAnswer"


def test_waiting_for_a_request_ends_once_one_is_sent(fake_openai: FakeOpenAI) -> None:
    """What `build` waits for before loading CLIP's tokenizer, off the first request's path."""
    client = LLMClient(fast_settings(fake_openai))
    assert not client.wait_for_a_request(0.01)
    ask(client)
    assert client.wait_for_a_request(0.01)


@pytest.mark.parametrize(
    ("collecting", "after"), [("gc.enable()", "True"), ("gc.disable()", "False")]
)
def test_openai_is_imported_with_the_collector_paused(collecting: str, after: str) -> None:
    """Its import frees nothing: no collection runs during it, and the collector is left as
    it was found."""
    code = (
        f"import gc, sys; {collecting}; from pipeline.llm.transport import openai_module; "
        "runs = []; gc.callbacks.append(lambda phase, info: runs.append(phase)); "
        "assert 'openai' not in sys.modules; module = openai_module(); "
        "print(module.__name__, len(runs), gc.isenabled())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["openai", "0", after], done.stderr


@pytest.mark.parametrize(
    "fault",
    [server_error(500), server_error(503), rate_limited(), Hang(seconds=1.0)],
    ids=["500", "503", "429", "hang-past-timeout"],
)
def test_a_transient_failure_is_retried(fake_openai: FakeOpenAI, fault: Any) -> None:
    fake_openai.enqueue(fault)

    answer = ask(LLMClient(fast_settings(fake_openai)))

    assert len(answer.value.descriptions) == COUNT
    assert answer.requests == fake_openai.request_count == 2


@pytest.mark.parametrize(
    ("fault", "advertised"),
    [
        (rate_limited(retry_after="0.3"), 0.3),
        (rate_limited(retry_after_ms="300"), 0.3),
        (server_error(503), 0.0),
    ],
    ids=["retry-after-seconds", "retry-after-ms", "no-header"],
)
def test_retry_after_is_honoured(
    fake_openai: FakeOpenAI, fault: ErrorReply, advertised: float
) -> None:
    fake_openai.enqueue(fault)

    ask(LLMClient(fast_settings(fake_openai, backoff_max=5)))

    first, second = fake_openai.received
    assert second.at - first.at >= advertised


def test_retry_after_as_an_http_date_is_honoured(fake_openai: FakeOpenAI) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    fake_openai.enqueue(rate_limited(retry_after=later))

    ask(LLMClient(fast_settings(fake_openai, backoff_max=5)))

    first, second = fake_openai.received
    assert second.at - first.at >= 0.9  # the date has whole seconds: at least 1 s minus rounding


def test_persistent_server_errors_stop_after_the_attempt_limit(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(*[server_error(500)] * 10)

    error = failure(LLMClient(fast_settings(fake_openai, max_transport_attempts=4)))

    assert fake_openai.request_count == 4
    assert error.exit_code == EXIT_LLM_FAILURE
    assert str(error).startswith("LLM server error 500 after 4 attempts: ")


def test_persistent_rate_limits_stop_after_the_attempt_limit(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(*[rate_limited(retry_after="0")] * 10)

    error = failure(LLMClient(fast_settings(fake_openai, max_transport_attempts=3)))

    assert fake_openai.request_count == 3
    assert error.exit_code == EXIT_LLM_FAILURE
    assert str(error).startswith("rate limited (429) after 3 attempts: Rate limit reached")


def test_persistent_timeouts_stop_after_the_attempt_limit(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(*[Hang(seconds=0.6)] * 2)

    error = failure(LLMClient(fast_settings(fake_openai, timeout=0.3, max_transport_attempts=2)))

    assert fake_openai.request_count == 2
    assert error.exit_code == EXIT_LLM_FAILURE
    assert f"no answer from {fake_openai.base_url} within 0.3 s, 2 attempts" in str(error)


def test_connection_refused_is_a_configuration_error_not_retried() -> None:
    """A wrong --base-url: nothing listens there, so no retry can help (issue 12)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = LLMSettings(
        model="fake-model",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_transport_attempts=3,
        backoff_initial=30,
    )

    error = failure(LLMClient(settings))

    assert error.exit_code == EXIT_BAD_INPUT
    assert str(error) == (
        f"nothing answers at http://127.0.0.1:{port}/v1 ([Errno 111] Connection refused): "
        "check --base-url or OPENAI_BASE_URL"
    )


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (unauthorized(), "authentication failed (401): check OPENAI_API_KEY"),
        (quota_exhausted(), "quota exhausted (insufficient_quota): You exceeded your current"),
        (model_not_found("fake-model"), "model 'fake-model' not found at http://127.0.0.1:"),
        (ErrorReply(403, "Project does not have access"), "permission denied (403)"),
        (ErrorReply(400, "max_tokens is too large"), "rejected the request (400): max_tokens"),
    ],
    ids=["401", "insufficient-quota", "404", "403", "400"],
)
def test_configuration_errors_fail_at_once(
    fake_openai: FakeOpenAI, fault: ErrorReply, expected: str
) -> None:
    fake_openai.enqueue(fault)

    error = failure(LLMClient(fast_settings(fake_openai)))

    assert fake_openai.request_count == 1
    assert error.exit_code == EXIT_BAD_INPUT
    assert expected in str(error)


def test_a_base_url_without_v1_is_a_clear_404(fake_openai: FakeOpenAI) -> None:
    wrong_url = fake_openai.base_url.removesuffix("/v1")

    error = failure(LLMClient(fast_settings(fake_openai, base_url=wrong_url)))

    assert fake_openai.request_count == 1
    assert error.exit_code == EXIT_BAD_INPUT
    assert str(error) == (
        f"model 'fake-model' not found at {wrong_url} (404): no route /chat/completions"
    )


def test_a_reply_that_is_not_a_chat_completion_fails(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Body("<html>\n<p>proxy error</p>\n</html>"))

    error = failure(LLMClient(fast_settings(fake_openai)))

    assert fake_openai.request_count == 1
    assert error.exit_code == EXIT_LLM_FAILURE
    assert "not a chat completion: <html> <p>proxy error</p> </html>" in str(error)


def test_the_api_key_never_shows_in_an_error(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(unauthorized(f"Incorrect API key provided: {SECRET_KEY}."))

    error = failure(LLMClient(fast_settings(fake_openai, api_key=SECRET_KEY)))

    assert SECRET_KEY not in str(error)
    assert "Incorrect API key provided" in str(error)


@pytest.mark.parametrize(
    ("fault", "error_text"),
    [
        (Content('{"descriptions": [{"text": "cut'), "Invalid JSON"),
        (Content(descriptions_json(["Two", "only"])), "at least 3 items"),
        (Content(descriptions_json(["one", "two", "many " * 20])), "more than 12 words"),
        (Content('{"descriptions": [{"text": 1}, {"text": 2}, {"text": 3}]}'), "valid string"),
        (Content(""), "the answer was empty"),
        (Refusal("I cannot help with that."), "refusal: I cannot help with that."),
    ],
    ids=["malformed-json", "wrong-count", "too-many-words", "wrong-type", "empty", "refusal"],
)
def test_an_invalid_answer_is_sent_back_with_its_error(
    fake_openai: FakeOpenAI, fault: Content | Refusal, error_text: str
) -> None:
    fake_openai.enqueue(fault)

    answer = ask(LLMClient(fast_settings(fake_openai)))

    assert answer.requests == fake_openai.request_count == 2
    *original, rejected, reask = fake_openai.bodies[1]["messages"]
    assert original == MESSAGES
    assert rejected == {"role": "assistant", "content": fault.text}
    assert reask["role"] == "user"
    assert error_text in reask["content"]


def test_invalid_answers_stop_after_the_attempt_limit(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(
        Content("not json"), Refusal("No."), Content(descriptions_json(["a", "b", "c " * 13]))
    )
    fake_openai.enqueue(*[Content("not json")] * 5)

    error = failure(LLMClient(fast_settings(fake_openai, max_answer_attempts=3)))

    assert fake_openai.request_count == 3
    assert error.exit_code == EXIT_LLM_FAILURE
    assert str(error) == "no valid answer after 3 attempts: description 3 has more than 12 words"
    last = fake_openai.bodies[2]["messages"]  # only the latest rejected answer is shown
    assert last[: len(MESSAGES)] == MESSAGES and len(last) == len(MESSAGES) + 2
    assert last[-2] == {"role": "assistant", "content": "No."}
    assert "refusal: No." in last[-1]["content"]


def test_a_multiline_check_error_becomes_one_line(fake_openai: FakeOpenAI) -> None:
    def reject(answer: DescriptionsAnswer) -> None:
        raise ValueError("duplicates:\n  'a'\n  'b'")

    client = LLMClient(fast_settings(fake_openai, max_answer_attempts=1))
    with pytest.raises(LLMError, match=r"duplicates: 'a' 'b'$") as caught:
        client.ask(MESSAGES, DescriptionsAnswer, check=reject)

    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("status", [400, 500])
def test_auto_mode_falls_back_to_json_object_once(fake_openai: FakeOpenAI, status: int) -> None:
    fake_openai.reject_json_schema_status = status
    notices: list[str] = []
    client = LLMClient(fast_settings(fake_openai), notify=notices.append)

    first = ask(client)
    second = ask(client, [*MESSAGES, {"role": "user", "content": "Another class."}])

    assert (first.requests, second.requests) == (2, 1)
    formats = [body["response_format"] for body in fake_openai.bodies]
    assert [fmt["type"] for fmt in formats] == ["json_schema", "json_object", "json_object"]
    assert formats[1]["schema"] == DescriptionsAnswer.model_json_schema()
    assert client.response_mode == "json_object"
    assert len(notices) == 1
    assert "json_object" in notices[0]


def test_forced_json_object_mode_never_sends_json_schema(fake_openai: FakeOpenAI) -> None:
    client = LLMClient(fast_settings(fake_openai, response_mode="json_object"))

    answer = ask(client)

    assert answer.requests == 1
    assert fake_openai.bodies[0]["response_format"]["type"] == "json_object"


def test_forced_json_schema_mode_reports_a_rejection(fake_openai: FakeOpenAI) -> None:
    fake_openai.reject_json_schema_status = 400

    error = failure(LLMClient(fast_settings(fake_openai, response_mode="json_schema")))

    assert fake_openai.request_count == 1
    assert error.exit_code == EXIT_BAD_INPUT
    assert str(error).startswith("the server rejects response_format json_schema (400): ")


def test_a_cached_answer_sends_nothing(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    cache = LLMCache(tmp_path / "llm")
    client = LLMClient(fast_settings(fake_openai), cache)
    assert client.cached(MESSAGES, DescriptionsAnswer) is None

    fresh = ask(client)
    again = ask(LLMClient(fast_settings(fake_openai), cache))

    assert fake_openai.request_count == 1
    assert (again.from_cache, again.requests, again.value) == (True, 0, fresh.value)
    assert client.cached(MESSAGES, DescriptionsAnswer) == fresh.value
    (entry_path,) = (tmp_path / "llm").glob("*.json")
    entry = json.loads(entry_path.read_text())
    assert entry["request"]["model"] == "fake-model"
    assert entry["request"]["messages"] == MESSAGES
    assert entry["request"]["params"] == {"temperature": 0.7, "seed": 7}
    assert entry["answer"] == fresh.value.model_dump()


def test_the_cache_key_covers_sampling_and_ignores_the_server(tmp_path: Path) -> None:
    cache = LLMCache(tmp_path / "llm")
    with FakeOpenAI() as first, FakeOpenAI() as second:
        ask(LLMClient(fast_settings(first), cache))
        same_model_elsewhere = ask(LLMClient(fast_settings(second), cache))
        other_seed = ask(LLMClient(fast_settings(second, seed=8), cache))

        assert same_model_elsewhere.from_cache
        assert not other_seed.from_cache
        assert (first.request_count, second.request_count) == (1, 1)


def test_refresh_sends_again_and_rewrites(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    cache = LLMCache(tmp_path / "llm")
    ask(LLMClient(fast_settings(fake_openai), cache))
    fake_openai.responder = lambda request: descriptions_json(["New one.", "New two.", "New 3."])

    refreshed = LLMClient(fast_settings(fake_openai), cache, refresh=True)
    assert refreshed.cached(MESSAGES, DescriptionsAnswer) is None
    answer = ask(refreshed)
    reread = ask(LLMClient(fast_settings(fake_openai), cache))

    assert (answer.from_cache, fake_openai.request_count) == (False, 2)
    assert reread.from_cache
    assert reread.value.descriptions[0].text == "New one."


@pytest.mark.parametrize(
    "damage",
    ["{not json", '{"request": {}, "answer": {}}', ""],
    ids=["corrupt", "other-request", "empty"],
)
def test_a_damaged_cache_entry_is_a_miss(
    fake_openai: FakeOpenAI, tmp_path: Path, damage: str
) -> None:
    cache = LLMCache(tmp_path / "llm")
    ask(LLMClient(fast_settings(fake_openai), cache))
    (entry_path,) = (tmp_path / "llm").glob("*.json")
    entry_path.write_text(damage)

    answer = ask(LLMClient(fast_settings(fake_openai), cache))

    assert (answer.from_cache, fake_openai.request_count) == (False, 2)
    assert json.loads(entry_path.read_text())["answer"] == answer.value.model_dump()


def test_a_cached_answer_that_fails_the_check_is_a_miss(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    cache = LLMCache(tmp_path / "llm")
    client = LLMClient(fast_settings(fake_openai), cache)
    client.ask(MESSAGES, DescriptionsAnswer)

    def stricter(answer: DescriptionsAnswer) -> None:
        raise ValueError("rules changed")

    assert client.cached(MESSAGES, DescriptionsAnswer, check=stricter) is None
    assert client.cached(MESSAGES, DescriptionsAnswer) is not None


def test_the_api_key_is_never_cached(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    cache = LLMCache(tmp_path / "llm")
    fake_openai.enqueue(Content("not json"))

    ask(LLMClient(fast_settings(fake_openai, api_key=SECRET_KEY), cache))

    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert files
    assert all(SECRET_KEY.encode() not in path.read_bytes() for path in files)


def test_threads_share_one_client(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.reject_json_schema_status = 400
    fake_openai.enqueue(server_error(), rate_limited(retry_after="0"), Content("not json"))
    notices: list[str] = []
    client = LLMClient(
        fast_settings(fake_openai), LLMCache(tmp_path / "llm"), notify=notices.append
    )
    questions = [[{"role": "user", "content": f"Describe class {n} in JSON."}] for n in range(12)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda messages: ask(client, messages), questions))
    with ThreadPoolExecutor(max_workers=6) as pool:
        repeats = list(pool.map(lambda messages: ask(client, messages), questions))

    texts = {answer.value.descriptions[0].text for answer in answers}
    assert len(texts) == len(questions)
    assert sum(answer.requests for answer in answers) == fake_openai.request_count
    assert [repeat.value for repeat in repeats] == [answer.value for answer in answers]
    assert all(repeat.from_cache for repeat in repeats)
    assert len(notices) == 1


def test_a_remote_server_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked at the first request: a client that only reads its cache needs no key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for base_url in (None, "https://llm.example.com/v1"):
        client = LLMClient(LLMSettings(model="m", base_url=base_url))
        assert client.cached(MESSAGES, DescriptionsAnswer) is None
        with pytest.raises(UserError, match="no API key: set OPENAI_API_KEY") as caught:
            client.ask(MESSAGES, DescriptionsAnswer)
        assert caught.value.exit_code == EXIT_BAD_INPUT


def test_settings_come_from_the_environment_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8080/v1")
    monkeypatch.setenv("INTCLIP_LLM_MODEL", "env-model")

    from_env = LLMSettings.from_env(temperature=None)
    overridden = LLMSettings.from_env(model="flag-model", seed=3)

    assert (from_env.model, from_env.base_url) == ("env-model", "http://localhost:8080/v1")
    assert from_env.api_key is not None
    assert from_env.api_key.get_secret_value() == SECRET_KEY
    assert SECRET_KEY not in repr(from_env)
    assert (overridden.model, overridden.seed) == ("flag-model", 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "no LLM model given: pass --model or set INTCLIP_LLM_MODEL"),
        ({"model": "m", "temperature": 5}, "invalid LLM settings: temperature: "),
        ({"model": "m", "base_url": "localhost:8080"}, "invalid LLM settings: base_url: "),
        ({"model": "m", "max_answer_attempts": 0}, "invalid LLM settings: max_answer_attempts"),
    ],
    ids=["no-model", "temperature", "base-url", "attempts"],
)
def test_bad_settings_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], message: str
) -> None:
    monkeypatch.delenv("INTCLIP_LLM_MODEL", raising=False)

    with pytest.raises(UserError) as caught:
        LLMSettings.from_env(**overrides)

    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == EXIT_BAD_INPUT
