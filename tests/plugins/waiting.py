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
