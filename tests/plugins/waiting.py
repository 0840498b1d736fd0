"""Waiting for something another process does, with a deadline."""

import time
from collections.abc import Callable


def wait_for(
    condition: Callable[[], object], timeout: float, *, tolerate: tuple[type[BaseException], ...] = ()
) -> bool:
    """True as soon as `condition()` is truthy, False after `timeout` seconds. An exception of a
    `tolerate` kind (a server still starting, say) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except tolerate:
            pass
        time.sleep(0.1)
    return False


def wait_while_running(
    process,
    condition: Callable[[], object],
    timeout: float,
    *,
    name: str,
    log: Callable[[], str],
    tolerate: tuple[type[BaseException], ...] = (),
) -> None:
    """Until `condition()` is truthy, polling every 50 ms: RuntimeError as soon as `process` (a
    Popen, or None before it starts) exits, TimeoutError after `timeout` seconds; both carry
    the end of `log()`. An exception of a `tolerate` kind counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log()[-3000:]}")
        try:
            if condition():
                return
        except tolerate:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{name}: condition not met in {timeout} s\n{log()[-3000:]}")
