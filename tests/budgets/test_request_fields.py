"""The request log's fields on their way from the gateway to the ledger (issue 15): the caller's
address and user agent, and per upstream attempt its provider and why it happened."""

import ipaddress
import json
import socket
import time
import uuid
from decimal import Decimal

import httpx
import pytest

from budgets import ingestion
from budgets.ingestion import ingest_batch
from budgets.models import UsageRecord
from fleet import services
from fleet.changes import record_config_change
from gateway.usage import MAX_USER_AGENT_LENGTH, TrustedProxies, UsageEvent, client_ip, user_agent
from keys.services import create_credential, issue_key
from sla.models import SlaPolicy
from sla.services import create_deployment, create_route
from tests.budgets.test_dead_letters import (
    dead_letters,
    drain,
    emit,
    gateway_fields,
    ledger,  # noqa: F401  (fixture)
)

BODY = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
TRUSTED = "127.0.0.0/8, 10.0.0.0/8, 2001:db8:f::/48"
CONTROLS = {*range(0x20), *range(0x7F, 0xA0)}


def ledger_rows(count: int, timeout: float = 10) -> dict[str, UsageRecord]:
    """Ingest until `count` rows are new; the ledger's rows by the caller's X-Request-Id."""
    deadline = time.monotonic() + timeout
    inserted = 0
    while inserted < count and time.monotonic() < deadline:
        inserted += ingest_batch("test-consumer", 100, block_ms=200).inserted
    assert inserted == count
    return {record.client_request_id: record for record in UsageRecord.objects.all()}


def ask(worker, key: str, request_id: str, model: str = "gpt-4o", headers=()) -> httpx.Response:
    return httpx.post(
        f"{worker.url}/v1/chat/completions",
        json={"model": model, **BODY},
        headers=[("Authorization", f"Bearer {key}"), ("X-Request-Id", request_id), *headers],
        timeout=30,
    )


# The user agent, as the gateway cleans it --------------------------------------------------


def test_a_user_agent_real_clients_send_is_kept_as_it_is():
    assert user_agent("OpenAI/Python 1.54.0") == "OpenAI/Python 1.54.0"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("sdk\x00/1\x1b[2J\x7f.0\t", "sdk/1[2J.0"),  # NUL, escape, DEL, tab
        ("sdk\ud800/\udfff1", "sdk/1"),  # lone surrogates (text that never was header bytes)
        ("caf\u00c3\u00a9/1", "caf\u00e9/1"),  # UTF-8 sent in a header, which ASGI gives as Latin-1
        ("sdk\u00c2\u0085/1\u00ff", "sdk/1\ufffd"),  # a C1 control (NEL) in UTF-8; an undecodable byte
        ("x" * 10_000, "x" * MAX_USER_AGENT_LENGTH),
        ("\x00" * 10_000, ""),
    ],
    ids=["controls", "surrogates", "utf-8", "c1-and-undecodable", "10-kB", "10-kB-of-nul"],
)
def test_a_hostile_user_agent_is_cleaned_and_cut(header, expected):
    assert user_agent(header) == expected


# The client's address ------------------------------------------------------------------------


def scope(peer: str | None, *forwarded: str) -> dict:
    return {
        "client": (peer, 52000) if peer is not None else None,
        "headers": [(b"user-agent", b"sdk"), *((b"x-forwarded-for", value.encode()) for value in forwarded)],
    }


@pytest.mark.parametrize(
    ("request_scope", "expected"),
    [
        (scope("203.0.113.5", "198.51.100.1"), "203.0.113.5"),  # nobody is trusted: the peer
        (scope(None), ""),  # a Unix socket: no address
    ],
)
def test_without_trusted_proxies_the_peer_is_the_client(request_scope, expected):
    assert client_ip(request_scope, TrustedProxies()) == expected


@pytest.mark.parametrize(
    ("request_scope", "expected"),
    [
        (scope("10.0.0.2", "203.0.113.9"), "203.0.113.9"),
        (scope("10.0.0.2", "198.51.100.66, 203.0.113.9, 10.0.0.7"), "203.0.113.9"),  # the left one is the caller's
        (scope("10.0.0.2", "198.51.100.66", "203.0.113.9"), "203.0.113.9"),  # HAProxy adds a header line
        (scope("10.0.0.2", "[2001:db8::9]:4711, 10.0.0.7"), "2001:db8::9"),
        (scope("10.0.0.2", "203.0.113.9:4711"), "203.0.113.9"),
        (scope("10.0.0.2", "10.0.0.8, 10.0.0.7"), "10.0.0.8"),  # every hop trusted: the farthest
        (scope("10.0.0.2", "unknown, 10.0.0.7"), ""),  # the caller's hop is not an address
        (scope("10.0.0.2", "203.0.113.9, unknown"), ""),
        (scope("10.0.0.2"), "10.0.0.2"),  # the proxy's own request (a health check)
        (scope("203.0.113.5", "198.51.100.1"), "203.0.113.5"),  # not a trusted peer: its header is ignored
        (scope("2001:db8:f::1", "203.0.113.9"), "203.0.113.9"),
        (scope("::ffff:10.0.0.2", "::ffff:203.0.113.9"), "203.0.113.9"),  # a dual-stack socket
        (scope("not an address", "203.0.113.9"), "not an address"),  # as the server gave it; the ledger stores null
    ],
)
def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client(request_scope, expected):
    assert client_ip(request_scope, TrustedProxies.from_text(TRUSTED)) == expected


def test_the_addresses_a_worker_remembers_are_bounded():
    trusted = TrustedProxies.from_text("10.0.0.0/8")
    for number in range(TrustedProxies.REMEMBERED + 100):  # a caller sending a new address each time
        forwarded = f"198.51.{number // 256}.{number % 256}"
        assert client_ip(scope("10.0.0.2", forwarded), trusted) == forwarded
    assert len(trusted._seen) <= TrustedProxies.REMEMBERED


def test_trusted_proxies_are_read_as_networks():
    assert TrustedProxies.from_text("").networks == ()
    assert TrustedProxies.from_text(" 10.1.2.3 ,2001:db8::/32,").networks == (
        ipaddress.ip_network("10.1.2.3/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_a_trusted_proxy_that_is_not_a_network_stops_the_worker_at_start():
    with pytest.raises(SystemExit) as stopped:
        TrustedProxies.from_text("10.0.0.0/8,10.0.0.0/33")
    assert str(stopped.value) == "GATEWAY_TRUSTED_PROXIES: '10.0.0.0/33' is not an IP address or CIDR network."


# Ingestion -----------------------------------------------------------------------------------


def test_an_event_written_before_these_fields_still_ingests(ledger):  # noqa: F811
    attempts = [{"deployment_id": "", "status": 200, "error_code": "", "latency_ms": 5.0}]
    emit(ledger["redis"], gateway_fields(ledger, request_id="old-gateway", attempts=attempts))  # no new field
    assert [(result.inserted, result.dead_lettered) for result in drain()] == [(1, 0)]
    record = UsageRecord.objects.get(request_id="old-gateway")
    assert (record.client_ip, record.user_agent, record.attempts) == (None, "", attempts)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ({"client_ip": "203.0.113.9", "user_agent": "sdk/1"}, ("203.0.113.9", "sdk/1")),
        ({"client_ip": "2001:DB8:0::9", "user_agent": "sdk\\1"}, ("2001:db8::9", "sdk\\1")),
        ({"client_ip": "fe80::1%eth0"}, ("fe80::1", "")),  # inet takes no zone
        ({"client_ip": "not-an-ip"}, (None, "")),
        ({"client_ip": "999.1.1.1"}, (None, "")),
        ({"client_ip": b"\x00" * 10_000}, (None, "")),
        ({"user_agent": b"sdk\x00/1\x07"}, (None, "sdk/1")),
        ({"user_agent": b"sdk/\xed\xa0\x80\xff"}, (None, "sdk/\ufffd\ufffd\ufffd\ufffd")),  # a surrogate in bytes
        ({"user_agent": "sdk/\\udc80"}, (None, "sdk/\\udc80")),  # as the gateway escapes a lone surrogate
        ({"user_agent": b"\xc2\x85" * 5_000}, (None, "")),  # 10 kB of a C1 control
        ({"user_agent": "\u00e9" * 5_000}, (None, "\u00e9" * 200)),
    ],
    ids=[
        "ipv4",
        "ipv6",
        "ipv6-zone",
        "not-an-ip",
        "octet-out-of-range",
        "10-kB-of-nul",
        "nul",
        "undecodable",
        "escaped-surrogate",
        "10-kB-of-c1",
        "10-kB-of-text",
    ],
)
def test_odd_client_fields_are_cleaned_never_dead_lettered(ledger, sent, stored):  # noqa: F811
    fields = gateway_fields(ledger, request_id="odd", **{"client_ip": "", "user_agent": "", **sent})
    emit(ledger["redis"], gateway_fields(ledger, request_id="before"))
    emit(ledger["redis"], fields)
    emit(ledger["redis"], gateway_fields(ledger, request_id="after"))
    assert sum(result.inserted for result in drain()) == 3
    assert dead_letters(ledger["redis"]) == []
    record = UsageRecord.objects.get(request_id="odd")
    assert (record.client_ip, record.user_agent) == stored


def gateway_event(**fields) -> UsageEvent:
    deployments = [str(uuid.uuid4()), str(uuid.uuid4())]
    attempts = [
        {"deployment_id": deployments[0], "provider": "openai", "status": 504, "error_code": "upstream_timeout",
         "latency_ms": 300.5},
        {"deployment_id": deployments[0], "provider": "openai", "status": 502, "error_code": "upstream_error",
         "latency_ms": 12.0, "reason": "retry", "after": "timeout"},
        {"deployment_id": deployments[1], "provider": "anthropic", "status": 200, "error_code": "",
         "latency_ms": 80.25, "reason": "fallback", "after": "5xx"},
    ]  # fmt: skip
    event = UsageEvent(
        uuid.uuid4().hex,
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        "gpt-4o",
        deployment_id=deployments[1],
        latency_ms=393.75,
        ttft_ms=80.25,
        ts=time.time(),
        attempts=attempts,
        client_ip="203.0.113.9",
        user_agent="OpenAI/Python 1.54.0",
    )
    for name, value in fields.items():
        setattr(event, name, value)
    return event


def flat(event: UsageEvent) -> list[bytes]:
    return [part for pair in event.stream_fields().items() for part in pair]


def columns(line: bytes) -> list:
    """A COPY line's columns, the attempts decoded (the two paths write the same JSON apart)."""
    values: list = line.removesuffix(b"\n").split(b"\t")
    values[17] = json.loads(values[17])
    return values


@pytest.mark.parametrize("address", ["203.0.113.9", "2001:db8::9", ""])
def test_gateway_events_with_the_new_fields_take_the_fast_path(address):
    event = gateway_event(client_ip=address)
    values = list(event.stream_fields().values())[:-1]  # the last, the sealed content, is not a column
    fast = ingestion._parse_flat(b"1-0", flat(event)).line
    assert fast == b"\t".join(values) + b"\n"  # stored as it came
    # What the field-by-field parse makes of it (which writes the attempts' JSON otherwise).
    assert columns(fast) == columns(ingestion._parse_values(b"1-0", values).line)
    assert columns(fast)[17] == event.attempts


@pytest.mark.parametrize(
    ("fields", "client_ip", "user_agent"),
    [
        ({"client_ip": "2001:DB8:0::9"}, b"2001:db8::9", b"OpenAI/Python 1.54.0"),
        ({"client_ip": "999.1.1.1"}, b"", b"OpenAI/Python 1.54.0"),
        ({"client_ip": "1:2"}, b"", b"OpenAI/Python 1.54.0"),
        ({"user_agent": "caf\u00e9 \\o/"}, b"203.0.113.9", "caf\u00e9 \\\\o/".encode()),  # COPY escapes \\
    ],
    ids=["ipv6-not-canonical", "octet-out-of-range", "colon-but-no-address", "non-ascii-agent"],
)
def test_other_gateway_events_are_parsed_field_by_field(fields, client_ip, user_agent):
    event = gateway_event(**fields)
    values = list(event.stream_fields().values())[:-1]
    line = ingestion._parse_flat(b"1-0", flat(event)).line
    assert line != b"\t".join(values) + b"\n"
    assert columns(line)[-2:] == [client_ip, user_agent]
    assert columns(line)[17] == event.attempts


# Through a real gateway worker ---------------------------------------------------------------


def test_the_peer_address_and_user_agent_reach_the_ledger(served, gateway_workers):
    (worker,) = gateway_workers(1)
    headers = [("User-Agent", "OpenAI/Python 1.54.0"), ("X-Forwarded-For", "198.51.100.66")]
    assert ask(worker, served["plaintext"], "plain", headers=headers).status_code == 200
    record = ledger_rows(1)["plain"]
    # No proxy is trusted: X-Forwarded-For is the caller's own claim, and ignored.
    assert (record.client_ip, record.user_agent) == ("127.0.0.1", "OpenAI/Python 1.54.0")


def test_behind_a_trusted_proxy_the_forwarded_address_reaches_the_ledger(served, gateway_workers):
    (worker,) = gateway_workers(1, GATEWAY_TRUSTED_PROXIES=TRUSTED)
    cases = {
        "one-hop": ([("X-Forwarded-For", "203.0.113.9")], "203.0.113.9"),
        "spoofed": ([("X-Forwarded-For", "198.51.100.66, 203.0.113.9, 10.0.0.7")], "203.0.113.9"),
        "two-lines": ([("X-Forwarded-For", "198.51.100.66"), ("X-Forwarded-For", "203.0.113.9")], "203.0.113.9"),
        "ipv6": ([("X-Forwarded-For", "2001:db8::9")], "2001:db8::9"),
        "unknown": ([("X-Forwarded-For", "unknown")], None),
        "none": ([], "127.0.0.1"),
    }
    for request_id, (headers, _) in cases.items():
        assert ask(worker, served["plaintext"], request_id, headers=headers).status_code == 200
    rows = ledger_rows(len(cases))
    assert {request_id: rows[request_id].client_ip for request_id in cases} == {
        request_id: expected for request_id, (_, expected) in cases.items()
    }


def raw_request(worker, key: str, user_agent_bytes: bytes) -> bytes:
    """A request with header bytes no HTTP client library would send; the status line back."""
    body = json.dumps({"model": "gpt-4o", **BODY}).encode()
    request = b"".join(
        [
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
            b"Authorization: Bearer %s\r\nX-Request-Id: hostile\r\n" % key.encode(),
            b"User-Agent: %s\r\n" % user_agent_bytes,
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        ]
    )
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def test_a_hostile_user_agent_is_stored_cleaned_and_cut(served, gateway_workers):
    (worker,) = gateway_workers(1)
    # A tab (the one control the HTTP parser lets through), a surrogate and a C1 control in
    # UTF-8, a byte that is not UTF-8, and 10 kB.
    hostile = b"sdk\t/1 caf\xc3\xa9 \xed\xa0\x80\xc2\x85\xff" + b"x" * 10_000
    assert raw_request(worker, served["plaintext"], hostile) == b"HTTP/1.1 200 OK"
    stored = ledger_rows(1)["hostile"].user_agent
    assert stored == ("sdk/1 caf\u00e9 \ufffd\ufffd\ufffd\ufffd" + "x" * 200)[:MAX_USER_AGENT_LENGTH]
    assert not CONTROLS & {ord(character) for character in stored}


@pytest.mark.parametrize("control", [b"\x00", b"\x1b", b"\x7f"], ids=["nul", "escape", "del"])
def test_other_controls_in_the_user_agent_are_refused_before_the_gateway(served, gateway_workers, control):
    """The HTTP parser answers 400 itself: nothing is recorded (ingestion cleans them anyway, see
    test_odd_client_fields_are_cleaned_never_dead_lettered)."""
    (worker,) = gateway_workers(1)
    assert raw_request(worker, served["plaintext"], b"sdk" + control) == b"HTTP/1.1 400 Bad Request"
    assert ingest_batch("test-consumer", 100, block_ms=200).read == 0


@pytest.fixture
def two_providers(org, team, actors, provider_simulator, clean_redis, fresh_key_ring):
    """Route "duo": deployment "primary" (openai_compatible, upstream a-model), then "backup"
    (anthropic, claude-sonnet-4); route "solo": the primary alone. Backoff short."""
    admin = actors["admin"]
    compatible = create_credential(
        actor=admin,
        org=org,
        name="Compatible",
        provider="openai_compatible",
        base_url=f"{provider_simulator.url}/v1",
        secrets={"api_key": "sk-sim-000000000"},
    )
    anthropic = create_credential(
        actor=admin,
        org=org,
        name="Anthropic",
        provider="anthropic",
        base_url=provider_simulator.url,
        secrets={"api_key": "sk-ant-sim-00000"},
    )
    prices = {"input_price_per_mtok": Decimal(1), "output_price_per_mtok": Decimal(4)}
    primary = create_deployment(
        actor=admin, org=org, name="primary", credential=compatible, upstream_model="a-model", **prices
    )
    backup = create_deployment(
        actor=admin, org=org, name="backup", credential=anthropic, upstream_model="claude-sonnet-4", **prices
    )
    create_route(actor=admin, org=org, alias="duo", deployments=[primary, backup])
    create_route(actor=admin, org=org, alias="solo", deployments=[primary])
    policy = SlaPolicy.objects.create(
        org=org,
        name="Default",
        max_retries=1,
        first_token_timeout_ms=300,
        backoff_base_ms=10,
        backoff_max_ms=50,
        breaker_min_requests=100,
    )
    record_config_change("policy", policy.pk)
    _key, plaintext = issue_key(actor=admin, team=team, name="sla")
    services.publish_pending()
    return {"primary": str(primary.pk), "backup": str(backup.pk), "key": plaintext}


@pytest.mark.parametrize(
    ("failure", "after", "status", "code"),
    [
        ({"fail_rate": 1, "fail_status": 500}, "5xx", 502, "upstream_error"),
        ({"fail_rate": 1, "fail_status": 429, "retry_after": 0}, "429", 429, "upstream_rate_limited"),
        ({"hang": True}, "timeout", 504, "upstream_timeout"),
    ],
    ids=["5xx", "429", "timeout"],
)
def test_a_fallback_records_each_attempts_provider_and_reason(
    two_providers, provider_simulator, gateway_workers, failure, after, status, code
):
    provider_simulator.configure(models={"a-model": failure})
    (worker,) = gateway_workers(1)
    answer = ask(worker, two_providers["key"], "fell-back", model="duo")
    assert answer.status_code == 200
    record = ledger_rows(1)["fell-back"]
    assert str(record.deployment_id) == two_providers["backup"]
    attempts = [{name: value for name, value in attempt.items() if name != "latency_ms"} for attempt in record.attempts]
    assert attempts == [
        {"deployment_id": two_providers["primary"], "provider": "openai_compatible", "status": status,
         "error_code": code},
        {"deployment_id": two_providers["backup"], "provider": "anthropic", "status": 200, "error_code": "",
         "reason": "fallback", "after": after},
    ]  # fmt: skip


def test_a_retry_of_the_same_deployment_is_recorded_as_a_retry(two_providers, provider_simulator, gateway_workers):
    provider_simulator.configure(models={"a-model": {"fail_rate": 1, "fail_status": 503}})
    (worker,) = gateway_workers(1)
    assert ask(worker, two_providers["key"], "retried", model="solo").status_code == 502
    record = ledger_rows(1)["retried"]
    assert [(a["provider"], a["status"], a.get("reason"), a.get("after")) for a in record.attempts] == [
        ("openai_compatible", 502, None, None),
        ("openai_compatible", 502, "retry", "5xx"),
    ]
