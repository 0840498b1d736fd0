"""Ledger rows made directly (`log`), and who holds which key:

- Platform: the developer's own key "dev laptop" and the service key "platform ci";
- Data: "notebooks", held by a second developer (data-dev), and a team admin of Data ("lead",
  a viewer by org role) who holds no key;
- the developer also holds "old data key" in Data, from before they left that team.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from budgets.models import UsageRecord
from keys.services import issue_key
from orgs.services import add_team_member, create_team, remove_team_member
from tests.conftest import SYSTEM, make_user
from tests.factories import make_routes

NOW = datetime.now(UTC).replace(microsecond=0)


def url(name: str, org_slug: str = "acme", **kwargs) -> str:
    return reverse(f"requestlog:{name}", kwargs={"org_slug": org_slug, **kwargs})


def api_url(name: str, org_slug: str = "acme", **kwargs) -> str:
    return reverse(f"api:requestlog:{name}", kwargs={"org_slug": org_slug, **kwargs})


def make_record(key, *, at: datetime | None = None, **fields) -> UsageRecord:
    """One ledger row made with `key`, `at` (default: a minute ago)."""
    values = {
        "request_id": uuid.uuid4().hex,
        "org_id": key.org_id,
        "team_id": key.team_id,
        "key_id": key.pk,
        "alias": "gpt-4o",
        "endpoint": "chat.completions",
        "input_tokens": 100,
        "output_tokens": 20,
        "cost": Decimal("0.000450"),
        "latency_ms": 812.5,
        "ttft_ms": 120.25,
        "status": 200,
        "error_code": "",
        "stream": False,
        "node_id": "gw-1",
        "attempts": [],
        "occurred_at": at or NOW - timedelta(minutes=1),
    }
    values.update(fields)
    return UsageRecord.objects.create(**values)


@dataclass
class Keys:
    mine: object
    platform_ci: object
    notebooks: object
    old_data_key: object


@pytest.fixture
def data_team(org):
    return create_team(actor=SYSTEM, org=org, name="Data")


@pytest.fixture
def people(org, users, data_team):
    """users plus "data-dev" (a developer in Data) and "lead" (a viewer, team admin of Data)."""
    found = dict(users)
    found["data-dev"] = make_user("data-dev@acme.test")
    org.memberships.create(user=found["data-dev"], role="developer")
    add_team_member(actor=SYSTEM, team=data_team, user=found["data-dev"])
    found["lead"] = make_user("lead@acme.test")
    org.memberships.create(user=found["lead"], role="viewer")
    add_team_member(actor=SYSTEM, team=data_team, user=found["lead"], team_admin=True)
    return found


@pytest.fixture
def keys(org, team, data_team, people) -> Keys:
    developer = people["developer"]
    add_team_member(actor=SYSTEM, team=data_team, user=developer)
    old_data_key, _ = issue_key(actor=SYSTEM, team=data_team, name="old data key", user=developer)
    remove_team_member(actor=SYSTEM, team=data_team, user=developer)  # revokes the key; its requests stay
    return Keys(
        mine=issue_key(actor=SYSTEM, team=team, name="dev laptop", user=developer)[0],
        platform_ci=issue_key(actor=SYSTEM, team=team, name="platform ci")[0],
        notebooks=issue_key(actor=SYSTEM, team=data_team, name="notebooks", user=people["data-dev"])[0],
        old_data_key=old_data_key,
    )


@pytest.fixture
def routes(org, actors):
    return make_routes(org, actors["admin"], aliases=("gpt-4o", "claude-sonnet"))


@pytest.fixture
def signed_in(people):
    """signed_in("lead") -> a Client signed in as that person."""

    def make(who: str) -> Client:
        client = Client()
        client.force_login(people[who])
        return client

    return make


@pytest.fixture
def one_each(keys):
    """One request per key, newest first: mine, platform ci, notebooks, old data key."""
    return {
        "mine": make_record(keys.mine, at=NOW - timedelta(minutes=1)),
        "platform_ci": make_record(keys.platform_ci, at=NOW - timedelta(minutes=2)),
        "notebooks": make_record(keys.notebooks, at=NOW - timedelta(minutes=3)),
        "old_data_key": make_record(keys.old_data_key, at=NOW - timedelta(minutes=4)),
    }
