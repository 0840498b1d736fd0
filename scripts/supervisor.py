"""The process supervisor behind `make run` (scripts/run.py), kept apart so it can be tested.

- Each child runs in its own process group, so a group signal also reaches its own
  subprocesses (the Celery worker's pool).
- A child that exits is started again after a backoff: RESTART_FIRST_SECONDS, doubling up to
  RESTART_MAX_SECONDS, back to the first once the child has run RESTART_RESET_SECONDS.
  Every exit and restart is logged, and the other children keep running.
- Each child gets SIGTERM when the supervisor dies, even by SIGKILL (Linux PR_SET_PDEATHSIG),
  so a `make run` killed hard leaves no orphan holding its ports.
- `port_in_use` names the process holding a port, for a clear error before anything starts.
"""

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
RESTART_RESET_SECONDS = 60.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent (the supervisor) dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = RESTART_FIRST_SECONDS
    restart_at: float | None = None  # when an exited child is due to start again
    history: list[int] = field(default_factory=list)  # exit statuses, newest last


class Supervisor:
    def __init__(
        self,
        commands: dict[str, list[str]],
        *,
        cwd: Path,
        env: dict[str, str],
        log: Callable[[str], None],
        first_backoff: float = RESTART_FIRST_SECONDS,
    ):
        self.cwd, self.env, self.log, self.first_backoff = cwd, env, log, first_backoff
        self.children = {name: Child(name, command, backoff=first_backoff) for name, command in commands.items()}

    def start_all(self) -> None:
        for child in self.children.values():
            self._start(child)

    def _start(self, child: Child) -> None:
        self.log(f"starting {child.name}: {' '.join(child.command)}")
        child.process = subprocess.Popen(
            child.command, cwd=self.cwd, env=self.env, process_group=0, preexec_fn=_die_with_parent
        )
        child.started_at, child.restart_at = time.monotonic(), None

    def tick(self) -> None:
        """Notice children that exited and start those whose backoff is over."""
        now = time.monotonic()
        for child in self.children.values():
            process = child.process
            if child.restart_at is None and process is not None and process.poll() is not None:
                child.history.append(process.returncode)
                if now - child.started_at >= RESTART_RESET_SECONDS:
                    child.backoff = self.first_backoff  # it ran a while: not a crash loop
                child.restart_at = now + child.backoff
                self.log(
                    f"{child.name} exited with status {process.returncode}; restarting it in {child.backoff:g} s "
                    "(the others keep running)"
                )
                child.backoff = min(child.backoff * 2, RESTART_MAX_SECONDS)
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)

    def stop_all(self, timeout: float) -> None:
        running = [child for child in self.children.values() if child.process and child.process.poll() is None]
        for child in running:
            self.log(f"stopping {child.name}")
            signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in running:
            try:
                child.process.wait(timeout=max(0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{child.name} did not stop within {timeout:g} s; killing it")
                signal_group(child.process, signal.SIGKILL)
                child.process.wait()


def signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signum)


def port_in_use(port: int, host: str = "127.0.0.1") -> str | None:
    """None if `port` is free; else what holds it ("pid 123: python manage.py runserver ...")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return None
        except OSError:
            pass
    with contextlib.suppress(psutil.Error):
        for connection in psutil.net_connections(kind="tcp"):
            if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
                if connection.pid is None:
                    break
                with contextlib.suppress(psutil.Error):
                    command = " ".join(psutil.Process(connection.pid).cmdline())
                    return f"pid {connection.pid}: {command[:200]}"
                return f"pid {connection.pid}"
    return "another process"
