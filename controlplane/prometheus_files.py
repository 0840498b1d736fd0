"""prometheus_client's multiprocess mode for the portal under gunicorn.

Each gunicorn worker counts its requests in its own memory-mapped files under
PROMETHEUS_MULTIPROC_DIR, and whichever worker answers /metrics adds up every file, so a scrape
sees the whole portal, not one worker. gunicorn restarts workers (max_requests), and each
restart would leave files behind that every later scrape reads again: when a worker exits, the
master folds its counters and histograms into one archive file per type and deletes its files.
Scrapes read under a shared lock and the fold takes it exclusively, so no scrape ever sees a
worker's counts twice or not at all (a counter going down would read as a reset).

This module imports nothing from Django: gunicorn's master (controlplane/gunicorn.conf.py)
uses it before any application is loaded.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import multiprocess
from prometheus_client.mmap_dict import MmapedDict

LOCK_FILE = ".lock"
FOLDED_TYPES = ("counter", "histogram")  # gauges are not kept in files: /metrics computes them


def directory() -> Path | None:
    """The multiprocess directory, when this process runs in multiprocess mode."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


def prepare(path: Path) -> None:
    """Empty the directory at start-up: files of an earlier run would be counted again."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    with (path / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def reading(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold while collecting: no fold happens meanwhile."""
    return _locked(path, fcntl.LOCK_SH)


def fold_dead_process(path: Path, pid: int) -> None:
    """Add a dead worker's counts to the archives and delete its files (gunicorn's child_exit)."""
    multiprocess.mark_process_dead(pid, str(path))
    with _locked(path, fcntl.LOCK_EX):
        for kind in FOLDED_TYPES:
            dead = path / f"{kind}_{pid}.db"
            if not dead.exists():
                continue
            archive = MmapedDict(str(path / f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(dead)):
                    folded, _ = archive.read_value(key)
                    archive.write_value(key, folded + value, timestamp)
            finally:
                archive.close()
            dead.unlink()
