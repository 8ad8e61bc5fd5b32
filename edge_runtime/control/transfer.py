"""Receiving a bundle over MQTT (``edge/D/cmd/deploy``), possibly in chunks.

Wire format (JSON, one message per chunk)::

    {"id": "<reply id>", "transfer": "<transfer id>", "name": "digits", "version": "2",
     "sha256": "<of the archive>", "size": 123456, "chunk": 0, "chunks": 3,
     "data": "<base64>", "pipeline": "default"}

Chunks are assembled in memory. Anyone who can publish on the command topic can send them, so
every transfer is bounded: the bytes it holds never exceed its announced size (a chunk sent again
must be the same bytes, and is then ignored), its chunk count fits that size, ``chunks`` cannot
change once announced, and a transfer that goes quiet for ``idle_timeout_s`` is dropped with a
reply saying which chunks never came. There are ``MAX_TRANSFERS`` slots; when all are taken, a
new transfer takes the slot of one that has been quiet for ``STALE_S`` (that one is told why), so
abandoned junk cannot lock a real deploy out. Once the last chunk is in, the archive's sha256 is
checked and it is handed back to be installed; only then is there a reply, so one deploy gets one
reply, ``ok: false`` with the reason when anything was refused.
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
MIN_CHUNK_BYTES = 1024  # edge-convert deploy's smallest --chunk-size
STALE_S = 2.0
DEFAULT_IDLE_TIMEOUT_S = 30.0
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass
class Transfer:
    meta: dict[str, Any]
    chunks_total: int
    reply_id: Any
    chunks: dict[int, bytes] = field(default_factory=dict)
    held_bytes: int = 0
    last: float = field(default_factory=time.monotonic)

    def missing(self) -> str:
        absent = [i for i in range(self.chunks_total) if i not in self.chunks]
        shown = ", ".join(str(i) for i in absent[:5]) + (" …" if len(absent) > 5 else "")
        return f"{len(absent)} of {self.chunks_total} chunk(s) never arrived ({shown})"


@dataclass(frozen=True)
class Abandoned:
    """A transfer dropped without a message of its own to answer: who to tell, and why."""

    reply_id: Any
    error: str


class DeployAssembler:
    """Collects chunks; returns the complete archive once every chunk is in."""

    def __init__(self, max_bytes: int, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> None:
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self._transfers: dict[str, Transfer] = {}
        self._abandoned: list[Abandoned] = []

    @property
    def held_bytes(self) -> int:
        return sum(t.held_bytes for t in self._transfers.values())

    def add(self, args: dict[str, Any], reply_id: Any = None,
            ) -> tuple[dict[str, Any], bytes] | None:
        self._abandoned.extend(self.expire())
        meta = self._meta(args)
        chunks = expect(args, "chunks", int)
        chunks = 1 if chunks is None else chunks
        chunk = expect(args, "chunk", int) or 0
        most = max(1, -(-meta["size"] // MIN_CHUNK_BYTES))
        if not 1 <= chunks <= most:
            raise CommandRefused(f"'chunks' {chunks} does not fit a {meta['size']}-byte bundle "
                                 f"(1 to {most}, at least {MIN_CHUNK_BYTES} bytes a chunk)")
        if not 0 <= chunk < chunks:
            raise CommandRefused(f"chunk {chunk} of {chunks} is out of range")
        try:
            data = base64.b64decode(expect(args, "data", str, required=True), validate=True)
        except (binascii.Error, ValueError):
            raise CommandRefused("'data' is not valid base64") from None
        transfer = self._transfer(meta, chunks, reply_id)
        self._store(transfer, chunk, data)
        if len(transfer.chunks) < chunks:
            return None
        del self._transfers[meta["id"]]
        archive = b"".join(transfer.chunks[i] for i in range(chunks))
        transfer.chunks.clear()
        if len(archive) != meta["size"]:
            raise CommandRefused(f"received {len(archive)} bytes, expected {meta['size']}")
        if hashlib.sha256(archive).hexdigest() != meta["sha256"]:
            raise CommandRefused("sha256 of the received archive does not match")
        return meta, archive

    def take_abandoned(self) -> list[Abandoned]:
        """Transfers dropped since the last call (timed out or evicted), to be answered."""
        taken, self._abandoned = self._abandoned, []
        return taken

    def expire(self, now: float | None = None) -> list[Abandoned]:
        """Drop the transfers quiet for longer than the idle timeout; who to tell and why."""
        now = time.monotonic() if now is None else now
        gone = []
        for key, t in list(self._transfers.items()):
            if now - t.last > self.idle_timeout_s:
                del self._transfers[key]
                gone.append(Abandoned(t.reply_id, f"transfer {key} timed out after "
                                      f"{self.idle_timeout_s:g} s without a chunk: "
                                      f"{t.missing()}"))
        return gone

    def _store(self, transfer: Transfer, chunk: int, data: bytes) -> None:
        key = transfer.meta["id"]
        held = transfer.chunks.get(chunk)
        if held is not None:
            if held != data:
                self._abort(key)
                raise CommandRefused(f"chunk {chunk} came again with different data; "
                                     f"transfer {key} aborted")
            transfer.last = time.monotonic()
            return  # a redelivered copy (QoS 1): nothing new to hold
        if transfer.held_bytes + len(data) > transfer.meta["size"]:
            self._abort(key)
            raise CommandRefused(f"more data than the announced size {transfer.meta['size']}; "
                                 f"transfer {key} aborted")
        transfer.chunks[chunk] = data
        transfer.held_bytes += len(data)
        transfer.last = time.monotonic()

    def _abort(self, key: str) -> None:
        self._transfers.pop(key, None)

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
                "pipeline": args.get("pipeline"),
                **{k: args[k] for k in ("mode", "promote", "criteria", "every") if k in args}}

    def _transfer(self, meta: dict[str, Any], chunks: int, reply_id: Any) -> Transfer:
        key = meta["id"]
        current = self._transfers.get(key)
        if current is not None:
            if current.meta["sha256"] != meta["sha256"] or current.meta["size"] != meta["size"]:
                raise CommandRefused("chunk does not belong to the transfer with this id")
            if current.chunks_total != chunks:
                self._abort(key)
                raise CommandRefused(f"'chunks' changed from {current.chunks_total} to {chunks} "
                                     f"mid-transfer; transfer {key} aborted")
            if reply_id is not None:
                current.reply_id = reply_id
            return current
        if len(self._transfers) >= MAX_TRANSFERS:
            self._evict_stale()
        transfer = Transfer(meta, chunks, reply_id)
        self._transfers[key] = transfer
        return transfer

    def _evict_stale(self) -> None:
        now = time.monotonic()
        key, stalest = min(self._transfers.items(), key=lambda kv: kv[1].last)
        if now - stalest.last < STALE_S:
            raise CommandRefused(f"{MAX_TRANSFERS} deployments are in progress; try again later")
        del self._transfers[key]
        self._abandoned.append(Abandoned(stalest.reply_id, f"transfer {key} was dropped after "
                                         f"{now - stalest.last:.1f} s without a chunk, for a "
                                         f"newer one: {stalest.missing()}"))
