"""Choosing deployments for a request under its SLA policy, and circuit breakers.

Breaker state and observed latency are per worker on purpose: no chatter between workers on
the hot path. Each worker reports its breakers in its heartbeat.
"""

import random
import time
from collections import deque
from dataclasses import dataclass, field

from .config import CredentialConfig, DeploymentConfig, GatewayConfig, PolicyConfig, RouteConfig

LATENCY_SMOOTHING = 0.2  # weight of the newest observation in the moving average


@dataclass
class BreakerState:
    """Outcomes in one-second buckets with running totals, so recording an outcome costs the
    same whether the window holds ten requests or a hundred thousand."""

    buckets: deque[list[int]] = field(default_factory=deque)  # [second, requests, failures]
    total: int = 0
    failures: int = 0
    open_until: float = 0.0
    probe_until: float = 0.0  # half-open: a request is testing the deployment until then

    def count(self, now: float, ok: bool, window_seconds: int) -> None:
        second = int(now)
        if self.buckets and self.buckets[-1][0] == second:
            bucket = self.buckets[-1]
        else:
            bucket = [second, 0, 0]
            self.buckets.append(bucket)
        bucket[1] += 1
        self.total += 1
        if not ok:
            bucket[2] += 1
            self.failures += 1
        # Each bucket is added once and dropped once: amortised constant time.
        horizon = second - window_seconds
        while self.buckets[0][0] <= horizon:
            _, requests, failures = self.buckets.popleft()
            self.total -= requests
            self.failures -= failures

    def reset(self) -> None:
        self.buckets.clear()
        self.total = self.failures = 0
        self.open_until = self.probe_until = 0.0


class CircuitBreakers:
    def __init__(self) -> None:
        self.states: dict[str, BreakerState] = {}

    def state_of(self, deployment_id: str, now: float) -> str:
        state = self.states.get(deployment_id)
        if state is None or not state.open_until:
            return "closed"
        return "open" if now < state.open_until else "half_open"

    def allows(self, deployment_id: str, now: float) -> bool:
        """Closed: yes. Open: no. After the cool-down (half-open): yes unless a probe is out.
        Only asks: listing a deployment does not claim its probe (`start` does)."""
        state = self.states.get(deployment_id)
        if state is None or not state.open_until:
            return True
        return now >= state.open_until and now >= state.probe_until

    def start(self, deployment_id: str, policy: PolicyConfig, now: float) -> None:
        """A request is about to be sent: on a half-open breaker it is the probe. A probe that
        never reports (a cancelled request) frees the breaker again after a cool-down."""
        state = self.states.get(deployment_id)
        if state is not None and state.open_until and now >= state.open_until:
            state.probe_until = now + policy.breaker_cooldown_seconds

    def record(self, deployment_id: str, ok: bool, policy: PolicyConfig, now: float) -> None:
        state = self.states.get(deployment_id)
        if state is None:
            state = self.states[deployment_id] = BreakerState()
        if state.open_until and now >= state.open_until:  # the half-open probe decides
            state.probe_until = 0.0
            if ok:
                state.reset()
            else:
                state.open_until = now + policy.breaker_cooldown_seconds
            return
        state.count(now, ok, policy.breaker_window_seconds)
        total = state.total
        if total >= policy.breaker_min_requests and state.failures * 100 >= policy.breaker_failure_rate * total:
            state.open_until = now + policy.breaker_cooldown_seconds

    def report(self, now: float) -> dict[str, dict[str, str | float]]:
        """For the heartbeat: every deployment whose breaker is not closed."""
        return {
            deployment_id: {"state": self.state_of(deployment_id, now), "until": round(state.open_until, 3)}
            for deployment_id, state in self.states.items()
            if state.open_until
        }


class LatencyTracker:
    """A moving average of each deployment's time to first byte, as this worker saw it."""

    def __init__(self) -> None:
        self.average: dict[str, float] = {}

    def observe(self, deployment_id: str, seconds: float) -> None:
        previous = self.average.get(deployment_id)
        self.average[deployment_id] = (
            seconds if previous is None else previous + LATENCY_SMOOTHING * (seconds - previous)
        )


def eligible(
    config: GatewayConfig, route: RouteConfig, team_id: str, policy: PolicyConfig
) -> list[tuple[DeploymentConfig, int]]:
    """(deployment, weight) the policy and credentials allow, in priority order."""
    found = []
    for deployment_id, weight in zip(route.deployment_ids, route.weights, strict=True):
        deployment = config.deployments[deployment_id]
        credential: CredentialConfig = config.credentials[deployment.credential_id]
        if credential.team_ids and team_id not in credential.team_ids:
            continue
        if policy.allowed_providers and credential.provider not in policy.allowed_providers:
            continue
        if policy.allowed_regions and deployment.region not in policy.allowed_regions:
            continue
        found.append((deployment, weight))
    return found


def ordered(
    candidates: list[tuple[DeploymentConfig, int]],
    strategy: str,
    latencies: LatencyTracker,
    moment: float,
    rng: random.Random,
) -> list[DeploymentConfig]:
    """The order to try deployments in under a routing strategy."""
    if strategy == "weighted":
        # Weighted random order without replacement (each next pick in proportion to weight).
        pool = [(deployment, weight) for deployment, weight in candidates if weight > 0]
        order = []
        while pool:
            total = sum(weight for _, weight in pool)
            pick = rng.uniform(0, total)
            for index, (deployment, weight) in enumerate(pool):
                pick -= weight
                if pick <= 0 or index == len(pool) - 1:
                    order.append(deployment)
                    pool.pop(index)
                    break
        return order + [deployment for deployment, weight in candidates if weight == 0]
    deployments = [deployment for deployment, _ in candidates]
    if strategy == "latency":
        # Unmeasured deployments first (priority order among them), so each gets observed.
        return sorted(deployments, key=lambda d: latencies.average.get(d.id, -1.0))
    if strategy == "cost":

        def price(deployment: DeploymentConfig) -> float:
            current = deployment.price_at(moment)
            if current is None:
                return float("inf")
            return current.input_micros_per_mtok + current.output_micros_per_mtok

        return sorted(deployments, key=price)
    return deployments


def backoff_seconds(policy: PolicyConfig, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter, capped."""
    ceiling = min(policy.backoff_max_ms, policy.backoff_base_ms * (2**attempt)) / 1000
    return rng.uniform(ceiling / 2, ceiling)


def monotonic() -> float:
    return time.monotonic()
