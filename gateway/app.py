"""The OpenAI-compatible HTTP API of a gateway worker.

Per request: authenticate the caller key by digest, check the model alias, apply the key's
RPM/TPM limits in Redis, pick a deployment, call the upstream with the BYOK credential,
stream the answer back as it arrives, count tokens and cost, emit a usage event.
"""

import asyncio
import hashlib
import json
import logging
import random
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import metrics, routing
from .budgets import Admission, BudgetGate
from .config import DeploymentConfig, GatewayConfig, KeyConfig, PolicyConfig
from .errors import GatewayError, invalid_request
from .follower import ConfigFollower
from .rate_limits import RateLimiter
from .redis_keys import RedisKeys
from .settings import GatewaySettings
from .upstream import CallLimits, UpstreamClient, UpstreamFailure, Usage
from .usage import UsageEvent, UsageSink

log = logging.getLogger("gateway")
CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_TOKENS_CEILING = 1_000_000
MAX_CHOICES = 8


class Gateway:
    """Everything one worker process holds: config follower, Redis, upstream client."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        keys = RedisKeys(settings.redis_prefix)
        self.follower = ConfigFollower(settings, self.redis)
        self.limiter = RateLimiter(self.redis, keys)
        self.budgets = BudgetGate(self.redis, keys)
        self.breakers = routing.CircuitBreakers()
        self.latencies = routing.LatencyTracker()
        self.random = random.Random()  # noqa: S311  (load spreading, not security)
        self.follower.extra_heartbeat = lambda: {"breakers": json.dumps(self.breakers.report(routing.monotonic()))}
        self.usage = UsageSink(self.redis, keys, settings.node_id)
        self.upstream = UpstreamClient(settings.upstream_timeout_seconds)
        self.background: set[asyncio.Task] = set()

    @property
    def config(self) -> GatewayConfig:
        config = self.follower.config
        if config is None:
            raise GatewayError(503, "not_ready", "This gateway worker has no configuration yet.")
        return config

    def later(self, coroutine) -> None:
        """Run after the response without holding it up (usage events, token counters)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # Checks ------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> tuple[GatewayConfig, KeyConfig]:
        config = self.config
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GatewayError(401, "invalid_api_key", "Send your key as 'Authorization: Bearer <key>'.")
        key = config.keys.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if key is None:
            raise GatewayError(401, "invalid_api_key", "This API key is not valid, or it was revoked.")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise GatewayError(401, "invalid_api_key", "This API key has expired.")
        return config, key

    @staticmethod
    def allowed_aliases(config: GatewayConfig, key: KeyConfig) -> list[str]:
        team = config.teams.get(key.team_id)
        ceiling = key.allowed_models or (team.allowed_models if team else ())
        aliases = [alias for (org_id, alias) in config.routes_by_alias if org_id == key.org_id]
        return sorted(a for a in aliases if not ceiling or a in ceiling)

    def deployments_for(self, config: GatewayConfig, call: "Call") -> list[DeploymentConfig]:
        """The deployments to try, in the order the SLA policy's strategy says, breakers
        consulted (when every one is open, they are tried anyway rather than refusing)."""
        key, alias = call.key, call.body["model"]
        team = config.teams.get(key.team_id)
        ceiling = key.allowed_models or (team.allowed_models if team else ())
        route = config.route(key.org_id, alias)
        if route is None or (ceiling and alias not in ceiling):
            raise GatewayError(403, "model_not_allowed", f"This key may not use the model {alias!r}.")
        candidates = routing.eligible(config, route, key.team_id, call.policy)
        if not candidates:
            raise GatewayError(
                403, "model_not_allowed", f"No deployment your team and SLA policy allow serves {alias!r}."
            )
        order = routing.ordered(candidates, call.policy.strategy_for(alias), self.latencies, call.moment, self.random)
        now = routing.monotonic()
        closed = [deployment for deployment in order if self.breakers.allows(deployment.id, now)]
        return closed or order

    async def read_json(self, request: Request) -> dict:
        declared = request.headers.get("content-length")
        limit = self.settings.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise invalid_request(f"The request body is larger than {limit:,} bytes.")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    raise invalid_request(f"The request body is larger than {limit:,} bytes.")
        except ClientDisconnect:
            raise invalid_request("The client went away while sending the body.") from None
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise invalid_request("The request body is not valid JSON.") from None
        if not isinstance(document, dict):
            raise invalid_request("The request body must be a JSON object.")
        model = document.get("model")
        if not isinstance(model, str) or not model or len(model) > 200:
            raise invalid_request("'model' must be a model name (a non-empty string).")
        return document

    # Endpoints ---------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat.completions")

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, "embeddings")

    async def _serve(self, request: Request, endpoint: str) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
        call: Call | None = None
        try:
            config, key = self.authenticate(request)
            event = UsageEvent(request_id, key.org_id, key.team_id, key.key_id, alias="", endpoint=endpoint)
            call = Call(key=key, body={}, event=event, started=started, moment=time.time())
            call.body = await self.read_json(request)
            event.alias = call.body["model"]
            validate_chat(call.body) if endpoint == "chat.completions" else validate_embeddings(call.body)
            call.policy = config.policy_for(key)
            deployments = self.deployments_for(config, call)
            call.minute = await self.limiter.admit(key.key_id, key.rpm_limit, key.tpm_limit)
            await self._admit_budget(config, call, deployments, endpoint)
            response = await self._call(config, call, deployments, endpoint)
        except GatewayError as error:
            metrics.errors.labels(error.code).inc()
            metrics.requests.labels(endpoint, str(error.status)).inc()
            if call is not None:
                if call.admission is not None:  # reserved, then failed: give the reservation back
                    self.later(self.budgets.settle(call.admission, 0))
                call.event.status, call.event.error_code = error.status, error.code
                call.event.latency_ms = (time.perf_counter() - started) * 1000
                self.usage.emit(call.event)
            response = error.response()
        except (redis.ConnectionError, redis.TimeoutError):
            metrics.errors.labels("rate_limit_unavailable").inc()
            response = GatewayError(503, "rate_limit_unavailable", "Limits cannot be checked right now.").response()
        response.headers["x-request-id"] = request_id
        return response

    async def _admit_budget(self, config: GatewayConfig, call: "Call", deployments, endpoint: str) -> None:
        """Reserve the worst case on every budget of the key, its team and its org, or refuse."""
        budgets = config.budgets_for(call.key)
        if not budgets:
            return
        worst = worst_case_cost(call.body, deployments, endpoint, call.moment)
        if worst is None:
            if any(budget.hard for budget in budgets):
                raise GatewayError(
                    402,
                    "model_not_priced",
                    f"The model {call.body['model']!r} has no price, and a hard budget applies to this key: "
                    "ask finance to price it.",
                )
            return
        try:
            call.admission = await self.budgets.reserve(budgets, worst, call.event.request_id)
        except (redis.ConnectionError, redis.TimeoutError):
            org = config.orgs.get(call.key.org_id)
            if org is not None and org.budget_fail_open:
                return  # the org chose to admit while budgets cannot be checked
            raise GatewayError(
                503, "budget_unavailable", "Budgets cannot be checked right now; retry shortly."
            ) from None

    async def _call(self, config, call: "Call", deployments, endpoint) -> Response:
        """Try deployments in order under the policy: timeouts per attempt, retries on the
        conditions it names with exponential backoff and jitter, Retry-After honoured, a
        breaker fed by every outcome. A stream is never repeated once its first byte is sent:
        the first event is awaited before the response starts."""
        policy, body = call.policy, call.body
        stream = bool(body.get("stream")) and endpoint == "chat.completions"
        deadline = routing.monotonic() + policy.total_timeout_ms / 1000
        not_before: dict[str, float] = {}  # deployment -> when its Retry-After ends
        last_failure: UpstreamFailure | None = None
        for attempt in range(1 + policy.max_retries):
            now = routing.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                break
            ready = [d for d in deployments if not_before.get(d.id, 0) <= now]
            if not ready:  # every deployment asked us to wait: wait for the first, within the deadline
                wake = min(not_before.get(d.id, 0) for d in deployments)
                if wake >= deadline:
                    break
                await asyncio.sleep(wake - now)
                # The sleep may end a hair early: take the first deployment due, not none.
                ready = [min(deployments, key=lambda d: not_before.get(d.id, 0))]
            deployment = ready[0]  # failed deployments move to the back of the list
            credential = config.credentials[deployment.credential_id]
            api_key = config.api_keys[credential.id]
            call.event.deployment_id = deployment.id
            limits = CallLimits(
                connect=policy.connect_timeout_ms / 1000,
                first_byte=policy.first_token_timeout_ms / 1000,
                total=max(0.001, deadline - routing.monotonic()),
            )
            started = routing.monotonic()
            self.breakers.start(deployment.id, policy, started)
            try:
                if stream:
                    upstream = await self.upstream.open_chat_stream(credential, deployment, api_key, body, limits)
                elif endpoint == "chat.completions":
                    result, usage = await self.upstream.chat(
                        credential, deployment, api_key, body, body["model"], limits
                    )
                else:
                    result, usage = await self.upstream.embeddings(
                        credential, deployment, api_key, body, body["model"], limits
                    )
            except UpstreamFailure as failure:
                self._attempted(call, deployment, failure.error.status, failure.error.code, started, ok=False)
                last_failure = failure
                if failure.kind not in policy.retry_on:
                    break
                if failure.retry_after is not None:
                    not_before[deployment.id] = routing.monotonic() + failure.retry_after
                elif attempt + 1 >= len(deployments):
                    # Every deployment was tried once: back off before coming round again.
                    pause = routing.backoff_seconds(policy, attempt, self.random)
                    await asyncio.sleep(min(pause, max(0.0, deadline - routing.monotonic())))
                if len(deployments) > 1:
                    # The next attempt goes to the next deployment: move this one to the back.
                    deployments = [d for d in deployments if d.id != deployment.id] + [deployment]
                continue
            except GatewayError as refused:  # the provider refused the request itself: not retried
                self._attempted(call, deployment, refused.status, refused.code, started, ok=True)
                raise
            elapsed = routing.monotonic() - started
            self.latencies.observe(deployment.id, elapsed)
            metrics.upstream_latency.observe(elapsed)
            self._attempted(call, deployment, 200, "", started, ok=True)
            if stream:
                return self._relay(credential, upstream, call, deployment)
            if not usage.reported:
                usage.input_tokens = estimate_input_tokens(body)
            self._settle(call, deployment, usage, ttft=None)
            metrics.requests.labels(endpoint, "200").inc()
            return JSONResponse(result, headers={"x-gatehouse-deployment": deployment.id})
        if last_failure is None:
            raise GatewayError(504, "upstream_timeout", "No deployment answered within the policy's total timeout.")
        raise last_failure.error

    def _attempted(self, call: "Call", deployment, status: int, code: str, started: float, *, ok: bool) -> None:
        """Record one upstream attempt on the usage event and feed the breaker."""
        latency_ms = round((routing.monotonic() - started) * 1000, 3)
        call.event.attempts.append(
            {"deployment_id": deployment.id, "status": status, "error_code": code, "latency_ms": latency_ms}
        )
        self.breakers.record(deployment.id, ok, call.policy, routing.monotonic())

    def _relay(self, credential, upstream, call: "Call", deployment) -> StreamingResponse:
        usage = Usage()
        body = call.body
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        call.event.stream = True

        async def chunks():
            first = None
            try:
                async for chunk in self.upstream.relay_stream(
                    credential, upstream, body["model"], include_usage, usage
                ):
                    if first is None:
                        first = time.perf_counter()
                    yield chunk
            finally:
                # Runs on completion and when the client disconnects mid-stream: it is charged
                # for what was produced.
                if not usage.reported:
                    usage.input_tokens = estimate_input_tokens(body)
                ttft = (first - call.started) * 1000 if first else None
                self._settle(call, deployment, usage, ttft=ttft)
                metrics.requests.labels("chat.completions", "200").inc()

        return StreamingResponse(
            chunks(),
            media_type="text/event-stream",
            headers={"x-gatehouse-deployment": deployment.id, "cache-control": "no-cache"},
        )

    def _settle(self, call: "Call", deployment, usage: Usage, ttft) -> None:
        elapsed = time.perf_counter() - call.started
        metrics.latency.observe(elapsed)
        metrics.tokens.labels("input").inc(usage.input_tokens)
        metrics.tokens.labels("output").inc(usage.output_tokens)
        event = call.event
        event.input_tokens, event.output_tokens = usage.input_tokens, usage.output_tokens
        event.cost_micros = deployment.cost_micros(usage.input_tokens, usage.output_tokens, call.moment)
        event.latency_ms, event.ttft_ms = elapsed * 1000, ttft if ttft is not None else elapsed * 1000
        self.usage.emit(event)
        if call.admission is not None:
            self.later(self.budgets.settle(call.admission, event.cost_micros))
            call.admission = None
        tokens = usage.input_tokens + usage.output_tokens
        self.later(self.limiter.add_tokens(call.key.key_id, call.minute, tokens, call.key.tpm_limit))

    async def list_models(self, request: Request) -> Response:
        try:
            config, key = self.authenticate(request)
        except GatewayError as error:
            return error.response()
        data = [
            {"id": alias, "object": "model", "created": 0, "owned_by": "gatehouse"}
            for alias in self.allowed_aliases(config, key)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        config = self.follower.config
        if config is None:
            return JSONResponse(
                {"ready": False, "reason": self.follower.last_error or "no config yet"}, status_code=503
            )
        return JSONResponse({"ready": True, "revision": config.revision, "config_hash": config.hash})

    async def metrics_endpoint(self, request: Request) -> Response:
        config = self.follower.config
        metrics.config_revision.set(config.revision if config else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@dataclass
class Call:
    """One request on its way through the worker."""

    key: KeyConfig
    body: dict
    event: UsageEvent
    started: float  # perf_counter, for latency
    moment: float  # wall clock, for prices and budget periods
    minute: int = 0
    admission: Admission | None = None
    policy: PolicyConfig | None = None


def worst_case_cost(body: dict, deployments: list[DeploymentConfig], endpoint: str, moment: float) -> int | None:
    """The most this request can cost on any of its deployments, in micro-dollars; None when
    a deployment has no price. Input is bounded by its size in bytes (a token is at least one
    byte), output by max_tokens or the deployment's output cap, times the choices asked for."""
    if endpoint == "chat.completions":
        input_bound = len(json.dumps(body.get("messages", []), ensure_ascii=False).encode())
        choices = body.get("n") or 1
    else:
        input_bound = len(json.dumps(body.get("input", ""), ensure_ascii=False).encode())
        choices = 0  # embeddings produce no output tokens
    worst = 0
    for deployment in deployments:
        price = deployment.price_at(moment)
        if price is None:
            return None
        output_bound = body.get("max_tokens") or body.get("max_completion_tokens") or deployment.max_output_tokens
        output_bound = min(output_bound, deployment.max_output_tokens) * choices
        cost = input_bound * price.input_micros_per_mtok + output_bound * price.output_micros_per_mtok
        worst = max(worst, -(-cost // 1_000_000))
    return worst


def estimate_input_tokens(body: dict) -> int:
    """When a provider reports no usage: about four characters a token, as tokenizers average."""
    text = json.dumps(body["messages"]) if "messages" in body else json.dumps(body.get("input", ""))
    return max(1, len(text) // 4)


def validate_chat(body: dict) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty list.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise invalid_request(f"messages[{index}] needs a 'role' of {', '.join(sorted(CHAT_ROLES))}.")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid_request("'stream' must be true or false.")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS_CEILING
        ):
            raise invalid_request(f"'{name}' must be a whole number from 1 to {MAX_TOKENS_CEILING:,}.")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES):
        raise invalid_request(f"'n' must be a whole number from 1 to {MAX_CHOICES}.")
    if "stream_options" in body and not isinstance(body["stream_options"], dict | type(None)):
        raise invalid_request("'stream_options' must be an object.")


def validate_embeddings(body: dict) -> None:
    value = body.get("input")
    valid = (isinstance(value, str) and value) or (
        isinstance(value, list) and value and all(isinstance(item, str | int) for item in value)
    )
    if not valid:
        raise invalid_request("'input' must be a non-empty string or list.")


def create_app(settings: GatewaySettings | None = None) -> Starlette:
    settings = settings or GatewaySettings.from_env()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app):
        await gateway.follower.start()
        gateway.usage.start()
        yield
        await gateway.usage.stop()
        await gateway.follower.stop()
        await gateway.upstream.close()
        await gateway.redis.aclose()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", gateway.embeddings, methods=["POST"]),
            Route("/v1/models", gateway.list_models, methods=["GET"]),
            Route("/healthz", gateway.healthz, methods=["GET"]),
            Route("/readyz", gateway.readyz, methods=["GET"]),
            Route("/metrics", gateway.metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
