"""The file store: bytes kept by their SHA-256, written atomically, shared between jobs.

One small interface (:class:`Storage`) so a deployment on several machines can swap the local
folder for object storage. Files are only ever named by their hash and the extension we chose;
a name a browser sent never becomes a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

_HASH = re.compile(r"^[0-9a-f]{64}$")
_EXT = re.compile(r"^[a-z0-9]{1,5}$")


class Storage(Protocol):
    def put(self, data: bytes, ext: str) -> str: ...
    def path(self, sha256: str, ext: str) -> Path: ...
    def exists(self, sha256: str, ext: str) -> bool: ...
    def read(self, sha256: str, ext: str) -> bytes: ...
    def delete(self, sha256: str, ext: str) -> None: ...
    def check_writable(self) -> None: ...


class LocalStorage:
    """Files under ``root/ab/cd/<sha256>.<ext>``; temp file, fsync, rename: each write is whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str, ext: str) -> Path:
        if not _HASH.match(sha256) or not _EXT.match(ext):
            raise ValueError("bad file key")
        return self.root / sha256[:2] / sha256[2:4] / f"{sha256}.{ext}"

    def put(self, data: bytes, ext: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha, ext)
        if target.exists():
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return sha

    def exists(self, sha256: str, ext: str) -> bool:
        return self.path(sha256, ext).exists()

    def read(self, sha256: str, ext: str) -> bytes:
        return self.path(sha256, ext).read_bytes()

    def delete(self, sha256: str, ext: str) -> None:
        self.path(sha256, ext).unlink(missing_ok=True)

    def check_writable(self) -> None:
        probe = self.root / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()

    def sweep_temp_files(self) -> int:
        """Remove temp files a crash left mid-write; called at start."""
        removed = 0
        for tmp in self.root.glob("*/*/.tmp-*"):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed

    def all_keys(self) -> set[tuple[str, str]]:
        keys: set[tuple[str, str]] = set()
        for p in self.root.glob("*/*/*.*"):
            if not p.name.startswith("."):
                sha, _, ext = p.name.partition(".")
                keys.add((sha, ext))
        return keys


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
