"""The engines directory on a device: versions side by side, `current` and `previous` pointers.

Activation switches one symbolic link with a rename, which is atomic: a reader resolves either the
old version or the new one, never a half-written state. An entry is activated only when its
manifest loads and its model file matches the manifest's checksum, so a truncated copy never
becomes current. `previous` remembers what `current` was, for one-step rollback.

    ROOT/0.1.0/manifest.json, model.onnx, ...
    ROOT/0.2.0/...
    ROOT/current  -> 0.2.0
    ROOT/previous -> 0.1.0
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge.engines.manifest import ManifestError, ModelManifest, load_manifest

CURRENT: Final = "current"
PREVIOUS: Final = "previous"
_POINTERS: Final = (CURRENT, PREVIOUS)


class StoreError(RuntimeError):
    """An engines directory operation that cannot be done; the message says what and where."""


@dataclass(frozen=True)
class Entry:
    name: str
    manifest: ModelManifest | None  # None when the manifest does not load (problem says why)
    problem: str
    current: bool
    previous: bool


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EngineStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _target(self, pointer: str) -> str | None:
        link = self.root / pointer
        if not link.is_symlink():
            return None
        return Path(os.readlink(link)).name

    @property
    def current(self) -> str | None:
        return self._target(CURRENT)

    @property
    def previous(self) -> str | None:
        return self._target(PREVIOUS)

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: no engines directory")
        current, previous = self.current, self.previous
        out = []
        for path in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()):
            if path.name in _POINTERS or not (path / "manifest.json").exists():
                continue
            try:
                manifest, problem = load_manifest(path), ""
            except ManifestError as exc:
                manifest, problem = None, str(exc)
            out.append(Entry(path.name, manifest, problem, path.name == current, path.name == previous))
        return out

    def check(self, name: str) -> ModelManifest:
        """The entry's manifest, after checking that its model file is the one the manifest names."""
        path = self.root / name
        if name in _POINTERS or not path.is_dir() or path.is_symlink():
            raise StoreError(f"{self.root}: no engine version '{name}'")
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            raise StoreError(str(exc)) from exc
        actual = sha256_of(manifest.model_path)
        if actual != manifest.sha256:
            raise StoreError(
                f"{manifest.model_path}: sha256 {actual[:16]}... does not match the manifest's"
                f" {manifest.sha256[:16]}... (incomplete or altered copy)"
            )
        return manifest

    def _point(self, pointer: str, name: str) -> None:
        """Make ROOT/pointer -> name with one atomic rename."""
        temporary = self.root / f".{pointer}.{os.getpid()}"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        temporary.symlink_to(name, target_is_directory=True)
        os.replace(temporary, self.root / pointer)

    def activate(self, name: str) -> ModelManifest:
        """Make `name` current (checked first); the version it replaces becomes `previous`."""
        manifest = self.check(name)
        old = self.current
        if old == name:
            return manifest
        if old is not None:
            self._point(PREVIOUS, old)
        self._point(CURRENT, name)
        return manifest

    def rollback(self) -> ModelManifest:
        """Swap `current` and `previous`; the version rolled back from stays as `previous`."""
        old, target = self.current, self.previous
        if target is None:
            raise StoreError(f"{self.root}: nothing to roll back to (no '{PREVIOUS}' pointer)")
        manifest = self.check(target)
        self._point(CURRENT, target)
        if old is not None:
            self._point(PREVIOUS, old)
        return manifest
