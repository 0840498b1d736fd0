"""`make run`'s supervisor (scripts/supervisor.py) with real child processes (issue 11,
observation 10): a child that dies is restarted with backoff while the others keep running,
children die with the supervisor even when it is killed with -9, and a taken port is named."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from supervisor import Supervisor, port_in_use  # noqa: E402

from tests.plugins.gateway_workers import free_port  # noqa: E402

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait_for(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_child_that_dies_is_restarted_with_backoff_and_the_others_keep_running(tmp_path):
    lines: list[str] = []
    commands = {"steady": SLEEPER, "crashing": [sys.executable, "-c", "import sys; sys.exit(3)"]}
    supervisor = Supervisor(commands, cwd=tmp_path, env={}, log=lines.append, first_backoff=0.1)
    supervisor.start_all()
    steady_pid = supervisor.children["steady"].process.pid
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            supervisor.tick()
            time.sleep(0.02)
        crashing = supervisor.children["crashing"]
        # Backoff 0.1, 0.2, 0.4, 0.8 s...: a few restarts in 2.5 s, not one per tick.
        assert 2 <= crashing.restarts <= 5, crashing.restarts
        assert set(crashing.history) == {3}
        assert any("crashing exited with status 3; restarting it in 0.1 s" in line for line in lines)
        assert any("restarting it in 0.4 s" in line for line in lines)  # it doubles
        steady = supervisor.children["steady"].process
        assert steady.pid == steady_pid and steady.poll() is None  # untouched
    finally:
        supervisor.stop_all(timeout=5)
    assert supervisor.children["steady"].process.poll() is not None


def test_children_die_with_the_supervisor_even_when_it_is_killed_hard(tmp_path):
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'scripts')!r})\n"
        "from supervisor import Supervisor\n"
        f"s = Supervisor({{'child': {SLEEPER!r}}}, cwd={str(tmp_path)!r}, env={{}}, log=lambda line: None)\n"
        "s.start_all()\n"
        "print(s.children['child'].process.pid, flush=True)\n"
        "while True:\n    s.tick(); time.sleep(0.1)\n"
    )
    supervisor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        child_pid = int(supervisor.stdout.readline())
        assert psutil.pid_exists(child_pid)
        supervisor.send_signal(signal.SIGKILL)  # no chance to stop anything itself
        supervisor.wait(timeout=5)

        def gone() -> bool:
            try:
                return psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        assert wait_for(gone, timeout=5), "the child outlived its supervisor"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def test_a_port_already_taken_is_named_with_the_process_holding_it():
    port = free_port()
    assert port_in_use(port) is None
    listener = (
        "import socket, time\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); print('ready', flush=True)\n"
        "time.sleep(30)"
    )
    holder = subprocess.Popen(  # noqa: S603  (our own fixed script)
        [sys.executable, "-c", listener],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        named = port_in_use(port)
        assert named is not None and named.startswith(f"pid {holder.pid}:") and "socket" in named
    finally:
        holder.kill()
        holder.wait()
