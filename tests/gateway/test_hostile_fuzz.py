"""Random and hostile values through every request field, with a real gateway worker and a
real `manage.py ingest_usage` process running: no answer is a 500, every answered request
lands in the ledger exactly once, and both processes are still alive at the end."""

import json
import re
import time
import uuid

import httpx
import pytest
from django.db.models import Count
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from budgets.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

NASTY_TEXT = ["", "gpt-4o\x00", "\ud800", "gpt-4o\udfff", "\x1b[31m", "a" * 5_000, "gpt-4o\n", "../../etc"]
text = st.one_of(st.text(max_size=50), st.sampled_from(NASTY_TEXT))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=20,
)
numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False), text, st.booleans())
message = st.one_of(
    st.fixed_dictionaries({"role": st.just("user"), "content": text}),
    st.fixed_dictionaries({"role": text, "content": json_values}),
    json_values,
)
# Each field is either a good value or a hostile one; most requests keep most fields good, so
# a share of them is answered and must reach the ledger.
FIELDS = {
    "model": st.one_of(st.just("gpt-4o"), text, json_values),
    "messages": st.one_of(st.just([{"role": "user", "content": "Hi"}]), st.lists(message, max_size=3), json_values),
    "max_tokens": st.one_of(st.just(8), numbers),
    "n": st.one_of(st.just(1), numbers),
    "stream": st.one_of(st.just(False), st.just(True), numbers),
    "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
    "temperature": st.one_of(st.just(0.5), numbers),
    "tools": json_values,
    "user": text,
}
BASE = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


@st.composite
def hostile_requests(draw) -> tuple[bytes, dict[bytes, bytes]]:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=200)), {}  # not JSON at all
    changed = draw(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=4))
    body = dict(BASE)
    for name in changed:
        body[name] = draw(FIELDS[name])
    # ensure_ascii writes lone surrogates as \\ud800 escapes, as an attacker's client would.
    headers: dict[bytes, bytes] = {}
    request_id = draw(st.none() | text)
    if request_id is not None:
        # Unique when valid: a caller reusing its own ids is another matter (issue 11).
        value = (request_id + uuid.uuid4().hex).encode("utf-8", "surrogatepass")
        # What HTTP allows in a header at all (the server's parser refuses the rest before the
        # gateway sees it): no control characters but tab, no surrounding whitespace.
        headers[b"X-Request-Id"] = re.sub(rb"[\x00-\x08\x0a-\x1f\x7f]", b"", value).strip()
    return json.dumps(body).encode(), headers


def test_hostile_values_in_every_field_never_stop_recording(served, gateway_workers, ingestion_process, clean_redis):
    (worker,) = gateway_workers(1)
    ingest, ingest_log = ingestion_process("fuzz")
    answered: list[str] = []
    client = httpx.Client(timeout=15)

    @hypothesis_settings(
        max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    @given(hostile_requests())
    def send(request: tuple[bytes, dict[bytes, bytes]]) -> None:
        body, headers = request
        response = client.post(
            f"{worker.url}/v1/chat/completions",
            content=body,
            headers={
                b"Authorization": f"Bearer {served['plaintext']}".encode(),
                b"Content-Type": b"application/json",
                **headers,
            },
        )
        assert response.status_code != 500, response.text
        if response.status_code == 200:
            answered.append(response.headers["x-request-id"])
        else:
            assert "error" in response.json(), (response.status_code, response.text)  # OpenAI's shape

    send()
    assert answered, "no request was answered: the strategies are too hostile to test recording"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = UsageRecord.objects.filter(request_id__in=answered).count()
        if stored >= len(answered):
            break
        time.sleep(0.2)
    counts = dict(
        UsageRecord.objects.filter(request_id__in=answered)
        .values_list("request_id")
        .annotate(rows=Count("request_id"))
        .values_list("request_id", "rows")
    )
    missing = set(answered) - set(counts)
    assert not missing, f"{len(missing)} missing from the ledger; ingestion said: {ingest_log.read_text()[-2000:]}"
    assert set(counts.values()) == {1}
    assert worker.process.poll() is None, worker.log()[-2000:]
    assert ingest.poll() is None, ingest_log.read_text()[-2000:]
