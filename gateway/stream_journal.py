"""In-flight streams on disk, so a stream cut by a crash is still billed (issue 11, observation 4).

A streamed answer is billed when it ends. A worker killed mid-stream (-9, out of memory, a
host reboot of the container) never reaches that point, yet the provider produced the tokens
the client received. So while a stream is relayed, the worker keeps one small file per stream
in its state folder (`<state>/streams/<server request id>`):

- written once when the relay starts: the usage event as it stands, the price per token at
  the request's moment, a worst-case input estimate and the budget hold to settle;
- then, as chunks go out, a fixed 24-byte header at the start of the file is overwritten in
  place (one pwrite, no fsync) with the tokens counted so far and the time to first token;
- deleted when the stream is settled the normal way.

A worker starting on that state folder (the same node, restarted by its supervisor) finds the
files left behind, turns each into a usage event with the tokens the header last held, billed
at the stored price, status 502 `stream_interrupted`, appends those events to the usage spool
(fsync'd) before deleting the files, and settles the holds. The ledger is idempotent on the
request id, so a crash during recovery bills nothing twice.

Bounds: a process crash loses nothing the header held (the page cache survives the process);
a host crash may lose the last header writes, as no fsync is made per chunk. A node that never
starts again leaves its files unread: its holds are released by reconciliation when they
expire (gateway/budgets.py RESERVATION_SECONDS), and those streams stay unbilled.
"""

import dataclasses
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .budgets import Admission
from .usage import UsageEvent

log = logging.getLogger("gateway.streams")
_HEADER = struct.Struct("<qqd")  # input tokens, output tokens, time to first token (ms; 0: none yet)
INTERRUPTED_STATUS = 502
INTERRUPTED_CODE = "stream_interrupted"


@dataclass(frozen=True, slots=True)
class Interrupted:
    """A stream a previous process of this node did not finish, as it will be billed."""

    event: UsageEvent
    admission: Admission | None


class JournalEntry:
    """The file of one stream being relayed."""

    __slots__ = ("_fd", "_last", "path")

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd
        self._last = (0, 0)

    def progress(self, input_tokens: int, output_tokens: int, ttft_ms: float) -> None:
        """Overwrite the header when the counts moved (one syscall, no fsync)."""
        if (input_tokens, output_tokens) == self._last or self._fd < 0:
            return
        self._last = (input_tokens, output_tokens)
        try:
            os.pwrite(self._fd, _HEADER.pack(input_tokens, output_tokens, ttft_ms), 0)
        except OSError as error:  # a full disk must not break the stream; it only weakens recovery
            log.warning("stream journal %s not updated: %s", self.path.name, error)

    def close(self) -> None:
        """The stream was settled the normal way: nothing to recover."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        self.path.unlink(missing_ok=True)


class StreamJournal:
    def __init__(self, directory: Path):
        self.directory = directory

    def open(
        self,
        event: UsageEvent,
        *,
        input_micros_per_mtok: int,
        output_micros_per_mtok: int,
        input_estimate: int,
        admission: Admission | None,
    ) -> JournalEntry | None:
        """Start the file of a stream; None (and a warning) when the disk refuses it."""
        record = {
            "event": dataclasses.asdict(event),
            "price": [input_micros_per_mtok, output_micros_per_mtok],
            "input_estimate": input_estimate,
            "admission": [admission.hold, admission.amount_micros, admission.keys] if admission else None,
        }
        path = self.directory / _file_name(event.request_id)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, _HEADER.pack(0, 0, 0.0) + orjson.dumps(record))
        except OSError as error:
            log.warning("stream journal for %s not written: %s", event.request_id, error)
            return None
        return JournalEntry(path, fd)

    def interrupted(self) -> list[tuple[Path, Interrupted]]:
        """The streams a previous process left unfinished, ready to bill. Unreadable files are
        reported and skipped (left in place for a person to look at, never retried in a loop)."""
        try:
            paths = sorted(p for p in self.directory.iterdir() if p.is_file() and not p.name.endswith(".bad"))
        except FileNotFoundError:
            return []
        found = []
        for path in paths:
            try:
                found.append((path, _read(path)))
            except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
                log.error("stream journal %s cannot be read (%s); set aside as %s.bad", path.name, error, path.name)
                path.rename(path.with_name(path.name + ".bad"))
        return found


def _file_name(request_id: str) -> str:
    # The server's own request ids are [0-9a-f-]; anything else is made safe for a file name.
    return "".join(c if c.isalnum() or c == "-" else "_" for c in request_id)[:128] or "unnamed"


def _read(path: Path) -> Interrupted:
    data = path.read_bytes()
    input_tokens, output_tokens, ttft_ms = _HEADER.unpack_from(data, 0)
    record: dict[str, Any] = orjson.loads(data[_HEADER.size :])
    event = UsageEvent(**record["event"])
    input_price, output_price = (int(value) for value in record["price"])
    event.input_tokens = max(0, input_tokens) or int(record["input_estimate"])
    event.output_tokens = max(0, output_tokens)
    numerator = event.input_tokens * input_price + event.output_tokens * output_price
    event.cost_micros = -(-numerator // 1_000_000)  # rounded up, as DeploymentConfig.cost_micros
    event.ttft_ms = ttft_ms
    event.status, event.error_code = INTERRUPTED_STATUS, INTERRUPTED_CODE
    held = record["admission"]
    admission = Admission(str(held[0]), int(held[1]), [str(key) for key in held[2]]) if held else None
    return Interrupted(event, admission)
