"""The per-worker circuit breaker, on its own clock."""

from gateway.config import PolicyConfig
from gateway.routing import CircuitBreakers

POLICY = PolicyConfig(
    id="p",
    org_id="o",
    team_id="",
    breaker_min_requests=4,
    breaker_failure_rate=50,
    breaker_window_seconds=60,
    breaker_cooldown_seconds=10,
)


def opened(breakers: CircuitBreakers, now: float = 0.0) -> CircuitBreakers:
    for i in range(4):
        breakers.record("d", False, POLICY, now + i * 0.1)
    return breakers


def test_it_opens_at_the_failure_rate_and_refuses_during_the_cool_down():
    breakers = CircuitBreakers()
    for i in range(3):
        breakers.record("d", False, POLICY, i)
    assert breakers.allows("d", 3)  # below the minimum number of requests
    breakers.record("d", False, POLICY, 3)
    assert not breakers.allows("d", 4)
    assert breakers.state_of("d", 4) == "open"


def test_listing_a_half_open_deployment_does_not_claim_its_probe():
    breakers = opened(CircuitBreakers())
    assert breakers.allows("d", 11) and breakers.allows("d", 11)  # asking twice changes nothing
    breakers.start("d", POLICY, 11)
    assert not breakers.allows("d", 11.5)  # one probe at a time
    assert breakers.allows("d", 21.5)  # a probe that never reported frees the breaker later


def test_the_probe_closes_or_reopens_the_breaker():
    breakers = opened(CircuitBreakers())
    breakers.start("d", POLICY, 11)
    breakers.record("d", True, POLICY, 11.2)
    assert breakers.state_of("d", 11.3) == "closed" and breakers.allows("d", 11.3)
    opened(breakers, 20)
    breakers.start("d", POLICY, 31)
    breakers.record("d", False, POLICY, 31.2)
    assert breakers.state_of("d", 32) == "open" and not breakers.allows("d", 32)
