"""Receiving a bundle over MQTT (``edge/D/cmd/deploy``), possibly in chunks.

Wire format (JSON, one message per chunk)::

    {"id": "<reply id>", "transfer": "<transfer id>", "name": "digits", "version": "2",
     "sha256": "<of the archive>", "size": 123456, "chunk": 0, "chunks": 3,
     "data": "<base64>", "pipeline": "default"}

Chunks are assembled in memory (bounded in size, count and age); once the last one arrives the
archive's sha256 is checked, it is unpacked into the state dir (signature verified against the
trusted keys) and installed with the same health check as ``reload``. Only then is there a reply,
so one deploy gets one reply, ``ok: false`` with the reason when anything was refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.control.dispatcher import CommandRefused, expect

MAX_TRANSFERS = 2
TRANSFER_TTL_S = 120.0
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass
class Transfer:
    meta: dict[str, Any]
    chunks: dict[int, bytes] = field(default_factory=dict)
    received_bytes: int = 0
    started: float = field(default_factory=time.monotonic)


class DeployAssembler:
    """Collects chunks; returns the complete archive once every chunk is in."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._transfers: dict[str, Transfer] = {}

    def add(self, args: dict[str, Any]) -> tuple[dict[str, Any], bytes] | None:
        self._expire()
        meta = self._meta(args)
        chunk = expect(args, "chunk", int) or 0
        chunks = expect(args, "chunks", int) or 1
        if not 0 <= chunk < chunks or chunks > 100_000:
            raise CommandRefused(f"chunk {chunk} of {chunks} is out of range")
        try:
            data = base64.b64decode(expect(args, "data", str, required=True), validate=True)
        except (binascii.Error, ValueError):
            raise CommandRefused("'data' is not valid base64") from None
        transfer = self._transfer(meta, chunks)
        if chunk not in transfer.chunks:
            transfer.received_bytes += len(data)
        if transfer.received_bytes > meta["size"]:
            self._transfers.pop(meta["id"], None)
            raise CommandRefused("more data than the announced size")
        transfer.chunks[chunk] = data
        if len(transfer.chunks) < chunks:
            return None
        del self._transfers[meta["id"]]
        archive = b"".join(transfer.chunks[i] for i in range(chunks))
        if len(archive) != meta["size"]:
            raise CommandRefused(f"received {len(archive)} bytes, expected {meta['size']}")
        if hashlib.sha256(archive).hexdigest() != meta["sha256"]:
            raise CommandRefused("sha256 of the received archive does not match")
        return meta, archive

    def _meta(self, args: dict[str, Any]) -> dict[str, Any]:
        transfer_id = expect(args, "transfer", str)
        if not transfer_id or not _ID.match(transfer_id):
            raise CommandRefused("'transfer' must be 1-64 letters, digits or ._:-")
        sha = expect(args, "sha256", str, required=True)
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise CommandRefused("'sha256' must be 64 lowercase hex digits")
        size = expect(args, "size", int, required=True)
        if not 0 < size <= self.max_bytes:
            raise CommandRefused(f"bundle size {size} is over the {self.max_bytes}-byte limit")
        return {"id": transfer_id, "sha256": sha, "size": size,
                "name": str(args.get("name", ""))[:64], "version": str(args.get("version", ""))[:32],
                "pipeline": args.get("pipeline")}

    def _transfer(self, meta: dict[str, Any], chunks: int) -> Transfer:
        current = self._transfers.get(meta["id"])
        if current is not None:
            if current.meta["sha256"] != meta["sha256"] or current.meta["size"] != meta["size"]:
                raise CommandRefused("chunk does not belong to the transfer with this id")
            return current
        if len(self._transfers) >= MAX_TRANSFERS:
            raise CommandRefused("too many deployments in progress; try again later")
        transfer = Transfer(meta)
        self._transfers[meta["id"]] = transfer
        return transfer

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._transfers.items() if now - t.started > TRANSFER_TTL_S]:
            del self._transfers[key]
