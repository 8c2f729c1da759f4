"""The one base of every section of intclip's YAML training config."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class ConfigSection(BaseModel):
    """A section of a YAML config: unknown keys, non-finite numbers and NUL bytes are errors,
    and attribute docstrings are the keys' help text."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _no_nul_bytes(cls, data: Any) -> Any:
        """A NUL byte makes any path unusable; say so here rather than when it is opened."""
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, str) and "\0" in value:
                    raise ValueError(f"{key} contains a NUL byte")
        return data
