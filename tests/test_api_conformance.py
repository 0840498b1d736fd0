"""The OpenAPI schema matches the API: schemathesis runs every operation of /api/schema/ against a
real gunicorn serving the test database, as the org's owner, as an outsider (a token of another
org) and without credentials, and every answer must be a documented status code with a body of
its schema."""

import subprocess
import sys
import time
from decimal import Decimal

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from budgets.services import create_budget
from keys.services import issue_key
from orgs.services import create_api_token, invite_member
from tests.conftest import actor_for
from tests.factories import make_routes
from tests.plugins.gateway_workers import ROOT, free_port
from tests.plugins.ingestion_process import control_plane_env

# Bounded and repeatable: a few derandomized examples per operation, no shrinking.
EXAMPLES_PER_OPERATION = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def api_server(tmp_path, fresh_key_ring):
    """The base URL of a real gunicorn on the test database; stopped after the test."""
    port, log = free_port(), tmp_path / "gunicorn.log"
    env = control_plane_env(GATEHOUSE_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2", GUNICORN_THREADS="4")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "controlplane/gunicorn.conf.py", "controlplane.wsgi"],
        cwd=ROOT,
        env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(log.read_text()[-3000:])
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def exercise(operation, base: str, headers: dict[str, str], path_parameters: dict[str, str], findings: dict) -> int:
    """Send the operation's generated requests; record each failed check's first message in
    `findings` under (operation, status and check). Returns how many requests were answered."""
    known = {name: value for name, value in path_parameters.items() if "{" + name + "}" in operation.path}
    answered = 0

    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        # A finding is collected, not raised, so there is nothing to shrink.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(path_parameters=known))
    def send(case):
        nonlocal answered
        response = case.call(base_url=base, headers=headers, timeout=30)
        answered += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            failures = list(group.exceptions)
        except Failure as failure:
            failures = [failure]
        else:
            failures = []
        for failure in failures:
            findings.setdefault((operation.label, f"{response.status_code} {failure.title}"), failure.message)

    send()
    return answered


@pytest.fixture
def tokens(org, other_org, users, team):
    """({"owner": token, "outsider": token}, path parameter -> a real id in `org`): requests reach
    real objects, not only 404s. The outsider's token belongs to `other_org`."""
    owner_actor = actor_for(users["owner"], "owner")
    _, owner_token = create_api_token(actor=owner_actor, org=org, name="Conformance", role="owner")
    # The run may revoke the token it names in paths: not the one it acts with.
    spare, _ = create_api_token(actor=owner_actor, org=org, name="Spare", role="viewer")
    stranger = other_org.memberships.get().user
    _, outsider_token = create_api_token(
        actor=actor_for(stranger, "owner"), org=other_org, name="Conformance", role="owner"
    )
    # The run may remove the member it names in paths: not the owner.
    developer = org.memberships.select_related("user").get(role="developer")
    key, _ = issue_key(actor=owner_actor, team=team, name="Conformance key")
    route = make_routes(org, owner_actor, aliases=("gpt-4o",))["gpt-4o"]
    deployment = route.deployments.get()
    budget = create_budget(
        actor=owner_actor, org=org, name="Conformance", scope="org", amount=Decimal("10.00"), period="monthly"
    )
    invitation, _ = invite_member(actor=owner_actor, org=org, email="invitee@acme.test", role="viewer")
    path_parameters = {
        "org_slug": org.slug,
        "team_id": str(team.id),
        "token_id": str(spare.id),
        "membership_id": str(developer.id),
        "user_id": str(developer.user.uuid),
        "key_id": str(key.id),
        "credential_id": str(deployment.credential_id),
        "deployment_id": str(deployment.id),
        "route_id": str(route.id),
        "budget_id": str(budget.id),
        "invitation_id": str(invitation.id),
    }
    return {"owner": owner_token, "outsider": outsider_token}, path_parameters


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("who", ["owner", "outsider", "anonymous"])
def test_every_operation_answers_as_its_schema_says(api_server, tokens, who):
    secrets, path_parameters = tokens
    headers = {"Authorization": f"Bearer {secrets[who]}"} if who in secrets else {}
    schema = schemathesis.openapi.from_url(f"{api_server}/api/schema/", headers=headers)
    findings: dict[tuple[str, str], str] = {}
    unanswered = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not exercise(operation, api_server, headers, path_parameters, findings):
            unanswered.append(operation.label)
    assert not unanswered
    assert not findings, "\n".join(
        f"{operation}: {finding}\n    {message[:400]}" for (operation, finding), message in sorted(findings.items())
    )
