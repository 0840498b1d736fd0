"""Config followers (gateway/follower.py) in the test process, on the suite's real Redis."""

import asyncio

import pytest
import redis.asyncio
from django.conf import settings

from gateway.config import public_key_text, signing_key_from_text
from gateway.follower import ConfigFollower
from gateway.settings import GatewaySettings


@pytest.fixture
def loop():
    """One event loop for the followers of a test; Django calls run between its steps, outside
    the loop, on the test's own connection and transaction."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture
def make_follower(monkeypatch, tmp_path, loop):
    """make_follower(node_id) -> a ConfigFollower in this process, on the real Redis, with the
    worker settings of the environment (a test sets more with monkeypatch.setenv first)."""
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)
    monkeypatch.setenv("GATEHOUSE_REDIS_PREFIX", settings.GATEHOUSE_REDIS_PREFIX)
    monkeypatch.setenv(
        "GATEHOUSE_SIGNING_PUBLIC_KEY", public_key_text(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY))
    )
    monkeypatch.setenv("GATEHOUSE_GATEWAY_KEY", settings.GATEHOUSE_GATEWAY_KEY)
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("GATEWAY_WORKER_INDEX", raising=False)
    made: list[ConfigFollower] = []

    def make(node_id: str = "test-node") -> ConfigFollower:
        monkeypatch.setenv("GATEWAY_NODE_ID", node_id)
        worker_settings = GatewaySettings.from_env()
        made.append(ConfigFollower(worker_settings, redis.asyncio.Redis.from_url(worker_settings.redis_url)))
        return made[-1]

    yield make
    for follower in made:
        loop.run_until_complete(follower.client.aclose())
