"""REDIS_URL and GATEHOUSE_BROKER_URL forms (gateway/redis_url.py): one server, Sentinel, Cluster."""

import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.broker import kombu_broker
from gateway.redis_cluster_pipe import routing_key
from gateway.redis_keys import RedisKeys
from gateway.redis_url import RedisURLError, parse_redis_url

ROOT = Path(__file__).resolve().parents[1]


def test_a_plain_url_is_one_server():
    location = parse_redis_url("rediss://:secret@cache.internal:6380/2")
    assert (location.mode, location.tls, location.url) == ("single", True, "rediss://:secret@cache.internal:6380/2")
    assert location.describe() == "rediss://cache.internal:6380"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database():
    location = parse_redis_url(
        "redis+sentinel://app:p%40ss@s1:26379,s2,[::1]:26380/gatehouse/3?sentinel_password=canary-sentinel"
    )
    assert location.mode == "sentinel"
    assert location.nodes == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (location.service, location.db) == ("gatehouse", 3)
    assert (location.username, location.password) == ("app", "p@ss")
    assert location.sentinel_password == "canary-sentinel"
    assert "p@ss" not in location.describe() and "canary" not in location.describe()


def test_a_cluster_url_lists_its_first_nodes():
    location = parse_redis_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert (location.mode, location.nodes, location.password) == (
        "cluster",
        (("10.0.0.1", 7000), ("10.0.0.2", 7001)),
        "pw",
    )


@pytest.mark.parametrize(
    "url, message",
    [
        ("memcached://x", "starts with redis://"),
        ("redis+sentinel://s1:26379", "needs the master name"),
        ("redis+sentinel://s1:26379/gatehouse/zero", "must be a number"),
        ("redis+cluster://n1:7000/0", "takes no path"),
        ("redis+cluster://:pw@", "at least one host"),
        ("redis+cluster://n1:port", "is not host:port"),
    ],
)
def test_bad_urls_are_refused_with_a_reason_and_no_password(url, message):
    with pytest.raises(RedisURLError, match=message) as refused:
        parse_redis_url(url)
    assert "pw" not in str(refused.value)


def test_the_broker_url_becomes_kombus_sentinel_form():
    url, options = kombu_broker(parse_redis_url("redis+sentinel://:pw@s1:26379,s2:26380/gatehouse/1"))
    assert url == "sentinel://:pw@s1:26379/1;sentinel://:pw@s2:26380/1"
    assert options == {"master_name": "gatehouse"}
    plain = parse_redis_url("redis://127.0.0.1:6379/0")
    assert kombu_broker(plain) == ("redis://127.0.0.1:6379/0", {})


def test_a_cluster_broker_is_refused_at_start_up():
    """Celery cannot run on a Cluster: the settings say so instead of failing later."""
    env = {
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "DATABASE_URL": "postgresql://root@127.0.0.1:5432/test",
        "REDIS_URL": "redis+cluster://127.0.0.1:7000",
        "DJANGO_DEBUG": "1",
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "GATEHOUSE_BROKER_URL must be one Redis server or Sentinel" in run.stderr


def test_every_key_of_one_org_shares_one_cluster_slot():
    """The admission script touches rate windows, holds and budget counters at once."""
    from redis.crc import key_slot

    keys = RedisKeys("gatehouse", cluster=True)
    org = "3f2a9c4e-0000-4000-8000-000000000001"
    names = [
        keys.rate_window(org, "key-1", "rpm", 29000000),
        keys.rate_window(org, "key-2", "tpm", 29000001),
        keys.budget_holds(org),
        keys.budget(org, "budget-1", "m202612"),
        keys.budget_prefix(org) + "budget-2:total",
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1
    config = [keys.latest, keys.snapshot, keys.snapshot_revision, keys.change_log]
    assert len({key_slot(name.encode()) for name in config}) == 1
    assert key_slot(keys.usage_stream.encode()) == key_slot(f"{keys.usage_stream}:dead".encode())
    other = keys.budget_holds("3f2a9c4e-0000-4000-8000-000000000002")
    assert key_slot(other.encode()) != key_slot(keys.budget_holds(org).encode())  # orgs spread


def test_commands_are_routed_by_their_key():
    assert routing_key(("EVALSHA", "abc", 2, "k1", "k2", "arg")) == "k1"
    assert routing_key(("EVAL", "return 1", 0)) is None
    assert routing_key(("XADD", "stream", "*", "f", "v")) == "stream"
    assert routing_key(("PING",)) is None


def test_one_server_and_sentinel_keep_the_names_of_earlier_releases():
    """No hash tags outside a Cluster: an upgrade finds its counters, config and usage stream."""
    keys = RedisKeys.for_url("gatehouse", "redis+sentinel://s1:26379/gatehouse/0")
    assert (keys.latest, keys.usage_stream, keys.nodes) == (
        "gatehouse:config:latest",
        "gatehouse:usage",
        "gatehouse:fleet:nodes",
    )
    assert keys.budget("org-1", "b-1", "m202612") == "gatehouse:budget:b-1:m202612"
    assert keys.budget_holds("org-1") == "gatehouse:holds:org-1"
    assert keys.rate_window("org-1", "k-1", "rpm", 7) == "gatehouse:rate:rpm:k-1:7"
    assert RedisKeys.for_url("gatehouse", "redis+cluster://n1:7000").latest == "gatehouse:{config}:latest"
