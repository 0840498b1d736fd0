"""The usage events a worker could not send yet, on disk in its state folder, so that neither
a Redis outage nor a restart during one loses them (issue 11).

The file holds XADD commands as the sink encoded them (gateway/usage.py), each as a 4-byte
big-endian length and the bytes. It is appended to while Redis is unreachable, read back at
start, and deleted once everything in it reached Redis. An event may be sent twice (a crash
between the send and the delete): ingestion is idempotent on the request id, so it is stored
once.
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

    def append(self, commands: list[bytes]) -> None:
        """Write commands at the end of the file and make them durable (fsync)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as spool:
            spool.write(b"".join(_LENGTH.pack(len(command)) + command for command in commands))
            spool.flush()
            os.fsync(spool.fileno())

    def read(self) -> list[bytes]:
        """Every whole command in the file; a record cut short by a crash mid-write is skipped."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        commands, offset = [], 0
        while offset + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            end = offset + _LENGTH.size + length
            if end > len(data):
                log.warning("usage spool %s ends with a record cut short; it is skipped", self.path)
                break
            commands.append(data[offset + _LENGTH.size : end])
            offset = end
        return commands

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
