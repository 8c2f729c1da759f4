"""The settings of `intclip-train download`, apart so the CLI can show their defaults without
importing the HTTP client."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from pipeline.common.errors import UserError


class DownloadSettings(BaseModel):
    """How politely and how patiently to fetch; the defaults suit Unsplash's image CDN."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    concurrency: PositiveInt = Field(default=8, description="requests in flight at once")
    timeout: PositiveFloat = Field(
        default=30.0, description="seconds to connect, or to wait for the next bytes"
    )
    deadline: PositiveFloat = Field(
        default=300.0,
        description="seconds a request may take in all, from connecting to the last byte",
    )
    max_attempts: PositiveInt = Field(default=5, description="requests per image, retries included")
    rate: PositiveFloat = Field(default=10.0, description="requests per second, all together")
    max_bytes: PositiveInt = Field(
        default=20 * 2**20, description="largest body accepted, once decompressed"
    )
    resize_short_side: PositiveInt | None = Field(
        default=None, description="store images downscaled to this shorter side (px)"
    )
    only_missing: bool = Field(
        default=False, description="take any file present as done, without decoding it"
    )
    backoff_initial: float = Field(default=1.0, ge=0, description="first retry delay, seconds")
    backoff_max: float = Field(default=60.0, ge=0, description="longest retry delay, seconds")


def download_settings(**values: object) -> DownloadSettings:
    """Validated settings, or one line naming the command-line flag at fault."""
    try:
        return DownloadSettings(**values)
    except ValidationError as err:
        first = err.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise UserError(f"{flag}: {first['msg']}") from None
