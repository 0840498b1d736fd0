"""The config the control plane compiles (fleet/compile.py) and every gateway worker loads.

A revision travels as canonical JSON bytes signed with Ed25519:

    {"schema": 1, "revision": N, "kind": "full", "entities": {TYPE: {ID: VALUE}}, "signed_at": T}
    {"schema": 1, "revision": N, "kind": "full", "entities": ..., "revision_sha256": HASH, "signed_at": T}
    {"schema": 1, "revision": N, "kind": "delta", "base_revision": N-1,
     "ops": [{"type": TYPE, "id": ID, "value": VALUE or null}], "signed_at": T}

A null value deletes the entity. The second form is a compaction: revision N's content as
one snapshot, carrying the hash of revision N as published, so workers already at N have
nothing to load and every worker at N reports the same hash. Workers validate everything here
before they swap configs; anything unexpected rejects the whole revision and the last good
config keeps serving.

`signed_at` is when the control plane signed the document (Unix seconds), and it signs only
while N is its newest revision (under the publish lock). So a signed_at within the last hour
proves N was current within the hour: a worker with nothing on disk refuses to start from a
config signed too long ago, since anyone who can write to Redis could put back any snapshot
ever signed (gateway/follower.py). Compaction re-signs the newest snapshot regularly to keep it
fresh in a quiet fleet. Documents signed before signing times were recorded have none: they
count as signed at 0, i.e. too old to start from, and the first compaction re-signs them.
This module is plain Python: the control plane imports it, the gateway never imports Django.
"""

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .layered_map import LayeredMap

SCHEMA_VERSION = 1
ENTITY_TYPES = ("org", "team", "key", "credential", "deployment", "route", "budget", "policy")
STRATEGIES = ("priority", "weighted", "latency", "cost")
RETRY_CONDITIONS = ("timeout", "429", "5xx")
BUDGET_PERIODS = ("daily", "weekly", "monthly", "total")
BUDGET_SCOPES = ("org", "team", "key")
PROVIDERS = ("openai", "anthropic", "azure_openai", "openai_compatible", "gemini", "vertex_ai", "bedrock")
MICROS_PER_DOLLAR = 1_000_000

# Published keys for development and tests only (GATEHOUSE_DEVELOPMENT_KEYS=1 on a worker,
# DJANGO_DEBUG or pytest on the control plane). Production refuses to start without real ones.
DEVELOPMENT_SIGNING_KEY = "ZGV2ZWxvcG1lbnQtc2lnbmluZy1rZXktbm90LXNlY3I"
DEVELOPMENT_GATEWAY_KEY = "ZGV2ZWxvcG1lbnQtZ2F0ZXdheS1rZXktbm90LXNlY3I"


class ConfigError(Exception):
    """A revision that must not be applied: bad signature, schema, or revision order."""


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the exact bytes a revision's hash and signature cover."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def content_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


# Signing ---------------------------------------------------------------------------------


def decode_raw_key(text: str, name: str, size: int = 32) -> bytes:
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except ValueError:
        raise ConfigError(f"{name} is not valid base64.") from None
    if len(raw) != size:
        raise ConfigError(f"{name} must decode to {size} bytes, got {len(raw)}.")
    return raw


def encode_raw_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def signing_key_from_text(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(decode_raw_key(text, "GATEHOUSE_SIGNING_KEY"))


def public_key_text(private: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return encode_raw_key(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def verify_key_from_text(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(decode_raw_key(text, "GATEHOUSE_SIGNING_PUBLIC_KEY"))


ENVELOPE_MAGIC = b"GHCFG1 "


def sign_envelope(private: Ed25519PrivateKey, payload: bytes) -> bytes:
    """What Redis holds for one revision: `GHCFG1 <base64 signature>\n<payload>`. The payload
    stays raw (not JSON inside JSON), so a 30 MB snapshot is parsed once, not twice."""
    return ENVELOPE_MAGIC + base64.b64encode(private.sign(payload)) + b"\n" + payload


def envelope_payload(envelope: bytes) -> bytes:
    """The payload of an envelope, unverified (for peeking at its revision numbers)."""
    if not envelope.startswith(ENVELOPE_MAGIC) or b"\n" not in envelope:
        raise ConfigError("The envelope is malformed.")
    return envelope.split(b"\n", 1)[1]


def verify_envelope(public: Ed25519PublicKey, envelope: bytes) -> bytes:
    """The payload of a signed envelope; ConfigError unless the signature verifies."""
    verify_signature(public, envelope)
    return envelope_payload(envelope)


def verify_signature(public: Ed25519PublicKey, envelope: bytes | bytearray) -> None:
    """ConfigError unless the envelope's signature verifies. Verifying a 30 MB snapshot releases
    the GIL, so it can run on a thread beside the event loop; it reads the payload in place, as
    copying it out would hold the GIL for about 20 ms."""
    envelope_payload(bytes(envelope[:4096]))  # the same checks of the header, on a copy of its start
    header_end = envelope.index(b"\n")
    try:
        signature = base64.b64decode(envelope[len(ENVELOPE_MAGIC) : header_end], validate=True)
    except ValueError:
        raise ConfigError("The envelope is malformed.") from None
    try:
        public.verify(signature, memoryview(envelope)[header_end + 1 :])
    except InvalidSignature:
        raise ConfigError("The signature does not verify.") from None


SIGNED_AT_MARKER = b',"signed_at":'


def peek_signed_at(payload_tail: bytes) -> int:
    """A document's signed_at read from the last bytes of its payload without parsing 30 MB:
    canonical JSON sorts keys and "signed_at" sorts after every other top-level key, so a
    payload ends with `,"signed_at":T}`. 0 when it has none. Not verified: a hint for
    skipping work, never a reason to accept anything."""
    at = payload_tail.rfind(SIGNED_AT_MARKER)
    if at < 0 or not payload_tail.endswith(b"}"):
        return 0
    digits = payload_tail[at + len(SIGNED_AT_MARKER) : -1]
    return int(digits) if digits.isdigit() and len(digits) < 20 else 0


def document_signed_at(document: Mapping[str, Any]) -> int:
    """When the control plane signed a document, in Unix seconds; 0 for a document signed
    before signing times were recorded."""
    signed_at = document.get("signed_at", 0)
    if isinstance(signed_at, bool) or not isinstance(signed_at, int) or signed_at < 0:
        raise ConfigError("signed_at must be Unix seconds")
    return signed_at


def open_envelope(public: Ed25519PublicKey, envelope: bytes) -> tuple[dict[str, Any], bytes]:
    """(document, payload bytes) of a signed envelope; ConfigError if anything is off."""
    payload = verify_envelope(public, envelope)
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ConfigError("The payload is not JSON.") from None
    if not isinstance(document, dict):
        raise ConfigError("The payload is not an object.")
    return document, payload


# Provider secrets sealed for the workers ------------------------------------------------------


def seal_for_gateway(gateway_key: bytes, secret: str, *, credential_id: str) -> str:
    """Deterministic sealing (the nonce derives from key, credential and secret), so an
    unchanged secret compiles to unchanged bytes and does not churn revisions. A nonce repeats
    only for the identical message, which reveals nothing new."""
    aad = f"gatehouse:gateway-secret:{credential_id}".encode()
    nonce = hmac.new(gateway_key, aad + b"\0" + secret.encode(), hashlib.sha256).digest()[:12]
    return base64.b64encode(nonce + AESGCM(gateway_key).encrypt(nonce, secret.encode(), aad)).decode()


def open_for_gateway(gateway_key: bytes, sealed: str, *, credential_id: str) -> str:
    aad = f"gatehouse:gateway-secret:{credential_id}".encode()
    try:
        raw = base64.b64decode(sealed, validate=True)
        return AESGCM(gateway_key).decrypt(raw[:12], raw[12:], aad).decode()
    except (ValueError, InvalidTag):
        raise ConfigError(f"The secret of credential {credential_id} does not open with this gateway key.") from None


# Entities --------------------------------------------------------------------------------


def _require(value: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
    if name not in value:
        raise ConfigError(f"missing field {name!r}")
    item = value[name]
    if item is None and nullable:
        return None
    if isinstance(item, bool) and kind is int:
        raise ConfigError(f"field {name!r} must be an integer")
    if not isinstance(item, kind):
        raise ConfigError(f"field {name!r} has the wrong type")
    return item


def _string_tuple(value: Mapping[str, Any], name: str) -> tuple[str, ...]:
    items = _require(value, name, list)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"field {name!r} must be a list of strings")
    return tuple(items)


def _optional_str(value: Mapping[str, Any], name: str) -> str:
    found = value.get(name, "")
    if not isinstance(found, str):
        raise ConfigError(f"field {name!r} must be a string")
    return found


MAX_CAPTURE_BYTES = 65_536  # the most of a prompt, and of an answer, that capture keeps


def _base64(text: Any, name: str) -> bytes:
    if not isinstance(text, str):
        raise ConfigError(f"field {name!r} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigError(f"field {name!r} is not valid base64") from None


def _limit(value: Mapping[str, Any], name: str) -> int | None:
    limit: int | None = _require(value, name, int, nullable=True)
    if limit is not None and limit < 1:
        raise ConfigError(f"field {name!r} must be positive")
    return limit


@dataclass(frozen=True, slots=True)
class OrgConfig:
    id: str
    slug: str
    budget_fail_open: bool
    rate_limit_fail_open: bool = False
    # Content capture (gateway/capture.py): the org's X25519 public key, empty when the org
    # never turned capture on, and how many bytes of a prompt and of an answer are kept.
    capture_key: bytes = b""
    capture_max_bytes: int = 0

    @classmethod
    def parse(cls, entity_id: str, value: Mapping[str, Any]) -> "OrgConfig":
        capture_key = _base64(value.get("capture_key") or "", "capture_key")
        if capture_key and len(capture_key) != 32:
            raise ConfigError("field 'capture_key' must be an X25519 public key")
        max_bytes = value.get("capture_max_bytes", 0)
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or not 0 <= max_bytes <= MAX_CAPTURE_BYTES:
            raise ConfigError(f"field 'capture_max_bytes' must be a whole number up to {MAX_CAPTURE_BYTES}")
        return cls(
            id=entity_id,
            slug=_require(value, "slug", str),
            budget_fail_open=bool(value.get("budget_fail_open", False)),
            rate_limit_fail_open=bool(value.get("rate_limit_fail_open", False)),
            capture_key=capture_key,
            capture_max_bytes=max_bytes,
        )


@dataclass(frozen=True, slots=True)
class TeamConfig:
    id: str
    org_id: str
    allowed_models: tuple[str, ...]
    rpm_limit: int | None
    tpm_limit: int | None
    capture: bool = False  # the team's requests are captured: its own setting, else its org's

    @classmethod
    def parse(cls, entity_id: str, value: Mapping[str, Any]) -> "TeamConfig":
        return cls(
            id=entity_id,
            org_id=_require(value, "org_id", str),
            allowed_models=_string_tuple(value, "allowed_models"),
            rpm_limit=_limit(value, "rpm_limit"),
            tpm_limit=_limit(value, "tpm_limit"),
            capture=bool(value.get("capture", False)),
        )


@dataclass(frozen=True, slots=True)
class KeyConfig:
    id: str  # the key's SHA-256 digest: workers look keys up by what the caller sends
    key_id: str
    org_id: str
    team_id: str
    prefix: str
    allowed_models: tuple[str, ...]
    rpm_limit: int | None
    tpm_limit: int | None
    expires_at: float | None  # Unix seconds; revoked keys are not in the config at all

    @classmethod
    def parse(cls, entity_id: str, value: Mapping[str, Any]) -> "KeyConfig":
        if len(entity_id) != 64:
            raise ConfigError("a key's id must be its SHA-256 digest")
        expires_at = _require(value, "expires_at", (int, float), nullable=True)
        return cls(
            id=entity_id,
            key_id=_require(value, "key_id", str),
            org_id=_require(value, "org_id", str),
            team_id=_require(value, "team_id", str),
            prefix=_require(value, "prefix", str),
            allowed_models=_string_tuple(value, "allowed_models"),
            rpm_limit=_limit(value, "rpm_limit"),
            tpm_limit=_limit(value, "tpm_limit"),
            expires_at=float(expires_at) if expires_at is not None else None,
        )


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    id: str
    org_id: str
    provider: str
    base_url: str
    azure_endpoint: str
    azure_api_version: str
    team_ids: tuple[str, ...]  # empty: every team of the org
    sealed_api_key: str  # the one secret: API key, Vertex service-account JSON, AWS secret access key
    region: str = ""  # Vertex AI location or AWS region
    project: str = ""  # Vertex AI project id
    access_key_id: str = ""  # AWS access key id (not secret: it names the key)
    role_arn: str = ""  # AWS role to assume with that key (optional)

    @classmethod
    def parse(cls, entity_id: str, value: Mapping[str, Any]) -> "CredentialConfig":
        provider = _require(value, "provider", str)
        if provider not in PROVIDERS:
            raise ConfigError(f"unknown provider {provider!r}")
        return cls(
            id=entity_id,
            org_id=_require(value, "org_id", str),
            provider=provider,
            base_url=_require(value, "base_url", str),
            azure_endpoint=_require(value, "azure_endpoint", str),
            azure_api_version=_require(value, "azure_api_version", str),
            team_ids=_string_tuple(value, "team_ids"),
            sealed_api_key=_require(value, "sealed_api_key", str),
            # Absent from documents compiled before Google and AWS upstreams existed.
            region=_optional_str(value, "region"),
            project=_optional_str(value, "project"),
            access_key_id=_optional_str(value, "access_key_id"),
            role_arn=_optional_str(value, "role_arn"),
        )


@dataclass(frozen=True, slots=True)
class PriceConfig:
    effective_from: float  # Unix seconds
    input_micros_per_mtok: int  # micro-dollars per million tokens
    output_micros_per_mtok: int
    cached_input_micros_per_mtok: int


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    id: str
    org_id: str
    credential_id: str
    upstream_model: str
    max_output_tokens: int
    prices: tuple[PriceConfig, ...]  # ascending by effective_from; empty: no price
    region: str = "global"

    @classmethod
    def parse(cls, entity_id: str, value: Mapping[str, Any]) -> "DeploymentConfig":
        prices = []
        for row in _require(value, "prices", list):
            if not isinstance(row, list) or len(row) != 4 or not all(isinstance(x, int | float) for x in row):
                raise ConfigError("a price is [effective_from, input, output, cached input]")
            if any(x < 0 for x in row[1:]):
                raise ConfigError("prices must not be negative")
            prices.append(PriceConfig(float(row[0]), int(row[1]), int(row[2]), int(row[3])))
        max_output = _require(value, "max_output_tokens", int)
        if max_output < 1:
            raise ConfigError("max_output_tokens must be positive")
        return cls(
            id=entity_id,
            org_id=_require(value, "org_id", str),
            credential_id=_require(value, "credential_id", str),
            upstream_model=_require(value, "upstream_model", str),
            max_output_tokens=max_output,
            prices=tuple(sorted(prices, key=lambda price: price.effective_from)),
            region=str(value.get("region", "global")),
        )

    def price_at(self, moment: float) -> PriceConfig | None:
        """The price in force at `moment`: a price change applies from its date, never before."""
        current = None
        for price in self.prices:
            if price.effective_from > moment:
                break
            current = price
        return current

    def cost_micros(self, input_tokens: int, output_tokens: int, moment: float) -> int:
        """Cost in micro-dollars, rounded up so the gateway never under-charges."""
        price = self.price_at(moment)
        if price is None:
            return 0
        numerator = input_tokens * price.input_micros_per_mtok + output_tokens * price.output_micros_per_mtok
        return -(-numerator // 1_000_000)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    id: str
    org_id: str
    alias: str
    deployment_ids: tuple[str, ...]  # in priority order
    weights: tuple[int, ...]  # parallel to deployment_ids, for the weighted strategy

    @classmethod
    def parse(cls, entity_id: str, value: Mapping[str, Any]) -> "RouteConfig":
        deployments = _string_tuple(value, "deployment_ids")
        if not deployments:
            raise ConfigError("a route needs at least one deployment")
        weights = value.get("weights") or [1] * len(deployments)
        if (
            not isinstance(weights, list)
            or len(weights) != len(deployments)
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in weights)
        ):
            raise ConfigError("weights must be one whole number per deployment")
        return cls(
            id=entity_id,
            org_id=_require(value, "org_id", str),
            alias=_require(value, "alias", str),
            deployment_ids=deployments,
            weights=tuple(weights),
        )


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """What the gateway does when a provider slows down or fails (sla.models.SlaPolicy)."""

    id: str
    org_id: str
    team_id: str  # empty: the org's default policy
    strategy: str = "priority"
    route_strategies: tuple[tuple[str, str], ...] = ()
    connect_timeout_ms: int = 5_000
    first_token_timeout_ms: int = 30_000
    total_timeout_ms: int = 120_000
    max_retries: int = 2
    retry_on: tuple[str, ...] = RETRY_CONDITIONS
    backoff_base_ms: int = 100
    backoff_max_ms: int = 2_000
    breaker_failure_rate: int = 50
    breaker_window_seconds: int = 60
    breaker_min_requests: int = 10
    breaker_cooldown_seconds: int = 30
    allowed_providers: tuple[str, ...] = ()
    allowed_regions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entity_id: str, value: Mapping[str, Any]) -> "PolicyConfig":
        strategy = _require(value, "strategy", str)
        route_strategies = _require(value, "route_strategies", dict)
        if strategy not in STRATEGIES or not all(s in STRATEGIES for s in route_strategies.values()):
            raise ConfigError("unknown routing strategy")
        retry_on = _string_tuple(value, "retry_on")
        if not set(retry_on) <= set(RETRY_CONDITIONS):
            raise ConfigError("unknown retry condition")
        numbers = {}
        for name in (
            "connect_timeout_ms", "first_token_timeout_ms", "total_timeout_ms", "max_retries", "backoff_base_ms",
            "backoff_max_ms", "breaker_failure_rate", "breaker_window_seconds", "breaker_min_requests",
            "breaker_cooldown_seconds",
        ):  # fmt: skip
            number = _require(value, name, int)
            if number < 0:
                raise ConfigError(f"{name} must not be negative")
            numbers[name] = number
        return cls(
            id=entity_id,
            org_id=_require(value, "org_id", str),
            team_id=_require(value, "team_id", str),
            strategy=strategy,
            route_strategies=tuple(sorted(route_strategies.items())),
            retry_on=retry_on,
            allowed_providers=_string_tuple(value, "allowed_providers"),
            allowed_regions=_string_tuple(value, "allowed_regions"),
            **numbers,
        )

    def strategy_for(self, alias: str) -> str:
        return dict(self.route_strategies).get(alias, self.strategy)


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    id: str
    org_id: str
    name: str
    scope: str
    scope_id: str  # the org, team or caller key (its key_id) the budget applies to
    amount_micros: int
    period: str
    hard: bool

    @classmethod
    def parse(cls, entity_id: str, value: Mapping[str, Any]) -> "BudgetConfig":
        scope, period = _require(value, "scope", str), _require(value, "period", str)
        if scope not in BUDGET_SCOPES or period not in BUDGET_PERIODS:
            raise ConfigError("unknown budget scope or period")
        amount = _require(value, "amount_micros", int)
        if amount < 1:
            raise ConfigError("a budget amount must be positive")
        return cls(
            id=entity_id,
            org_id=_require(value, "org_id", str),
            name=_require(value, "name", str),
            scope=scope,
            scope_id=_require(value, "scope_id", str),
            amount_micros=amount,
            period=period,
            hard=_require(value, "hard", bool),
        )


PARSERS: dict[str, Callable[[str, Mapping[str, Any]], Any]] = {
    "org": OrgConfig.parse,
    "team": TeamConfig.parse,
    "key": KeyConfig.parse,
    "credential": CredentialConfig.parse,
    "deployment": DeploymentConfig.parse,
    "route": RouteConfig.parse,
    "budget": BudgetConfig.parse,
    "policy": PolicyConfig.parse,
}


def parse_entity(entity_type: str, entity_id: Any, value: Any) -> Any:
    if entity_type not in PARSERS:
        raise ConfigError(f"unknown entity type {entity_type!r}")
    if not isinstance(entity_id, str) or not entity_id:
        raise ConfigError(f"{entity_type}: the id must be a non-empty string")
    if not isinstance(value, dict):
        raise ConfigError(f"{entity_type} {entity_id}: the value must be an object")
    try:
        return PARSERS[entity_type](entity_id, value)
    except ConfigError as error:
        raise ConfigError(f"{entity_type} {entity_id}: {error}") from None


# The loaded config -------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    """One revision of the whole fleet's config, with lookups built. Workers build a new one
    aside and swap the reference; nothing mutates a built one, so the next revision shares
    every map a delta leaves untouched (and the bulk of the key index, see LayeredMap)."""

    revision: int
    hash: str
    # When the newest document this config is built from was signed (config.py's docstring).
    signed_at: int = 0
    orgs: dict[str, OrgConfig] = field(default_factory=dict)
    teams: dict[str, TeamConfig] = field(default_factory=dict)
    keys: LayeredMap[KeyConfig] = field(default_factory=LayeredMap)
    credentials: dict[str, CredentialConfig] = field(default_factory=dict)
    deployments: dict[str, DeploymentConfig] = field(default_factory=dict)
    routes: dict[str, RouteConfig] = field(default_factory=dict)
    routes_by_alias: dict[tuple[str, str], RouteConfig] = field(default_factory=dict)
    budgets: dict[str, BudgetConfig] = field(default_factory=dict)
    policies: dict[str, PolicyConfig] = field(default_factory=dict)
    policies_by_scope: dict[tuple[str, str], PolicyConfig] = field(default_factory=dict)
    budgets_by_scope: dict[tuple[str, str], list[BudgetConfig]] = field(default_factory=dict)
    api_keys: dict[str, str] = field(default_factory=dict)  # credential id -> plaintext, memory only

    def route(self, org_id: str, alias: str) -> RouteConfig | None:
        return self.routes_by_alias.get((org_id, alias))

    def policy_for(self, key: "KeyConfig") -> PolicyConfig:
        """The team's policy, else the org's default, else the built-in defaults."""
        return (
            self.policies_by_scope.get((key.org_id, key.team_id))
            or self.policies_by_scope.get((key.org_id, ""))
            or PolicyConfig(id="", org_id=key.org_id, team_id="")
        )

    def allowed_models(self, key: "KeyConfig") -> frozenset[str] | None:
        """The aliases a key may call, None for any: the key's own list within its team's. A team
        narrowed after the key was issued binds it at once, without a change to the key."""
        team = self.teams.get(key.team_id)
        own, ceiling = key.allowed_models, team.allowed_models if team else ()
        if own and ceiling:
            return frozenset(own).intersection(ceiling)
        return frozenset(own or ceiling) if (own or ceiling) else None

    def rate_limits(self, key: "KeyConfig") -> tuple[int | None, int | None]:
        """A key's (RPM, TPM) limits: each the lower of the key's and its team's."""
        team = self.teams.get(key.team_id)
        if team is None:
            return key.rpm_limit, key.tpm_limit
        return _lower(key.rpm_limit, team.rpm_limit), _lower(key.tpm_limit, team.tpm_limit)

    def capture_for(self, key: "KeyConfig") -> OrgConfig | None:
        """The key's org when its requests are captured (its team says so, and the org has a
        capture key), else None."""
        team = self.teams.get(key.team_id)
        if team is None or not team.capture:
            return None
        org = self.orgs.get(key.org_id)
        return org if org is not None and org.capture_key and org.capture_max_bytes else None

    def budgets_for(self, key: "KeyConfig") -> list[BudgetConfig]:
        """Every budget that applies to a request with this key: the key's, its team's, its org's."""
        found: list[BudgetConfig] = []
        for scope, scope_id in (("key", key.key_id), ("team", key.team_id), ("org", key.org_id)):
            found += self.budgets_by_scope.get((scope, scope_id), ())
        return found


def _lower(own: int | None, ceiling: int | None) -> int | None:
    if own is None:
        return ceiling
    return own if ceiling is None else min(own, ceiling)


# type -> id -> the parsed entity, or None where the revision removes it
Changes = dict[str, dict[str, Any]]


def _changed(current: dict[str, Any], changes: dict[str, Any] | None) -> dict[str, Any]:
    """`current` with `changes` applied, copied only when there are changes. The maps copied
    here are sized by the orgs' structure (teams, routes, credentials), not by caller keys."""
    if not changes:
        return current
    updated = dict(current)
    for entity_id, entity in changes.items():
        if entity is None:
            updated.pop(entity_id, None)
        else:
            updated[entity_id] = entity
    return updated


def _apply(
    current: GatewayConfig, revision: int, payload_hash: str, signed_at: int, changes: Changes, gateway_key: bytes
) -> GatewayConfig:
    """A new config: `current` with `changes` applied. Only what the changes touch is copied
    or re-derived, and references are cross-checked; ConfigError on the first problem."""
    routes = _changed(current.routes, changes.get("route"))
    deployments = _changed(current.deployments, changes.get("deployment"))
    credentials = _changed(current.credentials, changes.get("credential"))
    if {"route", "deployment", "credential"} & changes.keys():
        for route in routes.values():
            missing = [d for d in route.deployment_ids if d not in deployments]
            if missing:
                raise ConfigError(f"route {route.id}: unknown deployments {missing}")
        for deployment in deployments.values():
            if deployment.credential_id not in credentials:
                raise ConfigError(f"deployment {deployment.id}: unknown credential {deployment.credential_id}")
    api_keys = current.api_keys
    if "credential" in changes:
        api_keys = dict(api_keys)
        for credential_id, credential in changes["credential"].items():
            if credential is None:
                api_keys.pop(credential_id, None)
            else:
                api_keys[credential_id] = open_for_gateway(
                    gateway_key, credential.sealed_api_key, credential_id=credential_id
                )
    routes_by_alias = current.routes_by_alias
    if "route" in changes:
        routes_by_alias = {(route.org_id, route.alias): route for route in routes.values()}
    policies = _changed(current.policies, changes.get("policy"))
    policies_by_scope = current.policies_by_scope
    if "policy" in changes:
        policies_by_scope = {(policy.org_id, policy.team_id): policy for policy in policies.values()}
    budgets = _changed(current.budgets, changes.get("budget"))
    budgets_by_scope = current.budgets_by_scope
    if "budget" in changes:
        budgets_by_scope = {}
        for budget in budgets.values():
            budgets_by_scope.setdefault((budget.scope, budget.scope_id), []).append(budget)
    return GatewayConfig(
        revision=revision,
        hash=payload_hash,
        signed_at=signed_at,
        orgs=_changed(current.orgs, changes.get("org")),
        teams=_changed(current.teams, changes.get("team")),
        keys=current.keys.with_changes(changes["key"]) if "key" in changes else current.keys,
        credentials=credentials,
        deployments=deployments,
        routes=routes,
        routes_by_alias=routes_by_alias,
        budgets=budgets,
        policies=policies,
        policies_by_scope=policies_by_scope,
        budgets_by_scope=budgets_by_scope,
        api_keys=api_keys,
    )


EMPTY = GatewayConfig(revision=-1, hash="")


def config_from_full(document: dict[str, Any], payload: bytes, gateway_key: bytes) -> GatewayConfig:
    """Build a config from a full snapshot. A compaction snapshot carries the SHA-256 of the
    revision it condenses, so a worker reports the same hash however it reached that revision."""
    if document.get("schema") != SCHEMA_VERSION or document.get("kind") != "full":
        raise ConfigError("not a full snapshot of a known schema")
    revision = document.get("revision")
    entities = document.get("entities")
    if not isinstance(revision, int) or revision < 0 or not isinstance(entities, dict):
        raise ConfigError("a full snapshot needs a revision and entities")
    unknown = set(entities) - set(ENTITY_TYPES)
    if unknown:
        raise ConfigError(f"unknown entity types {sorted(unknown)}")
    payload_hash = document.get("revision_sha256") or content_hash(payload)
    if not isinstance(payload_hash, str) or len(payload_hash) != 64:
        raise ConfigError("revision_sha256 must be a SHA-256 in hex")
    signed_at = document_signed_at(document)
    changes: Changes = {}
    for entity_type, items in entities.items():
        if not isinstance(items, dict):
            raise ConfigError(f"{entity_type}: entities must be an object")
        changes[entity_type] = {
            entity_id: parse_entity(entity_type, entity_id, value) for entity_id, value in items.items()
        }
    # Every type counts as changed, so every lookup and cross-check is built from scratch.
    for entity_type in ENTITY_TYPES:
        changes.setdefault(entity_type, {})
    return _apply(EMPTY, revision, payload_hash, signed_at, changes, gateway_key)


def config_from_delta(
    current: GatewayConfig, document: dict[str, Any], payload: bytes, gateway_key: bytes
) -> GatewayConfig:
    """Apply a delta on top of `current`: only the touched entities are parsed and only the
    touched maps copied, so a one-key change costs the same with 10 keys or 100,000."""
    if document.get("schema") != SCHEMA_VERSION or document.get("kind") != "delta":
        raise ConfigError("not a delta of a known schema")
    revision, base = document.get("revision"), document.get("base_revision")
    ops = document.get("ops")
    if not isinstance(revision, int) or not isinstance(base, int) or not isinstance(ops, list):
        raise ConfigError("a delta needs a revision, a base revision and ops")
    if base != current.revision:
        raise ConfigError(f"delta {revision} applies to {base}, this worker has {current.revision}")
    signed_at = max(current.signed_at, document_signed_at(document))
    changes: Changes = {}
    for op in ops:
        if not isinstance(op, dict):
            raise ConfigError("an op must be an object")
        entity_type, entity_id, value = op.get("type"), op.get("id"), op.get("value")
        if entity_type not in ENTITY_TYPES or not isinstance(entity_id, str):
            raise ConfigError(f"bad op {op!r:.200}")
        parsed = None if value is None else parse_entity(entity_type, entity_id, value)
        changes.setdefault(entity_type, {})[entity_id] = parsed
    return _apply(current, revision, content_hash(payload), signed_at, changes, gateway_key)
