"""The gateway driven by the official openai SDK, against the provider simulator."""

import time

import httpx
import openai
import pytest

from fleet import services
from keys.services import issue_key, revoke_key


def sdk(worker, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key=key, max_retries=0, timeout=10)


def test_chat_completion_with_the_openai_sdk(served, gateway_workers):
    (worker,) = gateway_workers(1)
    completion = sdk(worker, served["plaintext"]).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert completion.choices[0].message.content.startswith("Gatehouse")
    assert completion.model == "gpt-4o"
    assert completion.usage.completion_tokens == 16


def test_streaming_with_the_openai_sdk(served, gateway_workers):
    (worker,) = gateway_workers(1)
    stream = sdk(worker, served["plaintext"]).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=5,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["Gatehouse", "simulated", "answer", "token", "Gatehouse"]
    assert chunks[-1].usage.completion_tokens == 5


def test_embeddings_and_models(served, gateway_workers):
    (worker,) = gateway_workers(1)
    client = sdk(worker, served["plaintext"])
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2
    assert sorted(m.id for m in client.models.list()) == ["claude-sonnet", "gpt-4o", "text-embedding-3-small"]


def test_unknown_and_revoked_keys_get_401(served, gateway_workers, actors):
    (worker,) = gateway_workers(1)
    with pytest.raises(openai.AuthenticationError) as error:
        sdk(worker, "gh_not-a-real-key").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    assert error.value.code == "invalid_api_key"


def test_a_model_outside_the_key_is_403(served, gateway_workers, actors, team):
    _key, plaintext = issue_key(actor=actors["admin"], team=team, name="narrow", allowed_models=["gpt-4o"])
    services.publish_pending()
    (worker,) = gateway_workers(1)
    worker.wait(lambda: worker.revision() is not None)
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk(worker, plaintext).chat.completions.create(
            model="claude-sonnet", messages=[{"role": "user", "content": "x"}]
        )
    assert error.value.code == "model_not_allowed"


def test_revocation_reaches_every_worker_within_a_second(served, gateway_workers, actors):
    workers = gateway_workers(3)
    for worker in workers:
        assert sdk(worker, served["plaintext"]).models.list().data
    revoke_key(actor=actors["admin"], key=served["key"])
    started = time.monotonic()
    services.publish_pending()
    for worker in workers:
        worker.wait(
            lambda w=worker: (
                httpx.get(f"{w.url}/v1/models", headers={"Authorization": f"Bearer {served['plaintext']}"}).status_code
                == 401
            ),
            timeout=1.0,
        )
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "gpt-4o"}', "'messages'"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "'stream'"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 999999999}', "max_tokens"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 128}', "'n'"),
        (b"[]", "JSON object"),
    ],
)
def test_bad_requests_get_400_in_openai_shape(served, gateway_workers, body, message):
    (worker,) = gateway_workers(1)
    response = httpx.post(
        f"{worker.url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {served['plaintext']}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert message in response.json()["error"]["message"]


def test_a_50_megabyte_body_is_refused_without_hanging(served, gateway_workers):
    (worker,) = gateway_workers(1)
    response = httpx.post(
        f"{worker.url}/v1/chat/completions",
        content=b"x" * (50 * 1024 * 1024),
        headers={"Authorization": f"Bearer {served['plaintext']}"},
        timeout=30,
    )
    assert response.status_code == 400
