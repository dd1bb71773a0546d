"""Signing in and out, resetting a password by e-mail, login throttling, the workspace switcher,
inviting members by e-mail, and what each role may do."""

import datetime as dt
import re
import time

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from crm_site.models import Invitation, Membership, Role
from crm_site.tenancy import tenant_scope
from tests.factories import (
    PASSWORD,
    CustomerFactory,
    InvitationFactory,
    MembershipFactory,
    OrderFactory,
    UserFactory,
    WorkspaceFactory,
)
from tests.isolation_registry import make_url_values, workspace_urls

User = get_user_model()
NEW_PASSWORD = "a-whole-new-secret-2024"

pytestmark = pytest.mark.django_db


def sign_in(client, username, password=PASSWORD, address="10.0.0.1", **extra):
    return client.post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address, **extra
    )


def is_signed_in(client) -> bool:
    return "_auth_user_id" in client.session


def body_text(message) -> str:
    return message["message"].get_body(preferencelist=("plain",)).get_content()


def only_link(text: str) -> str:
    links = re.findall(r"https?://\S+", text)
    assert len(links) == 1, links
    return links[0]


# --- Sign in and out -------------------------------------------------------------------------------


def test_member_signs_in_lands_on_their_dashboard_and_signs_out(client, workspace):
    user = MembershipFactory(workspace=workspace).user
    assert client.get("/accounts/login/").status_code == 200

    response = sign_in(client, user.username)
    assert response.status_code == 302
    response = client.get(response["Location"], follow=True)
    assert response.request["PATH_INFO"] == "/w/acme/"
    assert b"Dashboard" in response.content

    response = client.post("/accounts/logout/")
    assert response["Location"] == "/accounts/login/"
    assert client.get("/w/acme/")["Location"].startswith("/accounts/login/?next=/w/acme/")


def test_wrong_password_re_renders_the_form_with_an_error(client):
    user = UserFactory()
    response = sign_in(client, user.username, "not-it")
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    assert not is_signed_in(client)


def test_next_parameter_returns_the_user_to_the_page_they_wanted(client, workspace):
    user = MembershipFactory(workspace=workspace).user
    response = client.post(
        "/accounts/login/", {"username": user.username, "password": PASSWORD, "next": "/w/acme/customers/"}
    )
    assert response["Location"] == "/w/acme/customers/"


# --- Password reset by e-mail ------------------------------------------------------------------------


def test_forgotten_password_is_reset_through_the_link_in_the_email(client, smtp_sink):
    user = UserFactory(username="ann", email="ann@example.com")
    response = client.post("/accounts/password-reset/", {"email": "ann@example.com"})
    assert response["Location"] == "/accounts/password-reset/sent/"

    [mail] = smtp_sink.wait_for(1)
    assert mail["to"] == ["ann@example.com"]
    assert mail["message"]["Subject"] == "Choose a new Rapport password"
    link = only_link(body_text(mail))
    assert link.startswith("http://testserver/accounts/reset/")

    # Django swaps the token for a session marker and redirects to the form.
    response = client.get(link.removeprefix("http://testserver"), follow=True)
    assert b"Choose a new password" in response.content
    form_path = response.request["PATH_INFO"]
    response = client.post(form_path, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert response["Location"] == "/accounts/reset/done/"

    assert not is_signed_in(client)
    assert sign_in(client, "ann", PASSWORD).status_code == 200  # the old password no longer works
    assert sign_in(client, "ann", NEW_PASSWORD).status_code == 302
    assert is_signed_in(client)

    # The link is single-use.
    client.post("/accounts/logout/")
    response = client.get(link.removeprefix("http://testserver"), follow=True)
    assert b"This reset link is invalid or was already used" in response.content
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)


def test_reset_for_an_unknown_address_says_the_same_and_sends_nothing(client, smtp_sink):
    response = client.post("/accounts/password-reset/", {"email": "nobody@example.com"}, follow=True)
    assert b"Check your e-mail" in response.content
    assert smtp_sink.wait_for(1, timeout=0.5) == []


def test_mismatched_new_passwords_re_render_with_a_message(client, smtp_sink):
    UserFactory(username="bo", email="bo@example.com")
    client.post("/accounts/password-reset/", {"email": "bo@example.com"})
    [mail] = smtp_sink.wait_for(1)
    response = client.get(only_link(body_text(mail)).removeprefix("http://testserver"), follow=True)
    response = client.post(response.request["PATH_INFO"], {"new_password1": NEW_PASSWORD, "new_password2": "other"})
    assert response.status_code == 200
    assert b"didn\xe2\x80\x99t match" in response.content


# --- Login throttling --------------------------------------------------------------------------------


@pytest.fixture
def throttle(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 3
    settings.LOGIN_THROTTLE_WINDOW_SECONDS = 1
    return settings


def test_after_repeated_failures_even_the_right_password_is_refused_until_the_window_passes(client, throttle):
    user = UserFactory()
    for _ in range(3):
        assert sign_in(client, user.username, "wrong").status_code == 200

    response = sign_in(client, user.username, PASSWORD)
    assert response.status_code == 429
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert not is_signed_in(client)

    time.sleep(1.2)
    assert sign_in(client, user.username, PASSWORD).status_code == 302
    assert is_signed_in(client)


def test_a_successful_sign_in_resets_the_count(client, throttle):
    user = UserFactory()
    for _ in range(2):
        sign_in(client, user.username, "wrong")
    assert sign_in(client, user.username, PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(2):
        sign_in(client, user.username, "wrong")
    assert sign_in(client, user.username, PASSWORD).status_code == 302


def test_failures_from_one_address_do_not_lock_out_other_addresses(client, throttle):
    guessed, other = UserFactory(), UserFactory()
    for _ in range(4):
        sign_in(client, guessed.username, "wrong", address="10.0.0.66")
    assert sign_in(client, other.username, PASSWORD, address="10.0.0.66").status_code == 429
    assert sign_in(client, other.username, PASSWORD, address="10.0.0.7").status_code == 302


def test_guessing_at_one_account_from_many_addresses_locks_that_account(client, throttle):
    victim = UserFactory()
    # 3 per address is the address limit; the account takes 4 times that from everywhere together.
    for attempt in range(12):
        sign_in(client, victim.username, "wrong", address=f"10.1.0.{attempt % 4}")
    assert sign_in(client, victim.username, PASSWORD, address="10.9.9.9").status_code == 429


def test_a_forged_forwarded_for_header_does_not_reset_the_count(client, throttle):
    user = UserFactory()
    for attempt in range(3):
        sign_in(client, user.username, "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{attempt}")
    assert sign_in(client, user.username, PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.99").status_code == 429


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(client, throttle):
    throttle.TRUSTED_PROXY_COUNT = 1
    locked_out, fine = UserFactory(), UserFactory()
    for _ in range(3):
        sign_in(client, locked_out.username, "wrong", address="10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.1")
    # Same proxy address, another client behind it: not throttled.
    assert (
        sign_in(client, fine.username, PASSWORD, address="10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.2").status_code
        == 302
    )


def test_password_reset_mails_are_limited_per_address(client, throttle, mailoutbox):
    UserFactory(email="ivy@example.com")
    for _ in range(3):
        client.post("/accounts/password-reset/", {"email": "ivy@example.com"}, REMOTE_ADDR="10.0.0.5")
    response = client.post("/accounts/password-reset/", {"email": "ivy@example.com"}, REMOTE_ADDR="10.0.0.5")
    assert response.status_code == 429
    assert b"Too many reset requests" in response.content
    assert len(mailoutbox) == 3


# --- Workspace switcher ------------------------------------------------------------------------------


def test_switcher_lists_the_users_workspaces_and_switching_shows_the_others_numbers(client, workspace, other_workspace):
    user = UserFactory()
    MembershipFactory(workspace=workspace, user=user, role=Role.OWNER)
    MembershipFactory(workspace=other_workspace, user=user, role=Role.VIEWER)
    stranger_workspace = WorkspaceFactory(name="Initech Beans", slug="initech")
    CustomerFactory.create_batch(3, tenant=workspace)
    OrderFactory(tenant=other_workspace)
    client.force_login(user)

    page = client.get("/w/acme/").content.decode()
    switcher = page[page.index('aria-labelledby="workspace-switcher"') :]
    assert 'href="/w/acme/"' in switcher and 'href="/w/globex/"' in switcher
    assert "Initech Beans" not in page and stranger_workspace.slug not in switcher
    assert re.search(r'data-metric="customers">3<', page)

    page = client.get("/w/globex/").content.decode()
    assert "<title>Dashboard · Globex Tea</title>" in page
    assert re.search(r'data-metric="customers">1<', page)
    assert re.search(r'data-metric="orders">1<', page)


def test_home_returns_to_the_workspace_used_last(client, workspace, other_workspace):
    user = UserFactory()
    MembershipFactory(workspace=workspace, user=user)
    MembershipFactory(workspace=other_workspace, user=user)
    client.force_login(user)
    client.get("/w/globex/")
    assert client.get("/")["Location"] == "/w/globex/"


def test_a_user_without_workspaces_is_told_to_ask_for_an_invitation(client):
    client.force_login(UserFactory())
    response = client.get("/")
    assert b"You are not a member of any workspace" in response.content


# --- Invitations -------------------------------------------------------------------------------------


def invite(client, email, role=Role.MARKETER, slug="acme"):
    return client.post(f"/w/{slug}/settings/members/", {"email": email, "role": role})


def test_invited_newcomer_follows_the_emailed_link_creates_an_account_and_joins_with_the_role(
    client, member_client, smtp_sink
):
    admin = member_client(Role.ADMIN)
    response = invite(admin, "New.Person@Example.com", Role.VIEWER)
    assert response["Location"] == "/w/acme/settings/members/"

    [mail] = smtp_sink.wait_for(1)
    assert mail["to"] == ["new.person@example.com"]
    assert "invited to Acme Coffee" in mail["message"]["Subject"]
    body = body_text(mail)
    assert "as Viewer" in body
    link = only_link(body).removeprefix("http://testserver")
    assert "new.person@example.com" in admin.get("/w/acme/settings/members/").content.decode()

    admin.post("/accounts/logout/")
    response = client.get(link)
    assert b"Choose a password to create your account" in response.content
    response = client.post(link, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}, follow=True)
    assert response.request["PATH_INFO"] == "/w/acme/"
    assert b"Welcome to Acme Coffee" in response.content

    newcomer = User.objects.get(email="new.person@example.com")
    assert Membership.objects.get(user=newcomer).role == Role.VIEWER
    client.post("/accounts/logout/")
    assert sign_in(client, "new.person@example.com", NEW_PASSWORD).status_code == 302

    # The link worked once.
    assert client.get(link).status_code == 410


def test_invited_existing_user_is_asked_to_sign_in_then_confirms(client, workspace, smtp_sink, member_client):
    admin = member_client(Role.OWNER)
    existing = UserFactory(username="carla", email="carla@example.com")
    invite(admin, "carla@example.com", Role.ADMIN)
    link = only_link(body_text(smtp_sink.wait_for(1)[0])).removeprefix("http://testserver")
    admin.post("/accounts/logout/")

    response = client.get(link)
    assert response["Location"] == f"/accounts/login/?next={link}"
    response = client.post(f"/accounts/login/?next={link}", {"username": "carla", "password": PASSWORD, "next": link})
    assert response["Location"] == link
    assert b"Join Acme Coffee" in client.get(link).content
    assert not Membership.objects.filter(user=existing).exists()  # opening the link alone changes nothing

    response = client.post(link)
    assert response["Location"] == "/w/acme/"
    assert Membership.objects.get(user=existing, workspace=workspace).role == Role.ADMIN


def test_an_invitation_for_someone_else_is_refused_for_the_signed_in_user(client, workspace):
    invitation = InvitationFactory(tenant=workspace, email="dora@example.com")
    client.force_login(UserFactory(email="eve@example.com"))
    response = client.post(f"/accounts/invitation/{invitation.token}/")
    assert response.status_code == 403
    assert b"sent to dora@example.com" in response.content
    assert not Membership.objects.filter(workspace=workspace).exists()


def test_expired_used_and_revoked_invitations_are_refused(client, workspace, member_client):
    expired = InvitationFactory(tenant=workspace, expires_at=timezone.now() - dt.timedelta(minutes=1))
    used = InvitationFactory(tenant=workspace, accepted_at=timezone.now())
    revoked = InvitationFactory(tenant=workspace)
    admin = member_client(Role.ADMIN)
    response = admin.post(f"/w/acme/settings/invitations/{revoked.pk}/revoke/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response.content == b""
    admin.post("/accounts/logout/")

    for invitation, status in ((expired, 410), (used, 410), (revoked, 404)):
        for method in (client.get, client.post):
            response = method(
                f"/accounts/invitation/{invitation.token}/",
                {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
            )
            assert response.status_code == status
            assert b"This invitation expired, was revoked or was already used" in response.content
    assert not User.objects.filter(email__startswith="invitee").exists()
    assert client.get("/accounts/invitation/made-up-token/").status_code == 404


def test_a_new_invitation_replaces_the_pending_one(client, member_client, smtp_sink):
    admin = member_client(Role.ADMIN)
    invite(admin, "fay@example.com")
    invite(admin, "fay@example.com", Role.VIEWER)
    first, second = (only_link(body_text(mail)) for mail in smtp_sink.wait_for(2))
    admin.post("/accounts/logout/")
    assert client.get(first.removeprefix("http://testserver")).status_code == 404
    assert client.get(second.removeprefix("http://testserver")).status_code == 200


def test_inviting_a_member_again_or_an_invalid_address_shows_the_problem(member_client, smtp_sink):
    admin = member_client(Role.ADMIN)
    admin.user.email = "admin@example.com"
    admin.user.save()
    response = invite(admin, "ADMIN@example.com")
    assert response.status_code == 400
    assert b"This person is already a member." in response.content
    response = invite(admin, "not-an-address")
    assert response.status_code == 400
    assert b"Enter a valid email address." in response.content
    assert smtp_sink.wait_for(1, timeout=0.3) == []


def test_an_unreachable_mail_server_is_reported_and_no_invitation_is_left(member_client, settings, workspace):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    admin = member_client(Role.ADMIN)
    response = invite(admin, "gil@example.com")
    assert response.status_code == 400
    assert b"The invitation e-mail could not be sent" in response.content
    with tenant_scope(workspace):
        assert not Invitation.objects.exists()


def test_only_an_owner_may_invite_an_owner(member_client, smtp_sink, workspace):
    admin = member_client(Role.ADMIN)
    response = invite(admin, "hal@example.com", Role.OWNER)
    assert response.status_code == 400
    assert b"Select a valid choice" in response.content
    owner = member_client(Role.OWNER)
    assert invite(owner, "hal@example.com", Role.OWNER).status_code == 302
    with tenant_scope(workspace):
        assert Invitation.objects.get().role == Role.OWNER


# --- Roles -------------------------------------------------------------------------------------------


def test_a_viewer_reads_but_every_write_in_the_workspace_is_403(member_client, workspace):
    viewer = member_client(Role.VIEWER)
    assert viewer.get("/w/acme/").status_code == 200
    for url in workspace_urls():
        path = url.path("acme", make_url_values(url, workspace))
        for method in ("post", "put", "patch", "delete"):
            response = getattr(viewer, method)(path)
            assert response.status_code == 403, f"viewer {method.upper()} {path}: {response.status_code}"
    assert b"This needs the marketer role." in viewer.post("/w/acme/").content


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MARKETER])
def test_only_owners_and_admins_manage_members_and_settings(member_client, workspace, role):
    member = member_client(role)
    for path in ("/w/acme/settings/", "/w/acme/settings/members/"):
        assert member.get(path).status_code == 403
    assert b'href="/w/acme/settings/"' not in member.get("/w/acme/").content


def test_an_admin_saves_workspace_settings(member_client, workspace):
    admin = member_client(Role.ADMIN)
    response = admin.post(
        "/w/acme/settings/", {"name": "Acme Roasters", "time_zone": "Europe/Berlin", "currency": "EUR"}, follow=True
    )
    assert b"Workspace settings saved." in response.content
    workspace.refresh_from_db()
    assert (workspace.name, workspace.time_zone) == ("Acme Roasters", "Europe/Berlin")


def change_role(client, membership, role):
    return client.post(f"/w/acme/settings/members/{membership.pk}/", {"role": role}, follow=True)


def remove(client, membership):
    return client.post(f"/w/acme/settings/members/{membership.pk}/", {"role": membership.role, "action": "remove"}, follow=True)


def test_an_admin_changes_and_removes_marketers_but_cannot_touch_owners(member_client, workspace):
    owner = MembershipFactory(workspace=workspace, role=Role.OWNER)
    marketer = MembershipFactory(workspace=workspace, role=Role.MARKETER)
    admin = member_client(Role.ADMIN)

    assert b"is now Viewer" in change_role(admin, marketer, Role.VIEWER).content
    assert b"Only an owner grants or takes the owner role." in change_role(admin, marketer, Role.OWNER).content
    assert b"Only an owner grants or takes the owner role." in change_role(admin, owner, Role.MARKETER).content
    assert b"Only an owner removes an owner." in remove(admin, owner).content
    owner.refresh_from_db()
    marketer.refresh_from_db()
    assert (owner.role, marketer.role) == (Role.OWNER, Role.VIEWER)

    assert b"was removed from the workspace" in remove(admin, marketer).content
    assert not Membership.objects.filter(pk=marketer.pk).exists()


def test_an_owner_grants_owner_and_the_last_owner_can_neither_leave_nor_be_demoted(member_client, workspace):
    owner_client = member_client(Role.OWNER)
    me = Membership.objects.get(user=owner_client.user)
    admin = MembershipFactory(workspace=workspace, role=Role.ADMIN)

    for response in (change_role(owner_client, me, Role.ADMIN), remove(owner_client, me)):
        assert b"A workspace keeps at least one owner" in response.content
    me.refresh_from_db()
    assert me.role == Role.OWNER

    assert b"is now Owner" in change_role(owner_client, admin, Role.OWNER).content
    # With a second owner, the first may step down.
    assert b"is now Admin" in change_role(owner_client, me, Role.ADMIN).content


def test_an_invalid_role_re_renders_the_form(member_client, workspace):
    admin = member_client(Role.ADMIN)
    marketer = MembershipFactory(workspace=workspace, role=Role.MARKETER)
    response = admin.post(f"/w/acme/settings/members/{marketer.pk}/", {"role": "emperor"})
    assert response.status_code == 400
    assert b"Select a valid choice" in response.content
