"""A NUL byte in any audit filter is a 400 naming that filter on the audit page, the audit API,
the export API and the export page, and records nothing (issue 12, finding 9). PostgreSQL
refuses NUL in text and in JSON, so it used to reach the database and answer 500."""

import pytest
from django.urls import reverse

from audit.forms import AuditFilterForm
from audit.models import AuditEvent, AuditExport

pytestmark = pytest.mark.django_db

FILTERS = list(AuditFilterForm.base_fields)
NUL_VALUES = {
    "since": "2025-03-01\x00",
    "until": "2025-03-01\x00",
    "team": "\x00",
    "ip": "203.0.113.7\x00",
}


def nul_value(field: str) -> str:
    return NUL_VALUES.get(field, "team.\x00created")


def audit_page(org) -> str:
    return reverse("audit:list", kwargs={"org_slug": org.slug})


def audit_api(org) -> str:
    return reverse("api:audit:event-list", kwargs={"org_slug": org.slug})


def export_api(org) -> str:
    return reverse("api:audit:export", kwargs={"org_slug": org.slug})


def export_page(org) -> str:
    return reverse("audit:export_list", kwargs={"org_slug": org.slug})


@pytest.fixture
def auditor(client_for):
    return client_for("auditor")  # signing in is an event, so sign in before counting events


def test_the_filters_cover_every_text_filter():
    assert {"actor", "action", "target_type", "target", "q"} <= set(FILTERS)


@pytest.mark.parametrize("field", FILTERS)
def test_the_audit_page_names_the_filter(org, auditor, field):
    response = auditor.get(audit_page(org), {field: nul_value(field)})
    assert response.status_code == 400
    assert f'id="id_{field}_error"' in response.content.decode()


@pytest.mark.parametrize("field", FILTERS)
def test_the_audit_api_names_the_filter(org, auditor, field):
    response = auditor.get(audit_api(org), {field: nul_value(field)})
    assert response.status_code == 400
    assert list(response.json()) == [field]


@pytest.mark.parametrize("field", FILTERS)
@pytest.mark.parametrize("run_async", ["0", "1"])
def test_the_export_api_names_the_filter_and_records_nothing(org, auditor, field, run_async):
    before = AuditEvent.objects.filter(org=org).count()
    response = auditor.get(export_api(org), {"format": "csv", "async": run_async, field: nul_value(field)})
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert AuditEvent.objects.filter(org=org).count() == before
    assert not AuditExport.objects.filter(org=org).exists()


@pytest.mark.parametrize("field", FILTERS)
def test_the_export_api_refuses_a_nul_in_a_repeated_filter(org, auditor, field):
    # The form reads the last value; the export records them all.
    query = f"format=csv&{field}=%00&{field}="
    response = auditor.get(f"{export_api(org)}?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not AuditExport.objects.filter(org=org).exists()


@pytest.mark.parametrize("field", FILTERS)
def test_the_export_page_names_the_filter_and_starts_nothing(org, auditor, field):
    before = AuditEvent.objects.filter(org=org).count()
    response = auditor.post(export_page(org), {"format": "csv", field: nul_value(field)})
    assert response.status_code == 400
    assert f'id="id_{field}_error"' in response.content.decode()
    assert AuditEvent.objects.filter(org=org).count() == before
    assert not AuditExport.objects.filter(org=org).exists()
