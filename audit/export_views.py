"""Audit export pages and API: stream an export, start a job, follow its progress, download
its file. The work is in audit/export.py."""

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from budgets.api import JsonNegotiation
from controlplane.api import BaseApi, found
from orgs.access import get_org_access

from . import export as exports
from .forms import AuditFilterForm
from .models import AuditExport

PAGE_SIZE = 25
FORMAT_CHOICES = [("csv", "CSV"), ("jsonl", "JSON Lines"), ("ocsf", "OCSF API Activity (JSON Lines)")]


class ExportStartForm(forms.Form):
    format = forms.ChoiceField(label="Format", choices=FORMAT_CHOICES, initial="csv")


def download_response(export: AuditExport) -> FileResponse:
    path = exports.export_file(export)
    if path is None:
        raise Http404("No file for this export.")
    name = f"audit-{export.org.slug}-{export.created_at:%Y%m%dT%H%M%SZ}.{exports.FORMATS[export.format][1]}"
    response = FileResponse(path.open("rb"), as_attachment=True, filename=name)
    response["Content-Type"] = exports.FORMATS[export.format][0]
    response["X-Content-SHA256"] = export.sha256
    return response


# Pages -------------------------------------------------------------------------------------


@login_required
def export_list(request, org_slug):
    access = get_org_access(request, org_slug, "audit.export")
    start_form = ExportStartForm(request.POST if request.method == "POST" else None)
    filters = AuditFilterForm(request.POST if request.method == "POST" else request.GET)
    if request.method == "POST" and start_form.is_valid() and filters.is_valid():
        try:
            exports.start_export(
                actor=access.actor,
                org=access.org,
                export_format=start_form.cleaned_data["format"],
                filters=exports.filter_data(request.POST),
            )
        except ValidationError as error:
            for field, messages in error.message_dict.items():
                target = start_form if field in start_form.fields else filters
                for message in messages:
                    target.add_error(field if field in target.fields else None, message)
        else:
            return redirect(reverse("audit:export_list", kwargs={"org_slug": access.org.slug}))
    rows = AuditExport.objects.filter(org=access.org).order_by("-created_at")
    context = {
        "section": "audit",
        "page": Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page")),
        "start_form": start_form,
        "filters": filters,
    }
    invalid = request.method == "POST" and (start_form.errors or filters.errors)
    return render(request, "audit/export_list.html", context, status=400 if invalid else 200)


@login_required
def export_download(request, org_slug, export_id):
    access = get_org_access(request, org_slug, "audit.export")
    export = get_object_or_404(AuditExport.objects.select_related("org"), org=access.org, pk=export_id)
    return download_response(export)


# API ---------------------------------------------------------------------------------------


class ExportQuery(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(exports.FORMATS), default="csv")
    # "async" is a keyword, so the field takes its name from the query string via `source`.
    run_async = serializers.BooleanField(default=False, help_text="1: run as a job even when it is small.")


class ExportJobOutput(serializers.Serializer):
    id = serializers.UUIDField()
    format = serializers.CharField()
    filters = serializers.JSONField()
    status = serializers.CharField()
    rows_done = serializers.IntegerField()
    rows_total = serializers.IntegerField()
    sha256 = serializers.CharField(help_text="Of the file, once status is done.")
    size = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    download = serializers.SerializerMethodField()

    def get_download(self, export: AuditExport) -> str | None:
        if export.status != AuditExport.Status.DONE:
            return None
        kwargs = {"org_slug": self.context["org_slug"], "export_id": export.id}
        return self.context["request"].build_absolute_uri(reverse("api:audit:export-job-download", kwargs=kwargs))


def job_body(request, export: AuditExport) -> dict:
    return ExportJobOutput(export, context={"request": request, "org_slug": export.org.slug}).data


@extend_schema(tags=["audit"])
class AuditExportApi(BaseApi):
    content_negotiation_class = JsonNegotiation

    @extend_schema(
        parameters=[ExportQuery],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="format=csv: the events as a file."),
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR, description="format=jsonl or ocsf: one event per line."
            ),
            202: ExportJobOutput,
        },
        summary="Export the org's audit events, oldest first",
        description="Takes the audit page's filters (since, until, actor, action, target_type, target, team, ip, "
        "q). Streams the file; with async=1, or over 100,000 events, starts a job instead and answers 202 "
        "with it: follow it at its URL and download the file when it is done. Every export is an audit event.",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "audit.export")
        params = request.query_params.copy()
        if "async" in params:
            params["run_async"] = params["async"]
        query = ExportQuery(data=params)
        query.is_valid(raise_exception=True)
        export_format = query.validated_data["format"]
        filters = exports.filter_data(request.query_params)
        events = exports.export_events(access.org, filters)  # ValidationError -> 400
        if query.validated_data["run_async"] or events.count() > exports.ASYNC_THRESHOLD:
            export = exports.start_export(
                actor=access.actor, org=access.org, export_format=export_format, filters=filters
            )
            response = Response(job_body(request, export), status=status.HTTP_202_ACCEPTED)
            response["Location"] = reverse(
                "api:audit:export-job", kwargs={"org_slug": access.org.slug, "export_id": export.id}
            )
            return response
        event = exports.record_export(actor=access.actor, org=access.org, export_format=export_format, filters=filters)
        events = events.filter(sequence__lt=event.sequence)
        content_type, extension = exports.FORMATS[export_format]
        response = StreamingHttpResponse(exports.export_lines(events, export_format), content_type=content_type)
        name = f"audit-{access.org.slug}-{event.created_at:%Y%m%dT%H%M%SZ}.{extension}"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


@extend_schema(tags=["audit"])
class AuditExportJobApi(BaseApi):
    @extend_schema(responses=ExportJobOutput, summary="An export job: its progress, and its file's SHA-256")
    def get(self, request, org_slug, export_id):
        access = get_org_access(request, org_slug, "audit.export")
        export = found(AuditExport.objects.select_related("org").filter(org=access.org, pk=export_id))
        return Response(job_body(request, export))


@extend_schema(tags=["audit"])
class AuditExportDownloadApi(BaseApi):
    content_negotiation_class = JsonNegotiation

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY)},
        summary="The file of a finished export job (its SHA-256 in X-Content-SHA256)",
    )
    def get(self, request, org_slug, export_id):
        access = get_org_access(request, org_slug, "audit.export")
        export = found(AuditExport.objects.select_related("org").filter(org=access.org, pk=export_id))
        return download_response(export)
