"""Exports of the request log, from the page and the API: CSV and JSON Lines, streamed, the same
filters and visibility as the page, capped, and continued with a cursor."""

import csv
import io
import json
from datetime import timedelta

import pytest
from django.test import Client

from orgs.services import create_api_token
from requestlog import export
from tests.conftest import SYSTEM

from .conftest import NOW, api_url, make_record, url

pytestmark = pytest.mark.django_db


def content(response) -> str:
    assert response.status_code == 200, response.status_code
    assert response.streaming
    return b"".join(response.streaming_content).decode()


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(content(response))))


def jsonl_rows(response) -> list[dict]:
    return [json.loads(line) for line in content(response).splitlines()]


def test_the_page_exports_csv_with_every_column(one_each, signed_in):
    response = signed_in("finance").get(url("export"), {"format": "csv"})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="requests-acme-')
    text = content(response)
    assert text.splitlines()[0] == ",".join(export.CSV_HEADER)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["request_id"] for row in rows] == [
        one_each[name].request_id for name in ("mine", "platform_ci", "notebooks", "old_data_key")
    ]
    first = rows[0]
    assert first["key"] == "dev laptop" and first["team"] == "Platform" and first["user_email"] == "developer@acme.test"
    assert first["cost_usd"] == "0.000450" and first["status"] == "200" and first["stream"] == "false"
    assert first["attempts"] == "[]" and first["client_ip"] == "" and first["user_agent"] == ""


def test_the_page_exports_json_lines_as_the_api_lists_them(one_each, signed_in):
    client = signed_in("developer")
    response = client.get(url("export"), {"format": "jsonl"})
    assert response["Content-Type"] == "application/x-ndjson"
    lines = jsonl_rows(response)
    assert lines == client.get(api_url("request-list")).json()["results"]
    assert [line["cost"] for line in lines] == ["0.000450", None]  # the developer left the old key's team


def test_an_export_holds_what_the_viewer_may_see_with_the_same_filters(one_each, signed_in, data_team):
    rows = csv_rows(signed_in("lead").get(url("export")))  # CSV by default
    assert [row["request_id"] for row in rows] == [
        one_each["notebooks"].request_id,
        one_each["old_data_key"].request_id,
    ]
    rows = csv_rows(signed_in("admin").get(url("export"), {"team": str(data_team.pk), "status": "2xx"}))
    assert len(rows) == 2
    rows = csv_rows(signed_in("developer").get(url("export"), {"key": str(one_each["notebooks"].key_id)}))
    assert rows == []


def test_hidden_cost_is_an_empty_cell(one_each, signed_in):
    rows = csv_rows(signed_in("developer").get(url("export")))
    assert [row["cost_usd"] for row in rows] == ["0.000450", ""]


def test_cells_a_spreadsheet_would_run_are_quoted(keys, signed_in):
    make_record(keys.mine, alias="=HYPERLINK(1)", client_request_id="+1")
    (row,) = csv_rows(signed_in("developer").get(url("export")))
    assert row["model"] == "'=HYPERLINK(1)" and row["client_request_id"] == "'+1"


def test_an_export_stops_at_its_limit_and_says_where_to_continue(keys, signed_in, monkeypatch, org):
    monkeypatch.setattr(export, "EXPORT_LIMIT", 5)
    monkeypatch.setattr(export, "CHUNK_SIZE", 2)  # several chunks per export
    made = [make_record(keys.mine, at=NOW - timedelta(minutes=1), request_id=f"r-{index}") for index in range(8)]
    expected = sorted((record.request_id for record in made), reverse=True)
    response = signed_in("developer").get(url("export"), {"format": "jsonl"})
    assert response["X-Export-Limit"] == "5" and response["X-Export-Truncated"] == "true"
    first = [line["request_id"] for line in jsonl_rows(response)]
    assert first == expected[:5]
    _token, plaintext = create_api_token(actor=SYSTEM, org=org, name="export", role="auditor")
    rest = Client().get(
        api_url("request-export"),
        {"format": "csv", "cursor": response["X-Next-Cursor"]},
        HTTP_AUTHORIZATION=f"Bearer {plaintext}",
    )
    assert rest["X-Export-Truncated"] == "false" and "X-Next-Cursor" not in rest
    assert [row["request_id"] for row in csv_rows(rest)] == expected[5:]


def test_the_limit_is_stated_on_the_page(one_each, signed_in):
    assert "at most 100,000 per file" in signed_in("admin").get(url("list")).content.decode()


def test_a_bad_format_or_filter_shows_the_page_with_the_error(one_each, signed_in):
    response = signed_in("admin").get(url("export"), {"format": "xlsx"})
    assert response.status_code == 400 and "Choose CSV or JSON Lines" in response.content.decode()
    response = signed_in("admin").get(url("export"), {"since": "soon"})
    assert response.status_code == 400 and 'id="id_since_error"' in response.content.decode()


def test_the_api_export_checks_its_parameters(one_each, signed_in):
    client = signed_in("admin")
    assert client.get(api_url("request-export"), {"format": "xlsx"}).json() == {
        "format": ['"xlsx" is not a valid choice.']
    }
    assert list(client.get(api_url("request-export"), {"cursor": "!!"}).json()) == ["cursor"]
    response = client.get(api_url("request-export"), {"format": "jsonl", "status": "5xx"})
    assert response["Content-Type"] == "application/x-ndjson" and content(response) == ""


def test_viewers_are_refused_exports_and_outsiders_get_404(one_each, signed_in):
    assert signed_in("viewer").get(url("export")).status_code == 403
    assert signed_in("viewer").get(api_url("request-export")).status_code == 403
    assert signed_in("outsider").get(url("export")).status_code == 404
    assert signed_in("outsider").get(api_url("request-export")).status_code == 404
