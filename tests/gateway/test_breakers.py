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


def test_outcomes_older_than_the_window_stop_counting():
    breakers = CircuitBreakers()
    for i in range(3):
        breakers.record("d", False, POLICY, i)  # three failures in the first seconds
    for i in range(5):
        breakers.record("d", True, POLICY, 100 + i)  # 100 s later: the failures left the window
    state = breakers.states["d"]
    assert (state.total, state.failures) == (5, 0)
    breakers.record("d", False, POLICY, 105)
    assert breakers.allows("d", 106)  # 1 failure in 6: below the 50% rate


def test_a_full_window_keeps_one_bucket_a_second_whatever_the_traffic():
    breakers = CircuitBreakers()
    for i in range(120_000):  # 1,000 outcomes a second for two minutes, one in ten failing
        breakers.record("d", i % 10 != 0, POLICY, i / 1000)
    state = breakers.states["d"]
    assert len(state.buckets) <= POLICY.breaker_window_seconds + 1
    assert state.total == sum(bucket[1] for bucket in state.buckets)
    assert state.failures == sum(bucket[2] for bucket in state.buckets)
    assert 59_000 <= state.total <= 61_000
