"""Which OpenAI-compatible server and model to ask, and how: settings read at the edges.

The API key lives only in a `SecretStr`: it is sent to the server and never written to a file,
a log, an error message or a cache key.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from pipeline.common.errors import EXIT_BAD_INPUT, UserError
from pipeline.common.text import escape_controls

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
MODEL_ENV = "INTCLIP_LLM_MODEL"
SETTINGS_FROM_ENV = {"model": MODEL_ENV, "base_url": BASE_URL_ENV, "api_key": API_KEY_ENV}
# Keyless local servers (llama.cpp, vLLM, Ollama) still get a bearer token: the client insists.
LOCAL_SERVER_API_KEY = "not-needed"

ResponseMode = Literal["auto", "json_schema", "json_object"]


class LLMError(UserError):
    """A request that failed for good: exit 2 for configuration, 3 for the server or the model."""


def one_line(text: str) -> str:
    """Collapse newlines and runs of spaces, so an error stays a single line, and escape the
    control characters left (a server's reply may hold terminal escape sequences)."""
    return escape_controls(" ".join(text.split()))


def describe_validation_error(error: ValidationError) -> str:
    """Pydantic's errors as `location: message; ...`, without the (possibly secret) inputs."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'answer'}: {one_line(item['msg'])}"
        for item in error.errors(include_url=False)
    )


def is_loopback(base_url: str | None) -> bool:
    """Whether the server runs on this machine, where a key is usually not needed."""
    host = urlsplit(base_url).hostname if base_url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LLMSettings(BaseModel):
    """Which server and model to ask, how to sample, and how hard to insist."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key: SecretStr | None = None
    temperature: float = Field(default=0.7, ge=0, le=2)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="longest answer, tokens")
    extra_sampling: dict[str, int | float] = Field(
        default_factory=dict, description="server-specific sampling fields (llama.cpp's top_k...)"
    )
    timeout: float = Field(default=60.0, gt=0, description="seconds per HTTP request")
    response_mode: ResponseMode = "auto"
    max_answer_attempts: int = Field(default=3, ge=1, description="answers asked per request")
    max_transport_attempts: int = Field(default=6, ge=1, description="HTTP tries per answer")
    backoff_initial: float = Field(default=1.0, ge=0, description="first retry delay, seconds")
    backoff_max: float = Field(default=30.0, ge=0, description="longest retry delay, seconds")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, base_url: str | None) -> str | None:
        if base_url is not None and urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return base_url

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMSettings:
        """Settings from the environment variables, overridden by every option that is not None."""
        values = {name: os.environ.get(variable) for name, variable in SETTINGS_FROM_ENV.items()}
        values.update(overrides)
        given = {name: value for name, value in values.items() if value not in (None, "")}
        if "model" not in given:
            raise UserError(f"no LLM model given: pass --model or set {MODEL_ENV}")
        try:
            return cls(**given)
        except ValidationError as err:
            raise UserError(f"invalid LLM settings: {describe_validation_error(err)}") from None

    @property
    def sampling_params(self) -> dict[str, Any]:
        """What changes the answer besides the messages: sent with each request, part of the key.

        Fields OpenAI's API lacks travel in `extra_body`, which the openai client merges into the
        request body as they are."""
        optional = {"seed": self.seed, "max_tokens": self.max_tokens}
        return {
            "temperature": self.temperature,
            **{name: value for name, value in optional.items() if value is not None},
            **({"extra_body": dict(self.extra_sampling)} if self.extra_sampling else {}),
        }

    def client_api_key(self) -> str:
        """The key to send: a loopback server may need none, any other server must get one."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if is_loopback(self.base_url):
            return LOCAL_SERVER_API_KEY
        raise LLMError(
            f"no API key: set {API_KEY_ENV} (a server on localhost, given by --base-url or "
            f"{BASE_URL_ENV}, needs none)",
            EXIT_BAD_INPUT,
        )
