"""orgs/services.py: each state change, its rules, and the one audit event it writes with it."""

import threading
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from audit.models import AuditChainHead, AuditEvent
from audit.services import verify_chain
from orgs import services
from orgs.models import ApiToken, Invitation, Membership, Organization, Team, TeamMembership, User
from orgs.roles import Role
from orgs.tokens import API_TOKEN_PREFIX, digest
from tests.conftest import PASSWORD, SYSTEM, actor_for, make_user


def last_sequence(org) -> int:
    head = AuditChainHead.objects.filter(chain=str(org.pk)).first()
    return head.sequence if head else 0


def events_after(org, sequence: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(org=org, sequence__gt=sequence).order_by("sequence"))


def only_event_after(org, sequence: int) -> AuditEvent:
    """The single event a service wrote; fails if it wrote none or several."""
    events = events_after(org, sequence)
    assert len(events) == 1, [event.action for event in events]
    return events[0]


def membership_of(org, role: str) -> Membership:
    return Membership.objects.select_related("user").get(org=org, user__email=f"{role}@acme.test")


def error_fields(error: pytest.ExceptionInfo) -> set[str]:
    return set(error.value.message_dict)


# Organizations ---------------------------------------------------------------------------


def test_create_org_makes_the_owner_and_records_it(db):
    owner = make_user("founder@new.test")
    org = services.create_org(actor=SYSTEM, name="  New Co ", slug="New Co", owner=owner)
    assert (org.name, org.slug, org.require_mfa) == ("New Co", "new-co", True)
    assert list(org.memberships.values_list("user__email", "role")) == [("founder@new.test", Role.OWNER)]
    event = only_event_after(org, 0)
    assert event.action == "org.created"
    assert event.actor_type == "system"
    assert event.diff == {
        "name": {"after": "New Co"},
        "slug": {"after": "new-co"},
        "owner": {"after": "founder@new.test"},
    }


def test_create_org_refuses_a_taken_slug(org):
    with pytest.raises(ValidationError) as error:
        services.create_org(actor=SYSTEM, name="Acme again", slug="acme", owner=make_user("x@new.test"))
    assert error_fields(error) == {"slug"}
    assert Organization.objects.filter(slug="acme").count() == 1


def test_update_org_settings_records_only_what_changed(org, actors):
    before = last_sequence(org)
    services.update_org_settings(actor=actors["owner"], org=org, name="Acme", require_mfa=True)
    event = only_event_after(org, before)
    assert event.action == "org.settings_changed"
    assert event.diff == {"require_mfa": {"before": False, "after": True}}
    assert Organization.objects.get(pk=org.pk).require_mfa is True

    unchanged = last_sequence(org)
    services.update_org_settings(actor=actors["owner"], org=org, name="Acme", require_mfa=True)
    assert events_after(org, unchanged) == []


# Teams -----------------------------------------------------------------------------------


def test_create_team_records_name_slug_and_description(org, actors):
    before = last_sequence(org)
    team = services.create_team(actor=actors["admin"], org=org, name=" Data Science ", description=" Models ")
    assert (team.name, team.slug, team.description) == ("Data Science", "data-science", "Models")
    event = only_event_after(org, before)
    assert (event.action, event.target_type, event.target_id) == ("team.created", "team", str(team.pk))
    assert (event.actor_type, event.actor_label) == ("user", "admin@acme.test")
    assert event.diff == {
        "description": {"before": None, "after": "Models"},
        "name": {"before": None, "after": "Data Science"},
        "slug": {"before": None, "after": "data-science"},
    }


def test_create_team_refuses_a_duplicate_name_in_any_case(org, actors):
    services.create_team(actor=actors["admin"], org=org, name="Platform", slug="platform-1")
    with pytest.raises(ValidationError) as error:
        services.create_team(actor=actors["admin"], org=org, name="PLATFORM", slug="platform-2")
    assert error_fields(error) == {"name"}
    assert Team.objects.filter(org=org).count() == 1


def test_the_same_team_name_may_exist_in_another_org(org, other_org, actors):
    services.create_team(actor=actors["admin"], org=org, name="Other team")
    assert Team.objects.filter(name="Other team").count() == 2


def test_a_clash_of_the_slug_derived_from_the_name_is_reported_on_the_name(org, actors):
    services.create_team(actor=actors["admin"], org=org, name="Platform")
    with pytest.raises(ValidationError) as error:
        services.create_team(actor=actors["admin"], org=org, name="Platform!")
    assert error_fields(error) == {"name"}


def test_a_clash_of_a_given_slug_is_reported_on_the_slug(org, actors):
    services.create_team(actor=actors["admin"], org=org, name="Platform")
    with pytest.raises(ValidationError) as error:
        services.create_team(actor=actors["admin"], org=org, name="Other name", slug="platform")
    assert error_fields(error) == {"slug"}


def test_update_team_records_the_diff(org, actors, team):
    before = last_sequence(org)
    services.update_team(actor=actors["admin"], team=team, name="Platform", description="Runs the gateway")
    event = only_event_after(org, before)
    assert event.action == "team.updated"
    assert event.diff == {"description": {"before": "The platform team", "after": "Runs the gateway"}}


def test_update_team_refuses_another_teams_name(org, actors, team):
    services.create_team(actor=actors["admin"], org=org, name="Research")
    with pytest.raises(ValidationError) as error:
        services.update_team(actor=actors["admin"], team=team, name="research", description="")
    assert error_fields(error) == {"name"}
    assert Team.objects.get(pk=team.pk).name == "Platform"


def test_delete_team_keeps_its_members_in_the_org(org, actors, team, users):
    before, team_id = last_sequence(org), team.pk
    services.delete_team(actor=actors["admin"], team=team)
    assert not Team.objects.filter(pk=team_id).exists()
    assert not TeamMembership.objects.filter(team_id=team_id).exists()
    assert Membership.objects.filter(org=org, user=users["developer"]).exists()
    event = only_event_after(org, before)
    assert (event.action, event.target_id) == ("team.deleted", str(team_id))
    assert event.diff == {"name": {"before": "Platform", "after": None}}


def test_add_team_member_only_takes_org_members(org, other_org, actors, team, users):
    stranger = User.objects.get(email="owner@other.test")
    with pytest.raises(ValidationError) as error:
        services.add_team_member(actor=actors["admin"], team=team, user=stranger)
    assert error_fields(error) == {"user"}
    with pytest.raises(ValidationError):
        services.add_team_member(actor=actors["admin"], team=team, user=users["outsider"])
    assert not team.members.filter(pk__in=[stranger.pk, users["outsider"].pk]).exists()


def test_add_team_member_twice_is_refused_without_a_second_event(org, actors, team, users):
    before = last_sequence(org)
    with pytest.raises(ValidationError) as error:
        services.add_team_member(actor=actors["admin"], team=team, user=users["developer"])
    assert error_fields(error) == {"user"}
    assert events_after(org, before) == []


def test_add_team_member_as_team_admin_grants_the_object_permission(org, actors, team, users):
    before = last_sequence(org)
    services.add_team_member(actor=actors["admin"], team=team, user=users["finance"], team_admin=True)
    finance = User.objects.get(pk=users["finance"].pk)  # fresh: guardian caches permissions per instance
    assert finance.has_perm("orgs.admin_team", team)
    event = only_event_after(org, before)
    assert event.action == "team.member_added"
    assert event.diff == {"member": {"after": "finance@acme.test"}, "team_admin": {"after": True}}


def test_set_team_admin_grants_and_withdraws_once(org, actors, team, users):
    developer = users["developer"]
    before = last_sequence(org)
    services.set_team_admin(actor=actors["admin"], team=team, user=developer, team_admin=True)
    assert User.objects.get(pk=developer.pk).has_perm("orgs.admin_team", team)
    granted = only_event_after(org, before)
    assert granted.action == "team.admin_granted"
    assert granted.diff == {"member": {"after": "developer@acme.test"}, "team_admin": {"before": False, "after": True}}

    again = last_sequence(org)
    services.set_team_admin(actor=actors["admin"], team=team, user=User.objects.get(pk=developer.pk), team_admin=True)
    assert events_after(org, again) == []

    services.set_team_admin(actor=actors["admin"], team=team, user=User.objects.get(pk=developer.pk), team_admin=False)
    assert not User.objects.get(pk=developer.pk).has_perm("orgs.admin_team", team)
    assert only_event_after(org, again).action == "team.admin_revoked"


def test_set_team_admin_needs_a_team_member(org, actors, team, users):
    with pytest.raises(ValidationError) as error:
        services.set_team_admin(actor=actors["admin"], team=team, user=users["auditor"], team_admin=True)
    assert error_fields(error) == {"user"}
    assert not User.objects.get(pk=users["auditor"].pk).has_perm("orgs.admin_team", team)


def test_remove_team_member_takes_the_team_admin_permission_too(org, actors, team, users):
    developer = users["developer"]
    services.set_team_admin(actor=actors["admin"], team=team, user=developer, team_admin=True)
    before = last_sequence(org)
    services.remove_team_member(actor=actors["admin"], team=team, user=developer)
    assert not team.members.filter(pk=developer.pk).exists()
    assert not User.objects.get(pk=developer.pk).has_perm("orgs.admin_team", team)
    event = only_event_after(org, before)
    assert event.action == "team.member_removed"
    assert event.diff == {"member": {"before": "developer@acme.test"}}
    with pytest.raises(ValidationError):
        services.remove_team_member(actor=actors["admin"], team=team, user=developer)


# Members and roles -----------------------------------------------------------------------


def test_change_role_records_before_and_after(org, actors):
    membership = membership_of(org, Role.VIEWER)
    before = last_sequence(org)
    services.change_role(actor=actors["admin"], membership=membership, role=Role.DEVELOPER)
    assert Membership.objects.get(pk=membership.pk).role == Role.DEVELOPER
    event = only_event_after(org, before)
    assert (event.action, event.target_type, event.target_id) == ("member.role_changed", "member", str(membership.pk))
    assert event.target_label == "viewer@acme.test"
    assert event.diff == {"role": {"before": "viewer", "after": "developer"}}


def test_change_role_to_the_same_role_writes_nothing(org, actors):
    before = last_sequence(org)
    services.change_role(actor=actors["admin"], membership=membership_of(org, Role.VIEWER), role=Role.VIEWER)
    assert events_after(org, before) == []


def test_nobody_changes_their_own_role(org, actors):
    with pytest.raises(ValidationError, match="your own role"):
        services.change_role(actor=actors["admin"], membership=membership_of(org, Role.ADMIN), role=Role.VIEWER)
    assert membership_of(org, Role.ADMIN).role == Role.ADMIN


@pytest.mark.parametrize(
    ("actor_role", "target_role", "new_role"),
    [
        (Role.ADMIN, Role.VIEWER, Role.OWNER),  # above the actor's own role
        (Role.FINANCE, Role.VIEWER, Role.AUDITOR),  # auditor holds audit.read, finance does not
        (Role.AUDITOR, Role.VIEWER, Role.FINANCE),
        (Role.DEVELOPER, Role.VIEWER, Role.ADMIN),
        (Role.ADMIN, Role.OWNER, Role.ADMIN),  # someone above the actor
        (Role.FINANCE, Role.DEVELOPER, Role.VIEWER),  # developer holds keys.own, finance does not
    ],
)
def test_nobody_grants_or_touches_more_than_they_hold(org, actors, actor_role, target_role, new_role):
    membership = membership_of(org, target_role)
    before = last_sequence(org)
    with pytest.raises(ValidationError) as error:
        services.change_role(actor=actors[actor_role], membership=membership, role=new_role)
    assert error_fields(error) == {"role"}
    assert Membership.objects.get(pk=membership.pk).role == target_role
    assert events_after(org, before) == []


def test_change_role_refuses_an_unknown_role(org, actors):
    with pytest.raises(ValidationError, match="Unknown role"):
        services.change_role(actor=actors["owner"], membership=membership_of(org, Role.VIEWER), role="root")


def test_an_owner_may_make_another_owner_and_then_demote_them(org, actors):
    admin = membership_of(org, Role.ADMIN)
    services.change_role(actor=actors["owner"], membership=admin, role=Role.OWNER)
    services.change_role(actor=actors["owner"], membership=admin, role=Role.VIEWER)
    assert Membership.objects.get(pk=admin.pk).role == Role.VIEWER


def test_the_last_owner_cannot_be_demoted(org):
    owner = membership_of(org, Role.OWNER)
    with pytest.raises(ValidationError, match="at least one owner"):
        services.change_role(actor=SYSTEM, membership=owner, role=Role.ADMIN)
    assert Membership.objects.get(pk=owner.pk).role == Role.OWNER


def test_the_last_owner_cannot_be_removed(org):
    owner = membership_of(org, Role.OWNER)
    with pytest.raises(ValidationError, match="at least one owner"):
        services.remove_member(actor=SYSTEM, membership=owner)
    assert Membership.objects.filter(pk=owner.pk).exists()


def test_one_of_two_owners_may_leave(org, actors, users):
    services.change_role(actor=actors["owner"], membership=membership_of(org, Role.ADMIN), role=Role.OWNER)
    services.remove_member(actor=actors["owner"], membership=membership_of(org, Role.OWNER))
    assert list(org.memberships.filter(role=Role.OWNER).values_list("user__email", flat=True)) == ["admin@acme.test"]


def test_remove_member_takes_them_out_of_teams_and_records_it(org, actors, team, users):
    developer = membership_of(org, Role.DEVELOPER)
    services.set_team_admin(actor=actors["admin"], team=team, user=developer.user, team_admin=True)
    before = last_sequence(org)
    services.remove_member(actor=actors["admin"], membership=developer)
    assert not Membership.objects.filter(pk=developer.pk).exists()
    assert not TeamMembership.objects.filter(user=developer.user).exists()
    assert not User.objects.get(pk=developer.user.pk).has_perm("orgs.admin_team", team)
    event = only_event_after(org, before)
    assert (event.action, event.target_id) == ("member.removed", str(developer.pk))
    assert event.diff == {"email": {"before": "developer@acme.test"}, "role": {"before": "developer"}}


def test_an_admin_cannot_remove_an_owner(org, actors):
    services.change_role(actor=actors["owner"], membership=membership_of(org, Role.VIEWER), role=Role.OWNER)
    with pytest.raises(ValidationError, match="more rights"):
        services.remove_member(actor=actors["admin"], membership=membership_of(org, Role.OWNER))
    assert org.memberships.filter(role=Role.OWNER).count() == 2


def test_membership_in_one_org_leaves_the_other_alone(org, other_org, actors):
    stranger = Membership.objects.get(org=other_org)
    before = last_sequence(other_org)
    services.remove_member(actor=actors["owner"], membership=membership_of(org, Role.VIEWER))
    assert Membership.objects.filter(pk=stranger.pk).exists()
    assert events_after(other_org, before) == []


def _demote_each_other_concurrently(org, *, while_org_is_locked: bool = False) -> dict[str, object]:
    """Owner one demotes owner two while owner two demotes owner one, on two connections.

    With `while_org_is_locked`, a third connection holds the org row until both demotions wait
    for it, which forces the interleaving in which each holds the other's membership row."""
    first = membership_of(org, Role.OWNER)
    second = membership_of(org, Role.ADMIN)
    Membership.objects.filter(pk=second.pk).update(role=Role.OWNER)
    start = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def demote(name: str, actor_membership: Membership, target: Membership) -> None:
        try:
            start.wait(timeout=10)
            services.change_role(actor=actor_for(actor_membership.user, Role.OWNER), membership=target, role=Role.ADMIN)
            outcomes[name] = "demoted"
        except (ValidationError, DatabaseError) as error:
            outcomes[name] = error
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=("first demotes second", first, second)),
        threading.Thread(target=demote, args=("second demotes first", second, first)),
    ]
    holder = connections.create_connection("default") if while_org_is_locked else None
    try:
        if holder is not None:
            holder.set_autocommit(False)
            with holder.cursor() as cursor:
                cursor.execute("SELECT 1 FROM orgs_organization WHERE id = %s FOR UPDATE", [org.pk])
        for thread in threads:
            thread.start()
        if holder is not None:
            _wait_for_lock_waiters(2)
            holder.commit()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if holder is not None:
            holder.close()
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def _wait_for_lock_waiters(count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"{count} connections never waited for the org row")


@pytest.mark.django_db(transaction=True)
def test_concurrent_demotion_of_two_owners_leaves_one(org):
    outcomes = _demote_each_other_concurrently(org)
    assert Membership.objects.filter(org=org, role=Role.OWNER).count() == 1
    assert list(outcomes.values()).count("demoted") == 1, outcomes
    assert AuditEvent.objects.filter(org=org, action="member.role_changed").count() == 1
    assert verify_chain(org).ok


@pytest.mark.django_db(transaction=True)
def test_concurrent_owner_demotions_refuse_the_second_cleanly_without_a_deadlock(org):
    """Forces the interleaving in which each demotion has read its target before the other
    commits: the second must see one owner left and refuse with a ValidationError."""
    outcomes = _demote_each_other_concurrently(org, while_org_is_locked=True)
    assert Membership.objects.filter(org=org, role=Role.OWNER).count() == 1
    assert sorted(type(outcome).__name__ for outcome in outcomes.values()) == ["ValidationError", "str"], outcomes


# Invitations -----------------------------------------------------------------------------


def test_invite_member_stores_only_the_token_digest(org, actors, team, django_capture_on_commit_callbacks):
    before = last_sequence(org)
    with django_capture_on_commit_callbacks() as callbacks:
        invitation, token = services.invite_member(
            actor=actors["admin"], org=org, email=" New.Person@Example.TEST ", role=Role.DEVELOPER, team=team
        )
    assert invitation.email == "new.person@example.test"
    assert invitation.token_digest == digest(token)
    assert token not in invitation.token_digest
    assert invitation.status == "pending"
    assert invitation.invited_by_id == actors["admin"].user_id
    assert timedelta(hours=71) < invitation.expires_at - timezone.now() <= timedelta(hours=72)
    # One email task, enqueued only once the invitation is committed.
    assert len(callbacks) == 1
    event = only_event_after(org, before)
    assert (event.action, event.target_type, event.target_label) == (
        "member.invited",
        "invitation",
        "new.person@example.test",
    )
    assert event.diff == {
        "email": {"after": "new.person@example.test"},
        "role": {"after": "developer"},
        "team": {"after": "Platform"},
    }
    assert token not in str(event.diff)


def test_invite_member_refuses_an_existing_member(org, actors):
    with pytest.raises(ValidationError) as error:
        services.invite_member(actor=actors["admin"], org=org, email="VIEWER@acme.test", role=Role.VIEWER)
    assert error_fields(error) == {"email"}
    assert not Invitation.objects.exists()


def test_invite_member_refuses_a_second_pending_invitation(org, actors):
    services.invite_member(actor=actors["admin"], org=org, email="new@example.test", role=Role.VIEWER)
    before = last_sequence(org)
    with pytest.raises(ValidationError, match="pending invitation") as error:
        services.invite_member(actor=actors["owner"], org=org, email="NEW@example.test", role=Role.ADMIN)
    assert error_fields(error) == {"email"}
    assert Invitation.objects.count() == 1
    assert events_after(org, before) == []


def test_a_revoked_or_expired_invitation_does_not_block_a_new_one(org, actors):
    first, _ = services.invite_member(actor=actors["admin"], org=org, email="new@example.test", role=Role.VIEWER)
    services.revoke_invitation(actor=actors["admin"], invitation=first)
    second, _ = services.invite_member(actor=actors["admin"], org=org, email="new@example.test", role=Role.VIEWER)
    Invitation.objects.filter(pk=second.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.invite_member(actor=actors["admin"], org=org, email="new@example.test", role=Role.VIEWER)
    assert Invitation.objects.filter(email="new@example.test").count() == 3


def test_invite_member_refuses_a_team_of_another_org(org, other_org, actors):
    foreign_team = Team.objects.get(org=other_org)
    with pytest.raises(ValidationError) as error:
        services.invite_member(
            actor=actors["admin"], org=org, email="new@example.test", role=Role.VIEWER, team=foreign_team
        )
    assert error_fields(error) == {"team"}
    assert not Invitation.objects.exists()


def test_invite_member_refuses_a_role_above_the_inviter(org, actors):
    with pytest.raises(ValidationError) as error:
        services.invite_member(actor=actors["admin"], org=org, email="new@example.test", role=Role.OWNER)
    assert error_fields(error) == {"role"}
    assert not Invitation.objects.exists()


@pytest.fixture
def invitation_token(org, actors, team) -> str:
    _invitation, token = services.invite_member(
        actor=actors["admin"], org=org, email="new@example.test", role=Role.DEVELOPER, team=team
    )
    return token


def test_accept_invitation_as_a_new_account(org, team, invitation_token):
    before = last_sequence(org)
    membership = services.accept_invitation(token=invitation_token, password=PASSWORD, full_name=" New Person ")
    user = membership.user
    assert (user.email, user.full_name, membership.role) == ("new@example.test", "New Person", Role.DEVELOPER)
    assert user.check_password(PASSWORD)
    assert team.members.filter(pk=user.pk).exists()
    assert Invitation.objects.get(token_digest=digest(invitation_token)).status == "accepted"
    event = only_event_after(org, before)
    assert (event.action, event.actor_type, event.actor_id) == ("member.joined", "user", str(user.uuid))
    assert event.diff == {"email": {"after": "new@example.test"}, "role": {"after": "developer"}}


def test_accept_invitation_as_the_signed_in_existing_user(org, other_org, actors):
    stranger = User.objects.get(email="owner@other.test")
    _invitation, token = services.invite_member(
        actor=actors["admin"], org=org, email="Owner@Other.test", role=Role.AUDITOR
    )
    membership = services.accept_invitation(token=token, user=stranger)
    assert (membership.user_id, membership.org_id, membership.role) == (stranger.pk, org.pk, Role.AUDITOR)
    assert User.objects.filter(email__iexact="owner@other.test").count() == 1


def test_accept_invitation_without_signing_in_when_the_account_exists(org, other_org, actors):
    _invitation, token = services.invite_member(
        actor=actors["admin"], org=org, email="owner@other.test", role=Role.AUDITOR
    )
    with pytest.raises(ValidationError, match="sign in first"):
        services.accept_invitation(token=token, password=PASSWORD)
    assert not Membership.objects.filter(org=org, user__email="owner@other.test").exists()


def test_accept_invitation_refuses_someone_else(org, users, invitation_token):
    with pytest.raises(ValidationError, match=r"This invitation is for new@example\.test"):
        services.accept_invitation(token=invitation_token, user=users["outsider"])
    assert not Membership.objects.filter(org=org, user=users["outsider"]).exists()
    assert Invitation.objects.get(token_digest=digest(invitation_token)).status == "pending"


def test_an_expired_invitation_cannot_be_accepted(org, invitation_token):
    Invitation.objects.filter(token_digest=digest(invitation_token)).update(expires_at=timezone.now())
    with pytest.raises(ValidationError, match="expired"):
        services.accept_invitation(token=invitation_token, password=PASSWORD)
    assert not User.objects.filter(email="new@example.test").exists()


def test_a_revoked_invitation_cannot_be_accepted(org, actors, invitation_token):
    invitation = Invitation.objects.get(token_digest=digest(invitation_token))
    before = last_sequence(org)
    services.revoke_invitation(actor=actors["admin"], invitation=invitation)
    assert only_event_after(org, before).action == "member.invitation_revoked"
    with pytest.raises(ValidationError, match="revoked"):
        services.accept_invitation(token=invitation_token, password=PASSWORD)
    assert not User.objects.filter(email="new@example.test").exists()
    with pytest.raises(ValidationError, match="already revoked"):
        services.revoke_invitation(actor=actors["admin"], invitation=invitation)


def test_an_invitation_is_used_once(org, invitation_token):
    membership = services.accept_invitation(token=invitation_token, password=PASSWORD)
    with pytest.raises(ValidationError, match="accepted"):
        services.accept_invitation(token=invitation_token, user=membership.user)
    assert Membership.objects.filter(org=org, user=membership.user).count() == 1


def test_an_unknown_invitation_token_is_refused(org, invitation_token):
    with pytest.raises(ValidationError, match="not valid"):
        services.accept_invitation(token=invitation_token + "x", password=PASSWORD)


# Management API tokens -------------------------------------------------------------------


def test_create_api_token_stores_a_digest_and_a_prefix_never_the_plaintext(org, actors):
    before = last_sequence(org)
    token, plaintext = services.create_api_token(actor=actors["admin"], org=org, name=" ci ", role=Role.AUDITOR)
    assert plaintext.startswith(API_TOKEN_PREFIX)
    assert len(plaintext) > 40
    assert (token.name, token.role, token.status) == ("ci", Role.AUDITOR, "active")
    assert token.digest == digest(plaintext)
    assert token.prefix == plaintext[:12]
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(t)::text FROM orgs_apitoken t WHERE id = %s", [token.pk])
        (row,) = cursor.fetchone()
        cursor.execute("SELECT string_agg(row_to_json(e)::text, '') FROM audit_auditevent e")
        (audit_rows,) = cursor.fetchone()
    assert token.digest in row
    assert plaintext not in row
    assert plaintext[12:] not in row
    assert plaintext[12:] not in audit_rows
    event = only_event_after(org, before)
    assert (event.action, event.target_type, event.target_id) == ("api_token.created", "api_token", str(token.pk))
    assert event.diff == {
        "name": {"after": "ci"},
        "role": {"after": "auditor"},
        "prefix": {"after": plaintext[:12]},
        "expires_at": {"after": None},
    }


def test_create_api_token_refuses_a_role_above_the_creator(org, actors):
    with pytest.raises(ValidationError) as error:
        services.create_api_token(actor=actors["admin"], org=org, name="root", role=Role.OWNER)
    assert error_fields(error) == {"role"}
    assert not ApiToken.objects.exists()


def test_create_api_token_refuses_an_expiry_in_the_past(org, actors):
    with pytest.raises(ValidationError) as error:
        services.create_api_token(
            actor=actors["admin"], org=org, name="old", role=Role.VIEWER, expires_at=timezone.now()
        )
    assert error_fields(error) == {"expires_at"}
    assert not ApiToken.objects.exists()


def test_revoke_api_token_once(org, actors):
    token, _plaintext = services.create_api_token(actor=actors["admin"], org=org, name="ci", role=Role.VIEWER)
    before = last_sequence(org)
    services.revoke_api_token(actor=actors["owner"], token=token)
    token.refresh_from_db()
    assert token.status == "revoked"
    assert not token.is_usable
    event = only_event_after(org, before)
    assert (event.action, event.target_id, event.actor_label) == ("api_token.revoked", str(token.pk), "owner@acme.test")
    with pytest.raises(ValidationError, match="already revoked"):
        services.revoke_api_token(actor=actors["owner"], token=token)
    assert events_after(org, event.sequence) == []


# Promise 4: no audit event, no change ----------------------------------------------------


@pytest.fixture
def audit_insert_fails_for():
    """audit_fails("team.created"): from now until the test's transaction ends, the database
    refuses to insert audit events with that action (a trigger, rolled back with the test)."""

    def install(action: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                CREATE FUNCTION pg_temp.refuse_audit_action() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.action = TG_ARGV[0] THEN
                        RAISE EXCEPTION 'test: audit insert refused for %', NEW.action;
                    END IF;
                    RETURN NEW;
                END;
                $$;
                """
            )
            cursor.execute(
                "CREATE TRIGGER test_refuse_audit_action BEFORE INSERT ON audit_auditevent "
                "FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse_audit_action(%s)",
                [action],
            )

    assert connection.in_atomic_block, "the trigger must live inside the test's transaction"
    return install


def test_a_team_is_not_created_when_its_audit_event_cannot_be_written(org, actors, audit_insert_fails_for):
    audit_insert_fails_for("team.created")
    before = last_sequence(org)
    with pytest.raises(DatabaseError, match="audit insert refused"):
        services.create_team(actor=actors["admin"], org=org, name="Ghost")
    assert not Team.objects.filter(org=org, name="Ghost").exists()
    assert last_sequence(org) == before
    # Only that action is refused; others still record, and the chain has no gap.
    services.update_org_settings(actor=actors["owner"], org=org, name="Acme Inc", require_mfa=False)
    assert last_sequence(org) == before + 1
    assert verify_chain(org).ok


def test_a_role_is_not_changed_when_its_audit_event_cannot_be_written(org, actors, audit_insert_fails_for):
    audit_insert_fails_for("member.role_changed")
    viewer = membership_of(org, Role.VIEWER)
    with pytest.raises(DatabaseError):
        services.change_role(actor=actors["admin"], membership=viewer, role=Role.AUDITOR)
    assert Membership.objects.get(pk=viewer.pk).role == Role.VIEWER


def test_no_invitation_and_no_email_when_its_audit_event_cannot_be_written(
    org, actors, audit_insert_fails_for, django_capture_on_commit_callbacks
):
    audit_insert_fails_for("member.invited")
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(DatabaseError):
        services.invite_member(actor=actors["admin"], org=org, email="new@example.test", role=Role.VIEWER)
    assert not Invitation.objects.exists()
    assert callbacks == []


def test_no_api_token_when_its_audit_event_cannot_be_written(org, actors, audit_insert_fails_for):
    audit_insert_fails_for("api_token.created")
    with pytest.raises(DatabaseError):
        services.create_api_token(actor=actors["admin"], org=org, name="ci", role=Role.VIEWER)
    assert not ApiToken.objects.exists()


def test_nothing_is_kept_of_a_new_account_when_joining_cannot_be_recorded(
    org, invitation_token, audit_insert_fails_for
):
    audit_insert_fails_for("member.joined")
    with pytest.raises(DatabaseError):
        services.accept_invitation(token=invitation_token, password=PASSWORD)
    assert not User.objects.filter(email="new@example.test").exists()
    assert Invitation.objects.get(token_digest=digest(invitation_token)).status == "pending"


def test_the_test_trigger_is_gone_after_its_test(org, actors):
    """The trigger above lives in the rolled-back test transaction, never in the database."""
    with transaction.atomic():
        services.create_team(actor=actors["admin"], org=org, name="Ghost")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'test_refuse_audit_action'")
        assert cursor.fetchone() == (0,)
