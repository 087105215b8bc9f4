"""Reading an offline W&B run's `.wandb` file back, for tests.

wandb >= 0.19 writes runs from its Go core and no longer ships the Python reader of this file
(`wandb.sdk.internal.datastore`). The file is a LevelDB-style log: a 7-byte header (":W&B", magic
0xBEE1, version 0), then 32 KiB blocks of chunks, each chunk a 7-byte header (CRC-32, little-endian
length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes; a block's tail shorter than a header
is padding. The chunks of a record joined are one `wandb_internal_pb2.Record`, parsed with wandb's
own protobuf classes.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

HEADER, BLOCK, CHUNK = 7, 32 * 1024, 7


def records(path: Path):
    """Every Record of the file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    at, pending = HEADER, b""
    while at + CHUNK <= len(data):
        if BLOCK - at % BLOCK < CHUNK:  # padding at the end of a block
            at += BLOCK - at % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[at:at + CHUNK])
        chunk = data[at + CHUNK:at + CHUNK + length]
        at += CHUNK + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history(run_folder: Path) -> dict[int, dict]:
    """{step: {key: value}} of an offline run folder's history rows."""
    (path,) = Path(run_folder).glob("*.wandb")
    out: dict[int, dict] = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            out.setdefault(int(items["_step"]), {}).update(items)
    return out


def config(run_folder: Path) -> dict:
    """The run's config ({key: value}): the run record's, then any later config records' updates."""
    (path,) = Path(run_folder).glob("*.wandb")
    out: dict = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in updates:
            out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def summary(run_folder: Path) -> dict:
    """The run's summary ({key: value}) after its last summary record."""
    (path,) = Path(run_folder).glob("*.wandb")
    out: dict = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
