"""The last good config on local disk, so a worker can start while Redis is down.

The file holds signed envelopes separated by NUL bytes (JSON never contains a raw NUL): the
full snapshot first, then every delta applied after it. A delta is appended, never followed
by a rewrite of the 30 MB snapshot; the file is rewritten only when the worker loads another
snapshot. Writes run on one background thread in the order they were asked for, so the event
loop never waits on the disk.

A rewrite goes to a temporary file that is fsynced and renamed over the old one: a crash
leaves the old file or the new one. Appends are not fsynced: a crash can lose or tear the last
records. Loading verifies every record and stops at the first that does not verify, so a
worker starts from the revision before it and catches up from Redis; the torn tail is cut off
before the next append.
"""

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("gateway.state_file")

SEPARATOR = b"\0"


class StateFile:
    def __init__(self, path: Path):
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="config-state-file")

    # Writing, in the background --------------------------------------------------------

    def replace(self, envelopes: list[bytes | bytearray]) -> None:
        """Rewrite the file with `envelopes` (a snapshot, then the deltas after it)."""
        self._submit(self._write_all, envelopes)

    def append(self, envelope: bytes) -> None:
        self._submit(self._append, envelope)

    def truncate(self, size: int) -> None:
        """Cut the file to `size` bytes: drops records that did not verify on load."""
        self._submit(self._truncate, size)

    async def flush(self) -> None:
        """Wait until every write asked for so far is done."""
        await asyncio.wrap_future(self._writer.submit(lambda: None))

    def close(self) -> None:
        """Finish the queued writes (blocking); call from a thread or at exit."""
        self._writer.shutdown(wait=True)

    def _submit(self, write: Callable[..., None], *arguments: object) -> None:
        def run() -> None:
            try:
                write(*arguments)
            except OSError:
                # The worker keeps serving from memory; the next snapshot rewrites the file.
                log.exception("could not write the config state file %s", self.path)

        self._writer.submit(run)

    def _write_all(self, envelopes: list[bytes | bytearray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            # Piece by piece: joining a 30 MB snapshot first would hold the GIL while it is copied.
            for index, envelope in enumerate(envelopes):
                handle.write(SEPARATOR + envelope if index else envelope)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def _append(self, envelope: bytes) -> None:
        with open(self.path, "ab") as handle:
            handle.write(SEPARATOR + envelope)

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as handle:
            handle.truncate(size)

    # Reading ---------------------------------------------------------------------------

    def read(self) -> list[tuple[bytes, int]]:
        """Every record with the file offset where it ends; empty if there is no file."""
        try:
            content = self.path.read_bytes()
        except OSError:
            return []
        records, end = [], -1
        for record in content.split(SEPARATOR):
            end += len(SEPARATOR) + len(record)
            records.append((record, end))
        return records
