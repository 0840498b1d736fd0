"""The compatibility matrix (issue 14): the official `openai` and `anthropic` SDKs against a real
gateway worker, each feature against each kind of upstream, all simulated by the provider
simulator in its own wire format (OpenAI, OpenAI-compatible, Anthropic, Gemini API, Vertex AI,
Bedrock). Responses API calls to the OpenAI kind and Messages API calls to the Anthropic kind
pass through in the provider's own format; every other pair is translated.

Every cell either passes or is one of the documented 400s (DOCUMENTED_400, which the README's
parameter table lists too). One test per upstream kind runs every cell and reports all the
cells that failed, not just the first.
"""

import base64
import json
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from budgets.services import create_budget
from fleet import services
from keys.services import issue_key
from tests.plugins.budget_checks import settled_counters
from tests.plugins.provider_matrix import KINDS

# (kind, cell) -> the parameter the 400 names: what a provider cannot do and the gateway
# cannot translate. The README's "Parameters by provider" table says the same.
DOCUMENTED_400 = {
    ("anthropic", "embeddings"): "embeddings",
    ("anthropic", "embeddings batch"): "embeddings",
    ("bedrock", "embeddings batch"): "input",
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
# A 1x1 PNG.
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
HELLO = [{"role": "user", "content": "Hello"}]
# The simulator's rules (gateway/simulator/behaviour.py): "Hello" is 4 + 2 input tokens, and
# the answer is 16 words; at $2.50 and $10 per million tokens.
HELLO_TOKENS = (6, 16)


class Cells:
    """Runs named checks, noting each failure instead of stopping at the first."""

    def __init__(self, kind: str):
        self.kind, self.failures = kind, []

    def run(self, name: str, check) -> None:
        documented = DOCUMENTED_400.get((self.kind, name))
        try:
            check()
        except (openai.BadRequestError, anthropic.BadRequestError) as error:
            if documented is None or documented not in str(error):
                self.failures.append(f"{name}: {error!r}")
            return
        except Exception as error:
            self.failures.append(f"{name}: {error!r}")
            return
        if documented is not None:
            self.failures.append(f"{name}: expected the documented 400 naming {documented!r}, got an answer")


@pytest.mark.parametrize("kind", KINDS)
def test_every_sdk_feature_against_every_upstream_kind(kind, matrix, gateway_workers):
    (worker,) = gateway_workers(1)
    worker.wait(lambda: worker.revision() is not None)
    key = matrix["plaintext"]
    model = matrix["aliases"][kind]["chat"]
    embed = matrix["aliases"][kind].get("embed", model)
    oa = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=key, max_retries=0, timeout=15)
    an = anthropic.Anthropic(base_url=worker.url, api_key=key, max_retries=0, timeout=15)
    cells = Cells(kind)

    def chat():
        answer = oa.chat.completions.create(model=model, messages=HELLO)
        assert answer.choices[0].message.content.startswith("Gatehouse")
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == HELLO_TOKENS
        assert answer.model == model

    def stream():
        chunks = list(
            oa.chat.completions.create(
                model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}, max_tokens=5
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.split() == ["Gatehouse", "simulated", "answer", "token", "Gatehouse"]
        assert chunks[-1].usage.completion_tokens == 5

    def tools():
        asked = [{"role": "user", "content": "Weather in Paris?"}]
        first = oa.chat.completions.create(model=model, messages=asked, tools=[WEATHER_TOOL])
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Gatehouse"}
        follow = [
            *asked,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
        ]
        second = oa.chat.completions.create(model=model, messages=follow, tools=[WEATHER_TOOL])
        assert second.choices[0].message.content.startswith("Gatehouse")

    def json_mode():
        answer = oa.chat.completions.create(model=model, messages=HELLO, response_format={"type": "json_object"})
        assert isinstance(json.loads(answer.choices[0].message.content), dict)

    def json_schema():
        answer = oa.chat.completions.create(
            model=model,
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
        )
        assert json.loads(answer.choices[0].message.content) == {"name": "Gatehouse", "age": 1}

    def n_choices():
        answer = oa.chat.completions.create(model=model, messages=HELLO, n=2)
        assert [choice.index for choice in answer.choices] == [0, 1]
        assert answer.usage.completion_tokens == 2 * HELLO_TOKENS[1]

    def images():
        content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
        answer = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
        assert answer.choices[0].message.content.startswith("Gatehouse")
        assert answer.usage.prompt_tokens > 85  # the simulator counts 85 per image

    def embeddings():
        result = oa.embeddings.create(model=embed, input="Hello", dimensions=4)
        assert len(result.data) == 1 and len(result.data[0].embedding) == 4

    def embeddings_batch():
        result = oa.embeddings.create(model=embed, input=["a", "b"])
        assert [item.index for item in result.data] == [0, 1]

    def responses_plain():
        response = oa.responses.create(model=model, input="Hello")
        assert response.output_text.startswith("Gatehouse")
        assert (response.usage.input_tokens, response.usage.output_tokens) == HELLO_TOKENS

    def responses_streamed():
        events = list(oa.responses.create(model=model, input="Hello", stream=True))
        done = [event for event in events if event.type == "response.completed"]
        assert done and done[0].response.output_text.startswith("Gatehouse")
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta").startswith("Gatehouse")

    def responses_tools():
        tool = {"type": "function", **{k: v for k, v in WEATHER_TOOL["function"].items()}}
        response = oa.responses.create(model=model, input="Weather in Paris?", tools=[tool])
        calls = [item for item in response.output if item.type == "function_call"]
        assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Gatehouse"}

    def messages_plain():
        message = an.messages.create(model=model, max_tokens=64, messages=HELLO)
        assert message.content[0].text.startswith("Gatehouse")
        assert (message.usage.input_tokens, message.usage.output_tokens) == HELLO_TOKENS

    def messages_streamed():
        with an.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text.startswith("Gatehouse") and final.usage.output_tokens == HELLO_TOKENS[1]

    def messages_tools():
        tool = {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
        message = an.messages.create(
            model=model, max_tokens=64, messages=[{"role": "user", "content": "Weather?"}], tools=[tool]
        )
        used = [block for block in message.content if block.type == "tool_use"]
        assert message.stop_reason == "tool_use" and used[0].input == {"city": "Gatehouse"}

    def models():
        assert model in {m.id for m in oa.models.list()}
        assert oa.models.retrieve(model).id == model
        with pytest.raises(openai.NotFoundError):
            oa.models.retrieve("no-such-model")

    def rate_limit_headers():
        raw = oa.chat.completions.with_raw_response.create(model=model, messages=HELLO)
        assert raw.headers["x-ratelimit-limit-requests"] == "1000"
        assert 0 <= int(raw.headers["x-ratelimit-remaining-requests"]) < 1000
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")

    for name, check in (
        ("chat", chat),
        ("stream", stream),
        ("tools", tools),
        ("json mode", json_mode),
        ("json schema", json_schema),
        ("n", n_choices),
        ("images", images),
        ("embeddings", embeddings),
        ("embeddings batch", embeddings_batch),
        ("responses", responses_plain),
        ("responses streamed", responses_streamed),
        ("responses tools", responses_tools),
        ("messages", messages_plain),
        ("messages streamed", messages_streamed),
        ("messages tools", messages_tools),
        ("models", models),
        ("rate-limit headers", rate_limit_headers),
    ):
        cells.run(name, check)
    assert not cells.failures, "\n".join(cells.failures)


def test_every_error_status_in_both_sdks(matrix, gateway_workers, actors, team, provider_simulator):
    """401, 403, 404, 400, 429 (the key's RPM and the provider's), 502, in each SDK's error
    classes, with the error shape each expects."""
    _key, narrow = issue_key(
        actor=actors["admin"], team=team, name="narrow", allowed_models=["chat-gemini"], rpm_limit=2
    )
    services.publish_pending()
    (worker,) = gateway_workers(1)
    worker.wait(lambda: worker.revision() is not None)
    model = matrix["aliases"]["anthropic"]["chat"]
    oa = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=matrix["plaintext"], max_retries=0, timeout=15)
    an = anthropic.Anthropic(base_url=worker.url, api_key=matrix["plaintext"], max_retries=0, timeout=15)
    for client, errors in ((oa, openai), (an, anthropic)):
        bad = type(client)(base_url=client.base_url, api_key="sk-wrong", max_retries=0)
        call = (
            (lambda c, m: c.chat.completions.create(model=m, messages=HELLO))
            if client is oa
            else (lambda c, m: c.messages.create(model=m, max_tokens=16, messages=HELLO))
        )
        with pytest.raises(errors.AuthenticationError):
            call(bad, model)
        with pytest.raises(errors.NotFoundError):
            call(client, "no-such-model")
        narrowed = type(client)(base_url=client.base_url, api_key=narrow, max_retries=0)
        with pytest.raises(errors.PermissionDeniedError):
            call(narrowed, model)
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model=model, messages=[])
    with pytest.raises(anthropic.BadRequestError) as bad_request:
        an.messages.create(model=model, max_tokens=0, messages=HELLO)
    assert bad_request.value.body["type"] == "error"  # Anthropic's error shape on /v1/messages

    narrow_client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=narrow, max_retries=0)
    gemini = matrix["aliases"]["gemini"]["chat"]
    statuses = []
    for _ in range(3):
        try:
            statuses.append(narrow_client.chat.completions.with_raw_response.create(model=gemini, messages=HELLO))
        except openai.RateLimitError as error:
            statuses.append(error.response)
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[-1].headers["x-ratelimit-remaining-requests"] == "0"

    provider_simulator.configure(models={"*": {"fail_rate": 1, "fail_status": 429, "retry_after": 0}})
    with pytest.raises(anthropic.RateLimitError):
        an.messages.create(model=model, max_tokens=16, messages=HELLO)
    provider_simulator.configure(models={"*": {"fail_rate": 1, "fail_status": 500}})
    with pytest.raises(openai.APIStatusError) as failed:
        oa.chat.completions.create(model=model, messages=HELLO)
    assert failed.value.status_code == 502


@pytest.mark.parametrize("kind", KINDS)
def test_budget_reservations_settle_to_the_exact_cost_on_every_route(
    kind, matrix, gateway_workers, actors, org, redis_client
):
    """Known token counts on every inbound API against this kind: each answer shows them, and
    the budget's spend is exactly their price, with nothing left held."""
    budget = create_budget(
        actor=actors["finance"], org=org, name=f"{kind} exact", scope="org", amount=Decimal("100"), period="monthly"
    )
    services.publish_pending()
    (worker,) = gateway_workers(1)
    worker.wait(lambda: worker.revision() is not None)
    key, model = matrix["plaintext"], matrix["aliases"][kind]["chat"]
    oa = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=key, max_retries=0, timeout=15)
    an = anthropic.Anthropic(base_url=worker.url, api_key=key, max_retries=0, timeout=15)
    shown = []  # (input, output) tokens each answer reports
    answer = oa.chat.completions.create(model=model, messages=HELLO)
    shown.append((answer.usage.prompt_tokens, answer.usage.completion_tokens))
    chunks = list(
        oa.chat.completions.create(model=model, messages=HELLO, stream=True, stream_options={"include_usage": True})
    )
    shown.append((chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens))
    response = oa.responses.create(model=model, input="Hello")
    shown.append((response.usage.input_tokens, response.usage.output_tokens))
    events = list(oa.responses.create(model=model, input="Hello", stream=True))
    completed = events[-1].response.usage
    shown.append((completed.input_tokens, completed.output_tokens))
    message = an.messages.create(model=model, max_tokens=64, messages=HELLO)
    shown.append((message.usage.input_tokens, message.usage.output_tokens))
    with an.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream:
        final = stream.get_final_message()
    shown.append((final.usage.input_tokens, final.usage.output_tokens))
    assert shown == [HELLO_TOKENS] * 6
    cost = (HELLO_TOKENS[0] * 2_500_000 + HELLO_TOKENS[1] * 10_000_000) // 1_000_000
    expected = 6 * cost
    embed = matrix["aliases"][kind].get("embed")
    if embed is not None:
        embedded = oa.embeddings.create(model=embed, input="Hello world, twice over", encoding_format="float")
        assert embedded.usage.prompt_tokens > 0
        expected += -(-embedded.usage.prompt_tokens * 2_500_000 // 1_000_000)  # rounded up, per request
    assert settled_counters(redis_client, budget) == {"spent": expected, "held": 0}


def test_embeddings_base64_as_the_openai_sdk_asks_by_default(matrix, gateway_workers):
    """The openai SDK asks for base64 embeddings unless told otherwise: providers that answer
    floats are encoded by the gateway, as OpenAI encodes them."""
    (worker,) = gateway_workers(1)
    worker.wait(lambda: worker.revision() is not None)
    for kind in ("gemini", "bedrock"):
        embed = matrix["aliases"][kind]["embed"]
        raw = httpx.post(
            f"{worker.url}/v1/embeddings",
            headers={"Authorization": f"Bearer {matrix['plaintext']}"},
            json={"model": embed, "input": "Hello", "encoding_format": "base64", "dimensions": 4},
            timeout=15,
        )
        assert raw.status_code == 200, raw.text
        encoded = raw.json()["data"][0]["embedding"]
        assert len(base64.b64decode(encoded)) == 4 * 4
