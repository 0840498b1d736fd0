"""Dead letters of the usage pipeline (budgets/dead_letters.py): listed for platform staff, with
replay and purge behind a confirmation. Platform-wide, so for Django superusers only, with the
fleet pages' check; writes go through budgets/replay.py, which records the audit event."""

import uuid

import redis
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from fleet.views import require_platform_staff, staff_actor
from orgs.models import Organization
from orgs.views import PAGE_SIZE, posted

from . import dead_letters, replay

REDIS_DOWN = "Redis cannot be reached, so the dead letters cannot be read or changed. Nothing was changed."


def validate_letter_id(value: str) -> None:
    if value and not dead_letters.is_stream_id(value):
        raise ValidationError("Enter a dead letter id, e.g. 1712345678901-0.")


class LetterForm(forms.Form):
    """Which dead letter an action is about: one id, or blank for all of them."""

    letter = forms.CharField(required=False, max_length=41, validators=[validate_letter_id], widget=forms.HiddenInput)


def _chosen(request: HttpRequest) -> tuple[LetterForm, dead_letters.DeadLetter | None]:
    """The action's form and its dead letter (None: all). An unknown or malformed id is a 404."""
    form = LetterForm(posted(request) or {"letter": request.GET.get("letter", "")})
    if not form.is_valid():
        raise Http404("There is no such dead letter.")
    letter_id = form.cleaned_data["letter"]
    if not letter_id:
        return form, None
    found = dead_letters.find([letter_id])
    if not found:
        raise Http404(f"There is no dead letter {letter_id}: it may have been replayed or purged.")
    return form, found[0]


def _org_names(letters: list[dead_letters.DeadLetter]) -> dict[str, str]:
    ids = set()
    for letter in letters:
        try:
            ids.add(str(uuid.UUID(letter.org_id)))
        except ValueError:
            continue
    if not ids:
        return {}
    return {str(pk): name for pk, name in Organization.objects.filter(pk__in=ids).values_list("pk", "name")}


@login_required
def dead_letter_list(request: HttpRequest) -> HttpResponse:
    require_platform_staff(request)
    before = request.GET.get("before", "")
    before = before if dead_letters.is_stream_id(before) else ""
    try:
        letters, older = dead_letters.newest_first(before=before or None, count=PAGE_SIZE)
        waiting, total = dead_letters.waiting(), dead_letters.total_set_aside()
    except redis.RedisError:
        context: dict[str, object] = {"error": REDIS_DOWN, "rows": [], "before": before, "section": "dead_letters"}
        return render(request, "budgets/dead_letter_list.html", context, status=503)
    names = _org_names(letters)
    rows = [{"letter": letter, "org_name": names.get(letter.org_id.lower(), "")} for letter in letters]
    context = {
        "rows": rows,
        "older": older,
        "before": before,
        "waiting": waiting,
        "total": total,
        "section": "dead_letters",
    }
    return render(request, "budgets/dead_letter_list.html", context)


def _confirm(request: HttpRequest, action: str) -> HttpResponse:
    """The confirmation page of a replay or a purge, of one dead letter or all."""
    form, letter = _chosen(request)
    waiting = dead_letters.waiting() if letter is None else 1
    context = {"action": action, "form": form, "letter": letter, "waiting": waiting}
    return render(request, "budgets/dead_letter_confirm.html", context)


def _redis_down(request: HttpRequest, action: str) -> HttpResponse:
    context = {"error": REDIS_DOWN, "action": action}
    return render(request, "budgets/dead_letter_confirm.html", context, status=503)


@login_required
def dead_letter_replay(request: HttpRequest) -> HttpResponse:
    require_platform_staff(request)
    try:
        if request.method != "POST":
            return _confirm(request, "replay")
        _form, letter = _chosen(request)
        ids = None if letter is None else [letter.id]
        result = replay.replay_dead_letters(actor=staff_actor(request.user), ids=ids)
    except redis.RedisError:
        return _redis_down(request, "replay")
    if result.still_refused:
        messages.warning(
            request,
            f"{result.replayed} replayed: {result.stored} now in the ledger, {result.still_refused} still refused "
            "(kept, with today's reason).",
        )
    else:
        messages.success(request, f"{result.replayed} replayed: every one is now in the ledger.")
    return redirect("budgets:dead_letter_list")


@login_required
def dead_letter_purge(request: HttpRequest) -> HttpResponse:
    require_platform_staff(request)
    try:
        if request.method != "POST":
            return _confirm(request, "purge")
        _form, letter = _chosen(request)
        ids = None if letter is None else [letter.id]
        purged = replay.purge_dead_letters(actor=staff_actor(request.user), ids=ids)
    except redis.RedisError:
        return _redis_down(request, "purge")
    messages.success(request, f"{purged} dead letter{'' if purged == 1 else 's'} purged.")
    return redirect("budgets:dead_letter_list")
