"""Which signed releases a board accepts from a command: none older than the newest each pipeline
has served (a captured older release sent again is refused), and none signed for device groups
this board is not in.

The newest sequence per pipeline is kept in ``STATE/releases.json`` so a restart remembers it.
Only ``rollback`` goes back, to the model still held in memory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from edge_runtime.bundles.jsonfile import JsonLimitError, read_json
from edge_runtime.bundles.manifest import Bundle, BundleError

log = logging.getLogger(__name__)
LEDGER_FILE = "releases.json"


class ReleaseLedger:
    def __init__(self, state_dir: Path, groups: Sequence[str] = ()) -> None:
        self.path = state_dir / LEDGER_FILE
        self.groups = tuple(groups)
        self._highest = self._read()

    def highest(self, pipeline: str) -> int | None:
        return self._highest.get(pipeline)

    def admit(self, bundle: Bundle, pipeline: str) -> None:
        """BundleError when a signed ``bundle`` is older than what ``pipeline`` has served, or
        signed for groups this device is not in. Unsigned bundles carry no claims to check."""
        if bundle.sequence is None:
            return
        if bundle.groups and not set(bundle.groups) & set(self.groups):
            mine = ", ".join(self.groups) or "none"
            raise BundleError(f"{bundle.name} v{bundle.version} is signed for group(s) "
                              f"{', '.join(bundle.groups)}; this device is in: {mine}")
        highest = self.highest(pipeline)
        if highest is not None and bundle.sequence < highest:
            raise BundleError(f"{bundle.name} v{bundle.version} is an older release (sequence "
                              f"{bundle.sequence}) than pipeline {pipeline} has served "
                              f"({highest}); use rollback to go back")

    def record(self, bundle: Bundle, pipeline: str) -> None:
        """Remember ``bundle``'s sequence as served by ``pipeline`` if it is the newest yet."""
        if bundle.sequence is None or bundle.sequence <= (self.highest(pipeline) or -1):
            return
        self._highest[pipeline] = bundle.sequence
        try:
            self._write()
        except OSError as exc:
            log.warning("cannot record release %d of %s in %s: %s", bundle.sequence, pipeline,
                        self.path, exc.strerror or exc)

    def _read(self) -> dict[str, int]:
        try:
            data = read_json(self.path, str(self.path))
        except FileNotFoundError:
            return {}
        except (OSError, JsonLimitError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("ignoring %s: not a JSON object", self.path)
            return {}
        return {k: v for k, v in data.items()
                if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{LEDGER_FILE}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._highest, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
