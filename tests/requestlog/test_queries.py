"""Cursors and the attempts timeline, without pages."""

import uuid
from datetime import UTC, datetime

import pytest
from django.test import RequestFactory

from orgs.access import OrgAccess
from requestlog.queries import Labeller, Viewer, decode_cursor, encode_cursor

from .conftest import make_record


class Row:
    def __init__(self, occurred_at, request_id):
        self.occurred_at, self.request_id = occurred_at, request_id


@pytest.mark.parametrize(
    ("moment", "request_id"),
    [
        (datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC), uuid.uuid4().hex),
        (datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "before-the-epoch"),
        (datetime(2025, 1, 1, tzinfo=UTC), "with:colons/and slashes"),
    ],
)
def test_a_cursor_names_its_row_exactly(moment, request_id):
    cursor = decode_cursor(encode_cursor(Row(moment, request_id)))
    assert (cursor.occurred_at, cursor.request_id) == (moment, request_id)


@pytest.mark.parametrize(
    "text",
    ["", "!!!", "bm9wZQ", "MTIzOg", "x" * 201, "OTk5OTk5OTk5OTk5OTk5OTk5OmE", "MTph" + "YWFh" * 30, "MTpcAA"],
)
def test_anything_else_is_not_a_cursor(text):
    with pytest.raises(ValueError):
        decode_cursor(text)


@pytest.mark.django_db
def test_attempts_say_why_each_one_happened(org, keys, routes, actors):
    first, second = routes["gpt-4o"].deployments.get(), routes["claude-sonnet"].deployments.get()
    gone = uuid.uuid4()
    record = make_record(
        keys.mine,
        attempts=[
            {"deployment_id": str(first.pk), "status": 500, "error_code": "upstream_error", "latency_ms": 10},
            {"deployment_id": str(first.pk), "status": 0, "error_code": "upstream_timeout", "latency_ms": 30_000},
            {"deployment_id": str(gone), "provider": "anthropic", "status": 529, "error_code": "", "latency_ms": 5},
            {"deployment_id": str(second.pk), "status": 200, "error_code": "", "latency_ms": 800},
            "not an attempt",
        ],
    )
    viewer = Viewer(
        RequestFactory().get("/"),
        OrgAccess(org=org, role="owner", actor=actors["owner"]),
        True,
        None,
        frozenset(),
        True,
        frozenset(),
    )
    (labelled,) = Labeller(viewer).label([record])
    attempts = labelled.attempt_list
    assert [attempt.kind for attempt in attempts] == ["first", "retry", "fallback", "fallback"]
    assert [attempt.reason for attempt in attempts] == [
        "First attempt",
        "Retried after 500 upstream_error",
        "Fell back after upstream_timeout",
        "Fell back after 529",
    ]
    assert attempts[2].deployment.name is None and attempts[2].provider_label == "Anthropic"
    assert attempts[3].deployment.name == "claude-sonnet deployment"
