"""Every kind of upstream at the provider simulator, each in its own wire format: one
credential, a chat route and (where the provider has embeddings) an embedding route per kind,
and a caller key with an RPM limit (tests/gateway/test_sdk_matrix.py, test_api_surface.py)."""

import json
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fleet import services
from keys.services import create_credential, issue_key
from sla.services import create_deployment, create_route

KINDS = ("openai", "openai_compatible", "anthropic", "gemini", "vertex_ai", "bedrock")
CHAT_MODELS = {
    "openai": "gpt-4o",
    "openai_compatible": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4",
    "gemini": "gemini-2.5-flash",
    "vertex_ai": "gemini-2.5-pro",
    "bedrock": "anthropic.claude-sonnet-4",
}
EMBEDDING_MODELS = {
    "openai": "text-embedding-3-small",
    "openai_compatible": "text-embedding-3-small",
    "gemini": "text-embedding-004",
    "vertex_ai": "text-embedding-005",
    "bedrock": "amazon.titan-embed-text-v2:0",
}
PRICES = (Decimal("2.50"), Decimal("10.00"))


def service_account(token_uri: str) -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "gatehouse-test",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": "gateway@gatehouse-test.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": token_uri,
        }
    )


def make_kind(kind: str, org, actor, simulator_url: str):
    """A credential of `kind` at the simulator, and its chat (and embedding) routes."""
    fields: dict = {}
    if kind in ("openai", "openai_compatible"):
        fields = {"base_url": f"{simulator_url}/v1", "secrets": {"api_key": "sk-matrix-openai"}}
    elif kind == "anthropic":
        fields = {"base_url": simulator_url, "secrets": {"api_key": "sk-ant-matrix"}}
    elif kind == "gemini":
        fields = {"base_url": simulator_url, "secrets": {"api_key": "AIza-matrix-gemini"}}
    elif kind == "vertex_ai":
        fields = {
            "base_url": simulator_url,
            "project": "gatehouse-test",
            "region": "us-central1",
            "secrets": {"service_account_json": service_account(f"{simulator_url}/_sim/google/token")},
        }
    elif kind == "bedrock":
        fields = {
            "base_url": simulator_url,
            "region": "us-east-1",
            "access_key_id": "AKIAMATRIXTEST000001",
            "secrets": {"secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYMATRIXKEY1"},
        }
    credential = create_credential(actor=actor, org=org, name=f"{kind} matrix", provider=kind, **fields)
    aliases = {}
    for role, models in (("chat", CHAT_MODELS), ("embed", EMBEDDING_MODELS)):
        model = models.get(kind)
        if model is None:
            continue
        deployment = create_deployment(
            actor=actor,
            org=org,
            name=f"{kind} {role}",
            credential=credential,
            upstream_model=model,
            input_price_per_mtok=PRICES[0],
            output_price_per_mtok=PRICES[1],
        )
        alias = f"{role}-{kind.replace('_', '-')}"
        create_route(actor=actor, org=org, alias=alias, deployments=[deployment])
        aliases[role] = alias
    return aliases


@pytest.fixture
def matrix(org, team, actors, users, provider_simulator, clean_redis, fresh_key_ring):
    aliases = {kind: make_kind(kind, org, actors["admin"], provider_simulator.url) for kind in KINDS}
    _key, plaintext = issue_key(
        actor=actors["admin"], team=team, name="matrix", user=users["developer"], rpm_limit=1000
    )
    services.publish_pending()
    return {"aliases": aliases, "plaintext": plaintext}
