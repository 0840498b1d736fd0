"""The usage events a worker has not sent yet, on disk in its state folder, so that neither a
Redis outage, nor a restart during one, nor a worker killed at any moment loses them.

Three files hold XADD commands as the sink encoded them (gateway/usage.py), each as a 4-byte
big-endian length and the bytes:
- the log (`usage.log`): every event, written when it is emitted, before its answer goes out
  (one write to the kernel, no fsync: a killed process loses nothing, a machine that loses
  power may lose the last ones);
- the batch in flight (`usage.sending`): the log, renamed when a send starts, deleted when Redis
  took it;
- the spool (`usage.spool`): what Redis could not take, fsync'd, kept until it could.
All three are read back at start. An event may be sent twice (a crash between a send and a
delete): ingestion is idempotent on the request id, so it is stored once.
"""

import logging
import os
import struct
from pathlib import Path

log = logging.getLogger("gateway.usage")
_LENGTH = struct.Struct(">I")


class UsageSpool:
    def __init__(self, path: Path):
        self.path = path
        self.log_path, self.sending_path = path.with_suffix(".log"), path.with_suffix(".sending")
        self._log: int | None = None  # the log's file descriptor, opened at the first event
        self._log_failing = False  # a failure is logged once, until a write succeeds again

    def log(self, command: bytes) -> None:
        """Record an emitted event (see the module docstring): one write(2), on the event loop.
        A disk that refuses it (full, read-only) is logged, and the event is kept in memory
        only: the request it belongs to is answered all the same."""
        try:
            if self._log is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._log = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(self._log, _LENGTH.pack(len(command)) + command)
        except OSError as error:
            if not self._log_failing:
                log.error("usage events cannot be logged to %s, kept in memory only: %s", self.log_path, error)
            self._log_failing = True
        else:
            self._log_failing = False

    def cut(self) -> None:
        """A send starts: what the log holds is the batch in flight."""
        if self._log is not None:
            os.close(self._log)
            self._log = None
            os.replace(self.log_path, self.sending_path)

    def sent(self) -> None:
        """The batch in flight reached Redis, or the spool holds it now."""
        self.sending_path.unlink(missing_ok=True)

    def recover(self) -> list[bytes]:
        """At start: everything not known to be in Redis, gathered in the spool (durably)."""
        logged = [*_records(self.sending_path), *_records(self.log_path)]
        if logged:
            self.append(logged)
            self.sent()
            self.log_path.unlink(missing_ok=True)
        return self.read()

    def append(self, commands: list[bytes]) -> None:
        """Write commands at the end of the file and make them durable (fsync)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as spool:
            spool.write(b"".join(_LENGTH.pack(len(command)) + command for command in commands))
            spool.flush()
            os.fsync(spool.fileno())

    def read(self) -> list[bytes]:
        """Every whole command in the spool; a record cut short by a crash mid-write is skipped."""
        return _records(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _records(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    commands, offset = [], 0
    while offset + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        end = offset + _LENGTH.size + length
        if end > len(data):
            log.warning("usage file %s ends with a record cut short; it is skipped", path)
            break
        commands.append(data[offset + _LENGTH.size : end])
        offset = end
    return commands
