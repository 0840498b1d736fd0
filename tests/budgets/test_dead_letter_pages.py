"""The dead-letter pages: platform staff only (as the fleet pages), a paginated list showing
each letter's reason, time, org, request id and raw fields (escaped and capped), and replay and
purge behind a confirmation, each audited."""

import html

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from budgets import dead_letters as dead_letter_module
from fleet.redis_client import redis_client
from orgs.views import PAGE_SIZE
from tests.budgets.test_dead_letters import (
    accept_poison_again,
    dead_letters,
    drain,
    emit,
    gateway_fields,
    ledger,  # noqa: F401  (fixture)
    refuse_poison_in_the_database,
    stored_ids,
)
from tests.orgs.test_views import assert_every_control_labelled, text

pytestmark = pytest.mark.django_db


def url(name: str) -> str:
    return reverse(f"budgets:{name}")


@pytest.fixture
def letters(ledger) -> dict[str, str]:  # noqa: F811
    """request id -> dead letter id: "poison" (the database refused it) and "nul" (never storable)."""
    client = ledger["redis"]
    refuse_poison_in_the_database()
    emit(client, gateway_fields(ledger, request_id="poison", alias="poison-a"))
    emit(client, gateway_fields(ledger, request_id="nul", alias="gpt-4o\x00", node_id="x" * 500))
    drain()
    return {letter[b"request_id"].decode(): letter_id.decode() for letter_id, letter in dead_letters(client)}


def page_requests(letter_id: str) -> list[tuple[str, str]]:
    return [
        ("get", url("dead_letter_list")),
        ("get", url("dead_letter_replay")),
        ("get", f"{url('dead_letter_replay')}?letter={letter_id}"),
        ("post", url("dead_letter_replay")),
        ("get", url("dead_letter_purge")),
        ("post", url("dead_letter_purge")),
    ]


# Who may ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "finance", "auditor", "developer", "viewer", "outsider"])
def test_everyone_but_platform_staff_gets_403(letters, client_for, ledger, role):  # noqa: F811
    client = client_for(role)
    requests = page_requests(letters["nul"])
    statuses = {method + " " + path: getattr(client, method)(path).status_code for method, path in requests}
    assert statuses == dict.fromkeys(statuses, 403)
    assert len(dead_letters(ledger["redis"])) == 2
    assert not AuditEvent.objects.filter(action__startswith="usage.dead_letters").exists()


def test_signed_out_visitors_are_sent_to_sign_in(letters, ledger):  # noqa: F811
    for method, path in page_requests(letters["nul"]):
        response = getattr(Client(), method)(path)
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))
    assert len(dead_letters(ledger["redis"])) == 2


def test_every_page_renders_for_platform_staff(letters, staff_client):
    for method, path in page_requests(letters["nul"]):
        if method == "get":
            response = staff_client.get(path)
            assert response.status_code == 200, path
            assert_every_control_labelled(response)


# The list -----------------------------------------------------------------------------------


def test_the_list_shows_reason_org_request_id_and_the_fields_escaped(letters, staff_client, ledger):  # noqa: F811
    page = html.unescape(text(staff_client.get(url("dead_letter_list"))))
    rows = page.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    nul = next(row for row in rows if letters["nul"] in row)
    assert "alias contains a NUL character" in nul
    assert ledger["org"].name in nul and str(ledger["org"].pk) in nul
    assert ">nul<" in nul
    assert "gpt-4o\\x00" in nul  # the NUL shown, escaped
    assert "x" * 200 + "… (500 bytes)" in nul and "x" * 201 not in nul  # long values capped
    poison = next(row for row in rows if letters["poison"] in row)
    assert "the database refused it" in poison


def test_the_list_shows_how_many_wait_and_how_many_were_ever_set_aside(letters, staff_client, ledger):  # noqa: F811
    redis_client().xdel(dead_letter_module.stream_name(), letters["poison"])
    page = text(staff_client.get(url("dead_letter_list")))
    assert '<span class="stat-label">Waiting</span><span class="stat-value">1</span>' in page
    assert '<span class="stat-label">Set aside since counting began</span><span class="stat-value">2</span>' in page


def test_the_list_pages_newest_first(ledger, staff_client):  # noqa: F811
    for number in range(PAGE_SIZE + 2):
        emit(ledger["redis"], gateway_fields(ledger, request_id=f"req-{number:02d}", alias="\x00"))
    drain()
    first = text(staff_client.get(url("dead_letter_list")))
    assert ">req-26<" in first and ">req-02<" in first and ">req-01<" not in first
    older = html.unescape(first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0])
    second = text(staff_client.get(url("dead_letter_list") + older))
    assert ">req-01<" in second and ">req-00<" in second and ">req-02<" not in second
    assert 'rel="next"' not in second


def test_the_list_costs_the_same_queries_for_1_and_many_letters(ledger, staff_client):  # noqa: F811
    emit(ledger["redis"], gateway_fields(ledger, alias="\x00"))
    drain()
    staff_client.get(url("dead_letter_list"))
    with CaptureQueriesContext(connection) as few:
        staff_client.get(url("dead_letter_list"))
    for _ in range(10):
        emit(ledger["redis"], gateway_fields(ledger, alias="\x00"))
    drain()
    with CaptureQueriesContext(connection) as many:
        assert text(staff_client.get(url("dead_letter_list"))).count("alias contains a NUL character") == 11
    assert len(few) == len(many)


def test_without_dead_letters_the_list_says_so(staff_client, ledger):  # noqa: F811
    assert "No dead letter" in text(staff_client.get(url("dead_letter_list")))


# Replay and purge ---------------------------------------------------------------------------


def test_replaying_one_from_the_page(letters, staff_client, ledger):  # noqa: F811
    accept_poison_again()
    confirm = text(staff_client.get(f"{url('dead_letter_replay')}?letter={letters['poison']}"))
    assert f"Replay\n        dead letter {letters['poison']}?" in confirm
    response = staff_client.post(url("dead_letter_replay"), {"letter": letters["poison"]}, follow=True)
    assert response.redirect_chain == [(url("dead_letter_list"), 302)]
    assert "1 replayed: every one is now in the ledger." in text(response)
    assert stored_ids() == {"poison"}
    assert {letter[b"request_id"] for _, letter in dead_letters(ledger["redis"])} == {b"nul"}
    event = AuditEvent.objects.get(action="usage.dead_letters_replayed")
    assert (event.org_id, event.actor_label) == (None, "staff@gatehouse.test")


def test_replaying_all_from_the_page_says_what_stayed(letters, staff_client, ledger):  # noqa: F811
    accept_poison_again()
    response = staff_client.post(url("dead_letter_replay"), {}, follow=True)
    assert "2 replayed: 1 now in the ledger, 1 still refused" in text(response)
    assert {letter[b"request_id"] for _, letter in dead_letters(ledger["redis"])} == {b"nul"}


def test_purging_from_the_page(letters, staff_client, ledger):  # noqa: F811
    response = staff_client.post(url("dead_letter_purge"), {"letter": letters["nul"]}, follow=True)
    assert "1 dead letter purged." in text(response)
    assert {letter[b"request_id"] for _, letter in dead_letters(ledger["redis"])} == {b"poison"}
    assert AuditEvent.objects.get(action="usage.dead_letters_purged").target_id == letters["nul"]


@pytest.mark.parametrize("letter", ["1-0", "not-an-id", "9" * 50 + "-0"])
def test_an_unknown_or_malformed_letter_is_404(letters, staff_client, ledger, letter):  # noqa: F811
    assert staff_client.get(f"{url('dead_letter_replay')}?letter={letter}").status_code == 404
    assert staff_client.post(url("dead_letter_purge"), {"letter": letter}).status_code == 404
    assert len(dead_letters(ledger["redis"])) == 2


@pytest.fixture
def redis_down(settings):
    """The control plane's Redis client pointed at a port nothing listens on."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_client.cache_clear()
    yield
    redis_client.cache_clear()


def test_redis_down_is_said_on_the_page_not_a_500(staff_client, redis_down):
    response = staff_client.get(url("dead_letter_list"))
    assert response.status_code == 503
    assert "Redis cannot be reached" in text(response)
    response = staff_client.post(url("dead_letter_replay"), {})
    assert response.status_code == 503
    assert "Nothing was changed." in text(response)
    assert not AuditEvent.objects.filter(action__startswith="usage.dead_letters").exists()
