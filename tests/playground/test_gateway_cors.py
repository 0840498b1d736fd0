"""CORS on the gateway (GATEWAY_CORS_ORIGINS), so the portal's playground can call it from the
browser: preflights answered, the answer's headers readable, and nothing for other origins."""

import asyncio

import httpx
import pytest

from gateway.http import CORS_EXPOSED, Router, allowed_origins, json_response

PORTAL = "http://portal.example.test:8000"
PREFLIGHT = {
    "Origin": PORTAL,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture
def worker(served, gateway_workers):
    (worker,) = gateway_workers(1, GATEWAY_CORS_ORIGINS=f"{PORTAL}, https://other.example.test")
    return worker


def chat(worker, key: str, origin: str | None = PORTAL, **body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} | ({"Origin": origin} if origin else {})
    return httpx.post(f"{worker.url}/v1/chat/completions", json=CHAT | body, headers=headers, timeout=10)


def test_it_answers_a_preflight_from_an_allowed_origin(worker):
    response = httpx.options(f"{worker.url}/v1/chat/completions", headers=PREFLIGHT, timeout=5)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == PORTAL
    assert response.headers["access-control-allow-methods"] == "GET, POST"
    allowed = {name.strip() for name in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert response.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in response.headers
    assert response.content == b""


def test_an_answer_to_an_allowed_origin_exposes_the_gateways_headers(worker, served):
    response = chat(worker, served["plaintext"])
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PORTAL
    exposed = {name.strip() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-gatehouse-deployment", "x-ratelimit-remaining-requests"} <= exposed
    assert response.headers["x-request-id"]


def test_a_stream_to_an_allowed_origin_carries_the_headers(worker, served):
    response = chat(worker, served["plaintext"], stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["access-control-allow-origin"] == PORTAL
    assert "x-gatehouse-deployment" in response.headers["access-control-expose-headers"]


def test_errors_carry_the_headers_so_the_page_can_read_them(worker):
    response = chat(worker, "gh_not-a-real-key")
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == PORTAL
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_another_origin_gets_no_cors_headers_and_no_preflight(worker, served):
    stranger = "https://evil.example.test"
    preflight = httpx.options(f"{worker.url}/v1/chat/completions", headers=PREFLIGHT | {"Origin": stranger})
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers
    response = chat(worker, served["plaintext"], origin=stranger)
    assert response.status_code == 200  # a server-side caller is not a browser: CORS does not apply
    assert "access-control-allow-origin" not in response.headers


def test_a_request_without_an_origin_is_unchanged(worker, served):
    response = chat(worker, served["plaintext"], origin=None)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_only_the_api_routes_are_open_to_browsers(worker):
    response = httpx.get(f"{worker.url}/readyz", headers={"Origin": PORTAL}, timeout=5)
    assert "access-control-allow-origin" not in response.headers


def test_without_the_setting_there_is_no_cors(served, gateway_workers):
    (worker,) = gateway_workers(1)
    preflight = httpx.options(f"{worker.url}/v1/chat/completions", headers=PREFLIGHT, timeout=5)
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in chat(worker, served["plaintext"]).headers


def test_the_exposed_headers_are_the_gateways_own():
    assert CORS_EXPOSED.split(", ") == [
        "x-request-id",
        "x-client-request-id",
        "x-gatehouse-deployment",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ]


def test_the_setting_takes_comma_separated_origins():
    assert allowed_origins("") == frozenset()
    assert allowed_origins(" https://Portal.example.com/ , http://127.0.0.1:8000") == {
        "https://portal.example.com",
        "http://127.0.0.1:8000",
    }


@pytest.mark.parametrize(
    "value", ["*", "portal.example.com", "https://portal.example.com/app", "ftp://x.test", "http://x.test:port"]
)
def test_the_setting_refuses_what_is_not_an_origin(value):
    with pytest.raises(SystemExit, match="GATEWAY_CORS_ORIGINS"):
        allowed_origins(value)


# The router alone (gateway/http.py), without a worker ----------------------------------------

SHARED_HEADERS = {"x-gatehouse-deployment": "d1"}


async def _answer(request):
    return json_response(200, {"ok": True}, SHARED_HEADERS)


async def _nothing():
    return None


def router() -> Router:
    return Router({("POST", "/v1/chat/completions"): _answer}, _nothing, _nothing, cors_origins={PORTAL})


def test_the_router_answers_preflights_and_leaves_a_handlers_headers_alone():
    async def ask():
        transport = httpx.ASGITransport(app=router())
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            return (
                await client.options("/v1/chat/completions", headers=PREFLIGHT),
                await client.post("/v1/chat/completions", headers={"Origin": PORTAL}),
                await client.get("/v1/no-such-route", headers={"Origin": PORTAL}),
            )

    preflight, answer, unknown = asyncio.run(ask())
    assert (preflight.status_code, preflight.headers["access-control-allow-origin"]) == (204, PORTAL)
    assert "content-length" not in preflight.headers and "content-type" not in preflight.headers
    assert answer.headers["access-control-allow-origin"] == PORTAL
    assert SHARED_HEADERS == {"x-gatehouse-deployment": "d1"}
    assert (unknown.status_code, unknown.headers["access-control-allow-origin"]) == (404, PORTAL)
