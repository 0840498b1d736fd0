"""The HTTP API of a gateway worker: OpenAI's chat completions, embeddings, models and
Responses API, and Anthropic's Messages API (gateway/inbound.py).

Per request: authenticate the caller key by digest, validate the body at the edge, check the
model alias, admit it in one Redis round trip (the key's RPM/TPM windows and the worst case
reserved on its budgets), pick a deployment, call the upstream with the BYOK credential,
stream the answer back as it arrives, count tokens and cost, emit a usage event.
"""

import asyncio
import base64
import hashlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import redis.asyncio as redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import capture, inbound, messages_api, metrics, routing
from .budgets import Admission, BudgetGate, RateLimited
from .config import DeploymentConfig, GatewayConfig, KeyConfig, OrgConfig, PolicyConfig, RouteConfig
from .errors import GatewayError, invalid_request
from .follower import ConfigFollower
from .http import ClientGone, Request, Response, Router, StreamResponse, json_response
from .providers import Target
from .rate_limits import TokenCounter
from .redis_cluster_pipe import open_pipe
from .redis_keys import RedisKeys
from .redis_url import async_client
from .settings import GatewaySettings
from .stream_journal import StreamJournal
from .upstream import CallLimits, UpstreamClient, UpstreamFailure, UpstreamStream, Usage, choices_billed
from .usage import UsageEvent, UsageSink, client_ip, user_agent
from .usage_spool import UsageSpool
from .validation import (
    MAX_MODEL_LENGTH,
    forwardable,
    parse_body,
    request_id,
    storable_text,
)

log = logging.getLogger("gateway")
STREAM_BROKE = GatewayError(502, "upstream_error", "The provider's stream broke.")


class Gateway:
    """Everything one worker process holds: config follower, Redis, upstream client."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        # redis-py for the config follower (pub/sub, heartbeats); one pipelined connection for
        # the per-request commands (gateway/redis_pipe.py).
        self.redis = async_client(settings.redis_url, timeout=5, connect_timeout=2)
        self.pipe = open_pipe(
            settings.redis_url,
            timeout=5,
            connect_timeout=2,
            min_replicas=settings.redis_min_replicas,
            replica_timeout_ms=settings.redis_replica_timeout_ms,
        )
        keys = RedisKeys.for_url(settings.redis_prefix, settings.redis_url)
        self.follower = ConfigFollower(settings, self.redis)
        self.gate = BudgetGate(self.pipe, keys)
        self.tokens = TokenCounter(self.pipe, keys)
        self.breakers = routing.CircuitBreakers()
        self.latencies = routing.LatencyTracker()
        self.random = random.Random()  # noqa: S311  (load spreading, not security)
        self.follower.extra_heartbeat = lambda: {
            "breakers": orjson.dumps(self.breakers.report(routing.monotonic())).decode()
        }
        self.usage = UsageSink(self.pipe, keys, settings.node_id, UsageSpool(settings.state_dir / "usage.spool"))
        self.journal = StreamJournal(settings.state_dir / "streams")
        self.sealer = capture.Sealer()
        self.upstream = UpstreamClient(settings.upstream_timeout_seconds)
        self.background: set[asyncio.Task[None]] = set()
        self.loop_watch: asyncio.Task[None] | None = None

    @property
    def config(self) -> GatewayConfig:
        config = self.follower.config
        if config is None:
            raise GatewayError(503, "not_ready", "This gateway worker has no configuration yet.")
        return config

    def later(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run after the response without holding it up (budget settles, token counters)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: "asyncio.Task[None]") -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            metrics.count_error("background_failed")
            log.warning("background work failed: %r", task.exception())

    # Checks ------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> tuple[GatewayConfig, KeyConfig]:
        """The caller key, from `Authorization: Bearer <key>` or (as Anthropic's SDK sends it)
        `x-api-key: <key>`."""
        config = self.config
        scheme, _, token = request.header(b"authorization").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            token = request.header(b"x-api-key").strip()
        if not token:
            raise GatewayError(
                401, "invalid_api_key", "Send your key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            )
        key = config.keys.get(hashlib.sha256(token.encode("latin-1")).hexdigest())
        if key is None:
            raise GatewayError(401, "invalid_api_key", "This API key is not valid, or it was revoked.")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise GatewayError(401, "invalid_api_key", "This API key has expired.")
        return config, key

    @staticmethod
    def allowed_aliases(config: GatewayConfig, key: KeyConfig) -> list[str]:
        allowed = config.allowed_models(key)
        aliases = [alias for (org_id, alias) in config.routes_by_alias if org_id == key.org_id]
        return sorted(a for a in aliases if allowed is None or a in allowed)

    @staticmethod
    def check_model(config: GatewayConfig, key: KeyConfig, alias: str) -> RouteConfig:
        """The model's route; 404 for a model the key's org does not route (as OpenAI answers
        an unknown model), 403 for a routed model this key may not use."""
        route = config.route(key.org_id, alias)
        if route is None:
            raise GatewayError(404, "model_not_found", f"The model {alias!r} does not exist or is not routed here.")
        allowed = config.allowed_models(key)
        if allowed is not None and alias not in allowed:
            raise GatewayError(403, "model_not_allowed", f"This key may not use the model {alias!r}.")
        return route

    def deployments_for(self, config: GatewayConfig, call: "Call") -> list[DeploymentConfig]:
        """The deployments to try, in the order the SLA policy's strategy says, breakers
        consulted (when every one is open, they are tried anyway rather than refusing)."""
        key, alias, policy = call.key, call.event.alias, call.policy
        route = self.check_model(config, key, alias)
        candidates = routing.eligible(config, route, key.team_id, policy)
        if not candidates:
            raise GatewayError(
                403, "model_not_allowed", f"No deployment your team and SLA policy allow serves {alias!r}."
            )
        order = routing.ordered(candidates, policy.strategy_for(alias), self.latencies, call.moment, self.random)
        now = routing.monotonic()
        closed = [deployment for deployment in order if self.breakers.allows(deployment.id, now)]
        return closed or order

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.header(b"content-length")
        too_large = invalid_request(f"The request body is larger than {limit:,} bytes.")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        timeout = self.settings.body_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                raw = await request.body(limit)
        except ClientGone:
            raise invalid_request("The client went away while sending the body.") from None
        except TimeoutError:
            raise GatewayError(
                408,
                "request_timeout",
                f"The request body did not arrive within {timeout:g} s.",
                {"connection": "close"},
            ) from None
        if raw is None:
            raise too_large
        return raw

    # Endpoints ---------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, inbound.CHAT)

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, inbound.EMBEDDINGS)

    async def messages(self, request: Request) -> Response:
        return await self._serve(request, inbound.MESSAGES)

    async def responses(self, request: Request) -> Response:
        return await self._serve(request, inbound.RESPONSES)

    async def _serve(self, request: Request, api: inbound.Api) -> Response:
        started = time.perf_counter()
        given_id = request.header(b"x-request-id")
        server_id = uuid.uuid4().hex  # the ledger's key: two requests never share one
        client_id = ""
        call: Call | None = None
        endpoint = api.endpoint
        try:
            if given_id:
                client_id = request_id(given_id)
            config, key = self.authenticate(request)
            event = UsageEvent(
                server_id,
                key.org_id,
                key.team_id,
                key.key_id,
                alias="",
                endpoint=endpoint,
                client_request_id=client_id,
                client_ip=client_ip(request.scope, self.settings.trusted_proxies),
                user_agent=user_agent(request.header(b"user-agent")),
            )
            call = Call(
                key=key,
                body={},
                raw=b"",
                event=event,
                policy=config.policy_for(key),
                started=started,
                moment=time.time(),
                reservation_id=server_id,
                api=api,
            )
            raw = await self.read_body(request)
            call.capture = config.capture_for(key)
            if call.capture is not None:
                call.prompt = raw
            call.native = parse_body(raw)
            call.raw = raw if forwardable(raw) else None
            event.alias = storable_text(call.native.get("model"), "model", MAX_MODEL_LENGTH)
            call.body, call.native_only = api.parse(call.native)
            if api.native_provider == "anthropic":
                call.headers = {
                    "anthropic-version": request.header(b"anthropic-version"),
                    "anthropic-beta": request.header(b"anthropic-beta"),
                }
            deployments = self.deployments_for(config, call)
            await self._admit(config, call, deployments)
            response = await self._call(config, call, deployments)
        except GatewayError as error:
            response = self._refused(call, error, api)
        except Exception:
            log.exception("request %s failed inside the gateway", server_id, extra={"request_id": server_id})
            failure = GatewayError(500, "internal_error", f"The gateway failed on this request ({server_id}).")
            response = self._refused(call, failure, api)
        response.headers["x-request-id"] = server_id
        if client_id:
            response.headers["x-client-request-id"] = client_id
        if call is not None and call.rate is not None:
            response.headers.update(call.rate.headers())
        return response

    def _refused(self, call: "Call | None", error: GatewayError, api: inbound.Api) -> Response:
        """Count the refusal, give a reservation back, and record the request once."""
        metrics.count_error(error.code)
        if call is None:
            metrics.count_request(api.endpoint, metrics.OTHER_MODEL, "", error.status)
        else:
            model = metrics.model_label(self.follower.config, call.key.org_id, call.event.alias)
            metrics.count_request(api.endpoint, model, call.event.deployment_id, error.status)
        response = api.error(error)
        if call is not None and not call.recorded:
            if call.admission is not None:  # reserved, then failed: give the reservation back
                self.later(self.gate.settle(call.admission, 0))
                call.admission = None
            call.event.status, call.event.error_code = error.status, error.code
            call.event.latency_ms = (time.perf_counter() - call.started) * 1000
            if call.capture is not None:
                call.answer += response.body[: call.capture.capture_max_bytes + 1]
            self._record(call)
        return response

    def _record(self, call: "Call") -> None:
        if call.capture is not None:
            self._seal_content(call, call.capture)
        self.usage.emit(call.event)
        call.recorded = True

    def _seal_content(self, call: "Call", org: OrgConfig) -> None:
        """Put the request's prompt and answer on its usage event, sealed for its org
        (gateway/capture.py). Capture must never cost the caller the request: a failure here
        leaves the event without content, logged and counted."""
        try:
            plaintext = capture.pack_plaintext(call.prompt, bytes(call.answer), org.capture_max_bytes)
            sealed = self.sealer.seal(
                org.capture_key, request_id=call.event.request_id, org_id=org.id, plaintext=plaintext
            )
            call.event.content = base64.b64encode(sealed).decode("ascii")
        except Exception:
            metrics.capture_failures.inc()
            log.exception("content of request %s could not be sealed", call.event.request_id)

    async def _admit(self, config: GatewayConfig, call: "Call", deployments: list[DeploymentConfig]) -> None:
        """One round trip: the key's RPM/TPM windows, and the worst case reserved on every
        budget of the key, its team and its org; or a refusal."""
        key = call.key
        rpm_limit, tpm_limit = call.rpm_limit, call.tpm_limit = config.rate_limits(key)
        budgets = config.budgets_for(key)
        worst = 0
        if budgets:
            bound = worst_case_cost(call.body, deployments, call.api.chat, call.moment, config)
            if bound is None:
                if any(budget.hard for budget in budgets):
                    raise GatewayError(
                        402,
                        "model_not_priced",
                        f"The model {call.event.alias!r} has no price, and a hard budget applies to this key: "
                        "ask finance to price it.",
                    )
                budgets = []  # soft budgets only, and no price: nothing to reserve
            else:
                worst = bound
        try:
            call.minute, call.admission, used = await self.gate.admit(
                org_id=key.org_id,
                key_id=key.key_id,
                rpm_limit=rpm_limit,
                tpm_limit=tpm_limit,
                budgets=budgets,
                amount_micros=worst,
                reservation_id=call.reservation_id,
            )
            if rpm_limit or tpm_limit:
                call.rate = RateHeaders(rpm_limit, tpm_limit, used.requests, used.tokens, call.moment)
        except RateLimited as limited:
            call.rate = RateHeaders(rpm_limit, tpm_limit, limited.use.requests, limited.use.tokens, call.moment)
            raise
        except redis.RedisError:  # down, loading, read-only after a failover, out of memory
            # Fail closed, unless the org chose to admit (each choice is an audited org setting).
            org = config.orgs.get(key.org_id)
            if (rpm_limit or tpm_limit) and not (org is not None and org.rate_limit_fail_open):
                raise GatewayError(503, "rate_limit_unavailable", "Limits cannot be checked right now.") from None
            if budgets and not (org is not None and org.budget_fail_open):
                raise GatewayError(
                    503, "budget_unavailable", "Budgets cannot be checked right now; retry shortly."
                ) from None
            call.minute = int(call.moment // 60)

    async def _call(self, config: GatewayConfig, call: "Call", deployments: list[DeploymentConfig]) -> Response:
        """Try deployments in order under the policy: timeouts per attempt, retries on the
        conditions it names with exponential backoff and jitter, Retry-After honoured, a
        breaker fed by every outcome. A stream is never repeated once its first byte is sent:
        the first event is awaited before the response starts."""
        policy, body, alias, api = call.policy, call.body, call.event.alias, call.api
        stream = bool(body.get("stream")) and api.chat
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
            target = Target(credential, deployment, config.api_keys[credential.id])
            native = api.native_provider == credential.provider
            if call.native_only and not native:
                raise call.native_only[0]
            call.event.deployment_id = deployment.id
            limits = CallLimits(
                connect=policy.connect_timeout_ms / 1000,
                first_byte=policy.first_token_timeout_ms / 1000,
                total=max(0.001, deadline - routing.monotonic()),
            )
            started = routing.monotonic()
            self.breakers.start(deployment.id, policy, started)
            try:
                if stream and native:
                    opened = await self.upstream.open_native_stream(
                        target, api.endpoint, call.native, call.headers, limits
                    )
                elif stream:
                    opened = await self.upstream.open_chat_stream(target, body, limits)
                elif native:
                    result, usage = await self.upstream.native(
                        target, api.endpoint, call.native, alias, call.headers, limits
                    )
                elif api.chat:
                    completion, usage = await self.upstream.chat(target, body, alias, limits, raw=call.raw)
                    if not usage.reported and api is not inbound.CHAT:  # its format requires usage
                        usage.input_tokens = estimate_input_tokens(body)
                        completion["usage"] = {
                            "prompt_tokens": usage.input_tokens,
                            "completion_tokens": usage.output_tokens,
                            "total_tokens": usage.input_tokens + usage.output_tokens,
                        }
                    result = api.answer(completion, alias, call.native)
                else:
                    result, usage = await self.upstream.embeddings(target, body, alias, limits)
                    if not usage.reported:  # the provider counts none (the Gemini API): show our estimate
                        usage.input_tokens = estimate_input_tokens(body)
                        result["usage"] = {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens}
            except UpstreamFailure as failure:
                self._attempted(
                    call, target, failure.error.status, failure.error.code, started, ok=False, after=last_failure
                )
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
                self._attempted(call, target, refused.status, refused.code, started, ok=True, after=last_failure)
                raise
            elapsed = routing.monotonic() - started
            self.latencies.observe(deployment.id, elapsed)
            metrics.observe_upstream(deployment.id, elapsed)
            self._attempted(call, target, 200, "", started, ok=True, after=last_failure)
            if stream:
                return self._relay(opened, call, deployment, native)
            if not usage.reported:
                usage.input_tokens = estimate_input_tokens(body)
            answer = json_response(200, result, {"x-gatehouse-deployment": deployment.id})
            if call.capture is not None:
                call.answer += answer.body[: call.capture.capture_max_bytes + 1]
            self._settle(call, deployment, usage, ttft=None)
            metrics.count_request(api.endpoint, alias, deployment.id, 200)
            return answer
        if last_failure is None:
            raise GatewayError(504, "upstream_timeout", "No deployment answered within the policy's total timeout.")
        raise last_failure.error

    def _attempted(
        self,
        call: "Call",
        target: Target,
        status: int,
        code: str,
        started: float,
        *,
        ok: bool,
        after: UpstreamFailure | None,
    ) -> None:
        """Record one upstream attempt on the usage event (its shape: UsageEvent) and feed the
        breaker; `after` is the previous attempt's failure, None for the first attempt."""
        now = routing.monotonic()
        deployment, attempts = target.deployment, call.event.attempts
        attempt: dict[str, Any] = {
            "deployment_id": deployment.id,
            "provider": target.credential.provider,
            "status": status,
            "error_code": code,
            "latency_ms": round((now - started) * 1000, 3),
        }
        if after is not None and attempts:
            attempt["reason"] = "retry" if attempts[-1]["deployment_id"] == deployment.id else "fallback"
            attempt["after"] = after.kind
        attempts.append(attempt)
        self.breakers.record(deployment.id, ok, call.policy, now)

    def _relay(
        self, opened: UpstreamStream, call: "Call", deployment: DeploymentConfig, native: bool
    ) -> StreamResponse:
        """Relay a stream in the client's format: the provider's own events when native, else
        chunk objects rendered by the inbound API."""
        usage = Usage()
        body, api, alias = call.body, call.api, call.event.alias
        call.event.stream = True

        first: float | None = None
        input_estimate = estimate_input_tokens(body)
        price = deployment.price_at(call.moment)
        # What a crash mid-stream leaves behind, to be billed when this node starts again.
        entry = self.journal.open(
            call.event,
            input_micros_per_mtok=price.input_micros_per_mtok if price else 0,
            output_micros_per_mtok=price.output_micros_per_mtok if price else 0,
            input_estimate=input_estimate,
            admission=call.admission,
        )

        def finish() -> None:
            """Charge for what was produced, once: on completion, when the client goes away
            mid-stream, and when the relay never started."""
            if call.recorded:
                return
            opened.release()
            if not usage.reported:
                usage.input_tokens = input_estimate
            ttft = (first - call.started) * 1000 if first else None
            self._settle(call, deployment, usage, ttft=ttft)
            if entry is not None:
                entry.close()
            metrics.count_request(api.endpoint, alias, deployment.id, 200)

        def progressed() -> None:
            nonlocal first
            if first is None:
                first = time.perf_counter()
            if entry is not None:  # counted before the client has it
                entry.progress(usage.input_tokens, usage.output_tokens, (first - call.started) * 1000)

        kept = call.answer if call.capture is not None else None  # the captured answer, cut at its limit
        limit = call.capture.capture_max_bytes + 1 if call.capture is not None else 0

        def keep(data: bytes) -> None:
            if kept is not None and len(kept) < limit:
                kept.extend(data[: limit - len(kept)])

        async def native_chunks() -> AsyncIterator[bytes]:
            try:
                async for line in self.upstream.relay_native(opened, api.endpoint, alias, usage):
                    progressed()
                    keep(line)
                    yield line
            finally:
                finish()

        async def chunks() -> AsyncIterator[bytes]:
            renderer = api.stream(alias, call.native, input_estimate)
            include_usage = api.wants_usage_chunk(call.native)
            try:
                async for chunk in self.upstream.relay_stream(opened, alias, include_usage, usage):
                    progressed()
                    data = renderer.feed(chunk)
                    if data:
                        keep(data)
                        yield data
            except (GatewayError, OSError) as broken:  # the provider's stream broke after it began
                failure = broken if isinstance(broken, GatewayError) else STREAM_BROKE
                ending = renderer.fail(failure)
                if ending is None:
                    raise
                keep(ending)
                yield ending
            else:
                ending = renderer.close()
                keep(ending)
                yield ending
            finally:
                finish()

        headers = {"x-gatehouse-deployment": deployment.id, "cache-control": "no-cache"}
        if call.rate is not None:
            headers.update(call.rate.headers())
        return StreamResponse(native_chunks() if native else chunks(), headers, on_close=finish)

    def _settle(self, call: "Call", deployment: DeploymentConfig, usage: Usage, ttft: float | None) -> None:
        elapsed = time.perf_counter() - call.started
        metrics.observe_answer(call.event.alias, deployment.id, elapsed, usage.input_tokens, usage.output_tokens)
        event = call.event
        event.input_tokens, event.output_tokens = usage.input_tokens, usage.output_tokens
        event.cost_micros = deployment.cost_micros(usage.input_tokens, usage.output_tokens, call.moment)
        event.latency_ms, event.ttft_ms = elapsed * 1000, ttft if ttft is not None else elapsed * 1000
        self._record(call)
        if call.admission is not None:
            self.later(self.gate.settle(call.admission, event.cost_micros))
            call.admission = None
        tokens = usage.input_tokens + usage.output_tokens
        if call.tpm_limit and tokens > 0:
            self.later(self.tokens.add_tokens(call.key.org_id, call.key.key_id, call.minute, tokens, call.tpm_limit))

    # Models and token counts -------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        try:
            config, key = self.authenticate(request)
        except GatewayError as error:
            return error.response()
        data = [model_entry(alias) for alias in self.allowed_aliases(config, key)]
        return json_response(200, {"object": "list", "data": data})

    async def retrieve_model(self, request: Request) -> Response:
        """`GET /v1/models/{id}`: the model if this key may use it, else OpenAI's 404 or a 403."""
        alias = unquote(str(request.scope["path"]).removeprefix("/v1/models/"))
        try:
            config, key = self.authenticate(request)
            self.check_model(config, key, alias)
        except GatewayError as error:
            return error.response()
        return json_response(200, model_entry(alias))

    async def count_tokens(self, request: Request) -> Response:
        """`POST /v1/messages/count_tokens`: Anthropic's own count for an Anthropic deployment,
        an estimate for the others. Costs nothing, so nothing is reserved or recorded."""
        api = inbound.MESSAGES
        try:
            config, key = self.authenticate(request)
            native = parse_body(await self.read_body(request))
            alias = storable_text(native.get("model"), "model", MAX_MODEL_LENGTH)
            measured = {**native, "max_tokens": native.get("max_tokens") or 1}  # count_tokens takes none
            api.parse(measured)  # the same checks as a real request
            route = self.check_model(config, key, alias)
            candidates = routing.eligible(config, route, key.team_id, config.policy_for(key))
            if not candidates:
                raise GatewayError(403, "model_not_allowed", f"No deployment your team may use serves {alias!r}.")
            deployment = candidates[0][0]
            credential = config.credentials[deployment.credential_id]
            if credential.provider != "anthropic":
                return json_response(200, {"input_tokens": messages_api.count_tokens_estimate(native)})
            headers = {"anthropic-version": request.header(b"anthropic-version")}
            target = Target(credential, deployment, config.api_keys[credential.id])
            try:
                counted, _usage = await self.upstream.native(target, "count_tokens", native, alias, headers)
            except UpstreamFailure as failure:
                raise failure.error from None
            return json_response(200, counted)
        except GatewayError as error:
            return api.error(error)

    async def healthz(self, request: Request) -> Response:
        return Response(200, b"ok", content_type=b"text/plain; charset=utf-8")

    async def readyz(self, request: Request) -> Response:
        config = self.follower.config
        if config is None:
            return json_response(503, {"ready": False, "reason": self.follower.last_error or "no config yet"})
        body = {"ready": True, "revision": config.revision, "config_hash": config.hash}
        if self.usage.buffer:  # usage events waiting for Redis: an outage in progress
            body["usage_buffered"] = len(self.usage.buffer)
        return json_response(200, body)

    async def metrics_endpoint(self, request: Request) -> Response:
        if not metrics.scrape_allowed(request):  # the same rule as the portal's /metrics
            return GatewayError(403, "forbidden", "Metrics need the metrics token, or a loopback client.").response()
        config = self.follower.config
        metrics.config_revision.set(config.revision if config else 0)
        return Response(200, generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.encode())

    async def start(self) -> None:
        await self.follower.start()
        self._bill_interrupted_streams()
        self.usage.start()
        self.loop_watch = asyncio.get_running_loop().create_task(metrics.watch_loop_lag())

    def _bill_interrupted_streams(self) -> None:
        """Streams a previous process of this node was relaying when it died: their usage goes
        to the spool (durably) before their journal files are deleted; then their holds settle."""
        found = self.journal.interrupted()
        if not found:
            return
        self.usage.persist([interrupted.event for _path, interrupted in found])
        for path, interrupted in found:
            path.unlink(missing_ok=True)
            if interrupted.admission is not None:
                self.later(self.gate.settle(interrupted.admission, interrupted.event.cost_micros))
        log.warning("billed %d streams cut short when this node's previous process stopped", len(found))

    async def stop(self) -> None:
        if self.loop_watch is not None:
            self.loop_watch.cancel()
        if self.background:  # settles and token counts still on their way
            await asyncio.wait(self.background, timeout=5)
        await self.usage.stop()
        await self.follower.stop()
        await self.upstream.close()
        await self.pipe.close()
        await self.redis.aclose()


@dataclass(slots=True)
class Call:
    """One request on its way through the worker."""

    key: KeyConfig
    body: dict[str, Any]
    raw: bytes | None  # the body as the client sent it, when it may be forwarded as it is
    event: UsageEvent
    policy: PolicyConfig
    started: float  # perf_counter, for latency
    moment: float  # wall clock, for prices and budget periods
    reservation_id: str  # ours, never the caller's X-Request-Id: two requests never share one
    api: inbound.Api = inbound.CHAT  # the API the client called
    native: dict[str, Any] = field(default_factory=dict)  # the body in the client's API
    native_only: list[GatewayError] = field(default_factory=list)  # what only the API's own provider honours
    headers: dict[str, str] = field(default_factory=dict)  # client headers the native provider gets
    rate: "RateHeaders | None" = None
    minute: int = 0
    rpm_limit: int | None = None  # the key's, within its team's (GatewayConfig.rate_limits)
    tpm_limit: int | None = None
    admission: Admission | None = None
    recorded: bool = False  # its usage event was emitted
    capture: OrgConfig | None = None  # its org, when its content is captured (gateway/capture.py)
    prompt: bytes = b""  # when captured: the body as the client sent it
    answer: bytearray = field(default_factory=bytearray)  # when captured: what the client got


def worst_case_cost(
    body: dict[str, Any],
    deployments: list[DeploymentConfig],
    chat: bool,
    moment: float,
    config: GatewayConfig | None = None,
) -> int | None:
    """The most this request can cost on any of its deployments, in micro-dollars; None when
    a deployment has no price. Input is bounded by its size in bytes (a token is at least one
    byte), output by max_tokens or the deployment's output cap, times the choices asked for;
    input too, for providers that give n choices as n calls (gateway/upstream.py FANS_OUT_N)."""
    if chat:
        input_bound = len(orjson.dumps(body.get("messages", []))) + len(orjson.dumps(body.get("tools", [])))
        choices = body.get("n") or 1
        asked = body.get("max_tokens") or body.get("max_completion_tokens")  # validated whole numbers
    else:
        input_bound = len(orjson.dumps(body.get("input", "")))
        choices, asked = 0, None  # embeddings produce no output tokens
    worst = 0
    for deployment in deployments:
        price = deployment.price_at(moment)
        if price is None:
            return None
        inputs = 1
        if config is not None and choices > 1:
            credential = config.credentials.get(deployment.credential_id)
            inputs = choices_billed(credential.provider, choices) if credential is not None else choices
        output_bound = min(asked or deployment.max_output_tokens, deployment.max_output_tokens) * choices
        cost = input_bound * inputs * price.input_micros_per_mtok + output_bound * price.output_micros_per_mtok
        worst = max(worst, -(-cost // 1_000_000))
    return worst


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """When a provider reports no usage: about four characters a token, as tokenizers average."""
    text = orjson.dumps(body["messages"] if "messages" in body else body.get("input", ""))
    return max(1, len(text) // 4)


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """OpenAI's rate-limit headers for a key with RPM or TPM limits: the limit, what is left
    of this minute's window, and when it resets."""

    rpm_limit: int | None
    tpm_limit: int | None
    requests: int
    tokens: int
    moment: float

    def headers(self) -> dict[str, str]:
        reset = f"{max(0.001, 60 - self.moment % 60):.3f}s"
        headers = {}
        if self.rpm_limit:
            headers["x-ratelimit-limit-requests"] = str(self.rpm_limit)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.rpm_limit - self.requests))
            headers["x-ratelimit-reset-requests"] = reset
        if self.tpm_limit:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm_limit)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm_limit - self.tokens))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers


def model_entry(alias: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": "gatehouse"}


def create_app(settings: GatewaySettings | None = None) -> Router:
    gateway = Gateway(settings or GatewaySettings.from_env())
    app = Router(
        {
            ("POST", "/v1/chat/completions"): gateway.chat_completions,
            ("POST", "/v1/embeddings"): gateway.embeddings,
            ("POST", "/v1/messages"): gateway.messages,
            ("POST", "/v1/messages/count_tokens"): gateway.count_tokens,
            ("POST", "/v1/responses"): gateway.responses,
            ("GET", "/v1/models"): gateway.list_models,
            ("GET", "/healthz"): gateway.healthz,
            ("GET", "/readyz"): gateway.readyz,
            ("GET", "/metrics"): gateway.metrics_endpoint,
        },
        startup=gateway.start,
        shutdown=gateway.stop,
        prefixes={("GET", "/v1/models/"): gateway.retrieve_model},
        cors_origins=gateway.settings.cors_origins,
    )
    return app
