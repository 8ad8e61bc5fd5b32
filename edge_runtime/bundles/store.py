"""The bundles a board keeps, the places a ``reload`` may read one from, and the signed releases
it accepts from a command (:mod:`.releases`).

Installed bundles live in ``STATE/bundles/<name>``; a pushed or reloaded pack is unpacked apart,
under ``STATE/incoming``, and only a bundle that now serves is moved into ``STATE/bundles`` (a
refused one must never replace the copy a restart loads). ``reload`` reads from
``STATE/bundles`` and the configured ``commands.bundle_roots`` only: never from wherever a
running bundle happens to sit (its folder may be ``/tmp``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from edge_runtime.bundles.manifest import Bundle, BundleError
from edge_runtime.bundles.releases import ReleaseLedger
from edge_runtime.bundles.resolve import staged_pack

log = logging.getLogger(__name__)
MAX_PATH = 4096


class BundleStore:
    def __init__(self, state_dir: Path, roots: Sequence[Path], trusted_keys: Sequence[Path],
                 groups: Sequence[str] = ()) -> None:
        self.state_dir = state_dir
        self.extra_roots = list(roots)
        self.trusted_keys = list(trusted_keys)
        self.releases = ReleaseLedger(state_dir, groups)

    @property
    def bundles_dir(self) -> Path:
        return self.state_dir / "bundles"

    def roots(self) -> list[Path]:
        """Where ``reload`` may read bundles from, links resolved."""
        return [Path(os.path.realpath(r)) for r in (self.bundles_dir, *self.extra_roots)]

    def check_path(self, raw: str) -> Path:
        """``raw`` resolved, if it lies under an allowed root and exists; BundleError otherwise."""
        if not raw or len(raw) > MAX_PATH or "\0" in raw:
            raise BundleError("'bundle' must be a path")
        path = Path(os.path.realpath(raw))
        if not any(path == r or path.is_relative_to(r) for r in self.roots()):
            raise BundleError(f"bundle path {raw[:200]!r} is outside the places bundles may be "
                              "loaded from")
        if not path.exists():
            raise BundleError(f"bundle {raw[:200]!r} does not exist")
        return path

    def staged(self, archive: Path | bytes, label: str) -> contextlib.AbstractContextManager[Bundle]:
        """The pack unpacked (and its signature verified) in a folder of its own under
        ``STATE/incoming``; whatever is not kept is removed on leaving."""
        return staged_pack(archive, self.state_dir, self.trusted_keys, label, name=label)

    def hold(self, staged: Path, pipeline: str) -> Path:
        """Move a staged bundle aside while it runs in a pipeline's shadow
        (``STATE/shadow/<pipeline>/``); :meth:`keep` or :meth:`drop` it once decided."""
        folder = self.state_dir / "shadow" / pipeline
        self.drop(folder)
        try:
            folder.mkdir(parents=True)
            final = folder / staged.name
            os.rename(staged, final)
        except OSError as exc:
            raise BundleError(f"cannot hold the candidate in {folder}: {exc.strerror or exc}") \
                from None
        return final

    def drop(self, path: Path) -> None:
        """Remove a held candidate's folder (it is not needed any more)."""
        shutil.rmtree(path, ignore_errors=True)

    def remember(self, pipeline: str, bundle: Path) -> None:
        """Note the bundle a pipeline serves from a command, so that a pipeline whose config
        names none (a fresh install) serves it again after a restart."""
        path = self.state_dir / "serving.json"
        try:
            known = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            known = {}
        known = known if isinstance(known, dict) else {}
        known[pipeline] = str(bundle)
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, indent=2) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot note the bundle served in %s: %s", path, exc.strerror or exc)

    def remembered(self, pipeline: str) -> Path | None:
        """The bundle :meth:`remember` noted for ``pipeline``, if it is still installed here."""
        try:
            known = json.loads((self.state_dir / "serving.json").read_text())
        except (OSError, ValueError):
            return None
        value = known.get(pipeline) if isinstance(known, dict) else None
        if not isinstance(value, str):
            return None
        path = Path(value)
        return path if path.is_dir() and path.is_relative_to(self.bundles_dir) else None

    def keep(self, staged: Path) -> Path:
        """Move a bundle now serving into ``STATE/bundles``, replacing an older copy."""
        final = self.bundles_dir / staged.name
        parked = staged.with_name(f"{staged.name}.previous")  # inside staging: removed with it
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                os.rename(final, parked)
            os.rename(staged, final)
        except OSError as exc:
            if parked.exists() and not final.exists():
                with contextlib.suppress(OSError):
                    os.rename(parked, final)
            log.warning("bundle %s serves but could not be kept in %s: %s", staged.name,
                        final.parent, exc.strerror or exc)
            return staged
        return final
