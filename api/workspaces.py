"""Work folders of uploads under `<data_dir>/ingest/`: private, locked (flock) while their upload
runs, and removed afterwards, or by the next upload once their process died."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["ingest_workspace"]

ORPHAN_AFTER_S = 60  # a folder or file without a lock file, this old: its upload died while starting


def _sweep_workspaces(base: Path) -> None:
    """Remove work folders of dead uploads: their lock file is no longer held by anyone."""
    for lock in base.glob("*.lock"):
        try:
            with lock.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
                lock.unlink(missing_ok=True)
        except (BlockingIOError, FileNotFoundError):
            continue  # a live upload, or one that just finished
    for stale in base.iterdir():
        orphan = not stale.name.endswith(".lock") and not stale.with_suffix(".lock").exists()
        with contextlib.suppress(FileNotFoundError):
            if orphan and time.time() - stale.stat().st_mtime > ORPHAN_AFTER_S:
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)


@contextlib.contextmanager
def ingest_workspace(base: Path) -> Iterator[Path]:
    """A locked, private work folder under `base`; removed afterwards, or by the next upload after a crash.

    The lock file is locked before it gets its `.lock` name, so a sweeper never sees it unlocked
    while its upload lives; the lock dies with the process (SIGKILL included).
    """
    base.mkdir(parents=True, exist_ok=True)
    _sweep_workspaces(base)
    token = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
    pending, lock_path, work = base / f".{token}.new", base / f"{token}.lock", base / token
    fd = os.open(pending, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(pending, lock_path)
        work.mkdir()
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
    finally:
        os.close(fd)
