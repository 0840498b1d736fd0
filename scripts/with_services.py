"""Run a command with DATABASE_URL and REDIS_URL set, starting embedded servers for unset ones.

    python scripts/with_services.py CMD [ARG...]

Exits with the command's exit code. Used by `make test`.
"""

import os
import signal
import subprocess
import sys

from services import embedded_services


def main(argv):
    if not argv:
        sys.exit("usage: python scripts/with_services.py CMD [ARG...]")
    with embedded_services() as urls:
        command = subprocess.Popen(argv, env={**os.environ, **urls})
        # Ctrl-C reaches the command directly (same process group); this process only waits for it
        # and then stops the servers. SIGTERM sent to this process alone is passed on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: command.send_signal(signum))
        returncode = command.wait()
    # A command killed by a signal reports -N; shells report 128+N.
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
