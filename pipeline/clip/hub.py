"""Whether open_clip's pretrained weights can be fetched right now, decided in seconds.

Without network, huggingface_hub retries each candidate file for about a minute before it
fails; a CLIP tag then costs that minute only to end in the advice to pass a local file. So a
short connection probe (or `HF_HUB_OFFLINE`) decides first, and an offline machine gets the
advice at once, or the copy already in the Hugging Face cache.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
OFFLINE_VALUES = {"1", "on", "yes", "true"}
# open_clip's file names: a hub id without a file means the default .bin, and a .safetensors
# twin of the file is looked for first
HF_DEFAULT_WEIGHTS = "open_clip_pytorch_model.bin"
HF_DEFAULT_SAFE_WEIGHTS = "open_clip_model.safetensors"


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` set to a true value, as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def source_url(tag_config: dict[str, Any]) -> str:
    """Where open_clip would fetch a tag's weights from: the hub when the tag has an entry."""
    if tag_config.get("hf_hub"):
        return os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT)
    return str(tag_config.get("url", ""))


def why_unreachable(url: str) -> str | None:
    """None when `url`'s host accepts a connection within PROBE_TIMEOUT_S, else why not."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    parts = urlsplit(url)
    if not parts.hostname:
        return f"no download address for it ({url!r})"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return f"{parts.hostname} is unreachable: {err.strerror or err}"


def cached_hub_file(tag_config: dict[str, Any]) -> Path | None:
    """The tag's weights from the local Hugging Face cache, safetensors first, if there."""
    hub_entry = tag_config.get("hf_hub")
    if not hub_entry:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(hub_entry)
    filename = filename or HF_DEFAULT_WEIGHTS
    if filename == HF_DEFAULT_WEIGHTS:
        candidates = [HF_DEFAULT_SAFE_WEIGHTS, filename]
    elif filename.endswith((".bin", ".pth")):
        candidates = [filename[:-4] + ".safetensors", filename]
    else:
        candidates = [filename]
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id, candidate)
        if isinstance(found, str):
            return Path(found)
    return None
