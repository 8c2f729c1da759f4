"""The records of an offline W&B run file (`run-<id>.wandb`), read with W&B's own protobuf
classes, so a test can see what a run logged without an account or a network.

The file is W&B's LevelDB-style log: a 7-byte header (`:W&B`, a 2-byte magic, a version),
then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32C, little-endian length, type:
1 a whole record, 2 first, 3 middle, 4 last part of one).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
WHOLE, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, parts, found = HEADER, [], []
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # the rest of a block too small for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == 0:
            continue
        parts.append(chunk)
        if kind in (WHOLE, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            found.append(record)
            parts = []
    return found


def logged(path: Path) -> dict[str, Any]:
    """{"history": [{key: value}], "config": {key: value}, "summary": {key: value}}."""
    history, config, summary = [], {}, {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "run":
            config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"history": history, "config": config, "summary": summary}


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)
