"""Sign-in with throttling, workspace members and roles, and e-mailed invitations."""

import hashlib
import logging
import smtplib

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import SetPasswordForm
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone

from crm_site.forms import InvitationForm, MemberRoleForm
from crm_site.models import Invitation, Membership, Role
from crm_site.tenancy import platform_scope, requires_role, tenant_scope

User = get_user_model()
logger = logging.getLogger(__name__)

# One account may be guessed at from many addresses; it locks after this many times the per-address limit.
USERNAME_ATTEMPTS_FACTOR = 4


# --- Login throttling ---------------------------------------------------------------------------


def client_address(request) -> str:
    """Return the client's IP address: REMOTE_ADDR, or the X-Forwarded-For entry our trusted proxies added."""
    trusted_proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if trusted_proxies and len(forwarded) >= trusted_proxies:
        # Each trusted proxy appends the address it saw; anything left of those the client could have forged.
        return forwarded[-trusted_proxies]
    return request.META.get("REMOTE_ADDR", "")


def _throttle_keys(address: str, username: str) -> list[tuple[str, int]]:
    # Hashed so that any username makes a valid cache key.
    user_digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    limit = settings.LOGIN_THROTTLE_ATTEMPTS
    return [(f"login-attempts:addr:{address}", limit), (f"login-attempts:user:{user_digest}", limit * USERNAME_ATTEMPTS_FACTOR)]


def _count_attempt(key: str, limit: int) -> bool:
    """Count one attempt under ``key`` and return whether it is within ``limit`` for the throttle window."""
    window = settings.LOGIN_THROTTLE_WINDOW_SECONDS
    cache.add(key, 0, window)
    try:
        attempts = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, window)
        attempts = 1
    # Some backends reset the expiry on incr; the window runs from the latest attempt on all of them.
    cache.touch(key, window)
    return attempts <= limit


def register_login_attempt(address: str, username: str) -> bool:
    """Count one sign-in attempt and return whether it may go ahead.

    Attempts are counted before the password is checked, so parallel guesses cannot slip past the limit,
    and refused attempts count too: hammering keeps the door shut until the window passes quietly.
    A successful sign-in clears the counts (``clear_login_attempts``).
    """
    results = [_count_attempt(key, limit) for key, limit in _throttle_keys(address, username)]
    return all(results)


def register_password_reset_request(address: str) -> bool:
    """Count one password-reset request from an address and return whether to send the mail."""
    return _count_attempt(f"reset-requests:addr:{address}", settings.LOGIN_THROTTLE_ATTEMPTS)


def _throttled_message(action: str) -> str:
    minutes = max(1, round(settings.LOGIN_THROTTLE_WINDOW_SECONDS / 60))
    return f"{action} is paused for {minutes} minute{'s' if minutes != 1 else ''}"


def clear_login_attempts(address: str, username: str) -> None:
    """Forget the counted attempts of an address and a username (after a successful sign-in)."""
    cache.delete_many([key for key, _ in _throttle_keys(address, username)])


class ThrottledLoginView(auth_views.LoginView):
    """Django's login, refusing attempts for a while after repeated failures from one address or on one account."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        username = request.POST.get("username", "")
        if not register_login_attempt(client_address(request), username):
            # The password is not even checked: a right one must not reveal itself while throttled.
            form = self.get_form_class()(request, initial={"username": username})
            message = f"Too many failed sign-in attempts. {_throttled_message('Sign-in')}; try again later or reset your password."
            context = self.get_context_data(form=form, throttled_message=message)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        clear_login_attempts(client_address(self.request), self.request.POST.get("username", ""))
        return super().form_valid(form)


class ThrottledPasswordResetView(auth_views.PasswordResetView):
    """Django's password reset, sending at most a few mails per address and window (no mail bombing)."""

    email_template_name = "registration/password_reset_email.txt"
    subject_template_name = "registration/password_reset_subject.txt"

    def post(self, request, *args, **kwargs):
        if not register_password_reset_request(client_address(request)):
            message = f"Too many reset requests. {_throttled_message('Sending reset links')}; check your inbox."
            context = self.get_context_data(form=self.get_form_class()(), throttled_message=message)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)


# --- Members and invitations ------------------------------------------------------------------


def send_invitation(request, invitation: Invitation) -> None:
    """E-mail the invitation's accept link to the invited address; raises on a mail server failure."""
    workspace = request.workspace
    accept_url = request.build_absolute_uri(reverse("invitation_accept", args=[invitation.token]))
    inviter = request.user.get_full_name() or request.user.get_username()
    send_mail(
        f"You are invited to {workspace.name} on Rapport",
        f"{inviter} invited you to join {workspace.name} on Rapport as {invitation.get_role_display()}.\n\n"
        f"Accept the invitation: {accept_url}\n\n"
        f"The link works once, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC. "
        "If you did not expect this, ignore this e-mail.",
        None,
        [invitation.email],
    )


@requires_role("admin")
def members(request, workspace_slug):
    """Members and their roles, pending invitations, and the form to invite someone."""
    workspace = request.workspace
    form = InvitationForm(request.POST or None, inviter_role=request.membership.role)
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"].lower()
        if Membership.objects.filter(workspace=workspace, user__email__iexact=email).exists():
            form.add_error("email", "This person is already a member.")
        else:
            try:
                with transaction.atomic():
                    # A new invitation replaces pending ones, so only the newest link works.
                    Invitation.objects.filter(email=email, accepted_at__isnull=True).delete()
                    invitation = Invitation.objects.create(
                        email=email, role=form.cleaned_data["role"], invited_by=request.user
                    )
                    send_invitation(request, invitation)
            except (smtplib.SMTPException, OSError) as error:
                logger.warning("invitation mail to %s failed: %s", email, error)
                form.add_error(None, f"The invitation e-mail could not be sent ({error}). Nothing was saved; try again.")
            else:
                messages.success(request, f"Invitation sent to {email}.")
                return redirect("members", workspace_slug=workspace.slug)
    context = {
        "section": "settings",
        "form": form,
        "memberships": Membership.objects.filter(workspace=workspace).select_related("user").order_by("user__username"),
        "invitations": Invitation.objects.filter(accepted_at__isnull=True, expires_at__gt=timezone.now()),
    }
    return render(request, "settings/members.html", context, status=400 if form.errors else 200)


@requires_role("admin")
def member_edit(request, workspace_slug, membership_id):
    """Change a member's role or remove them; only an owner touches the owner role, and one owner always stays."""
    membership = get_object_or_404(
        Membership.objects.select_related("user"), pk=membership_id, workspace=request.workspace
    )
    form = MemberRoleForm(request.POST or None, initial={"role": membership.role})
    if request.method == "POST":
        # Locking the owners serialises two owners demoting each other at the same moment.
        owner_ids = list(
            Membership.objects.select_for_update()
            .filter(workspace=request.workspace, role=Role.OWNER)
            .values_list("pk", flat=True)
        )
        is_last_owner = owner_ids == [membership.pk]
        acting_as_owner = request.membership.role == Role.OWNER
        name = membership.user.get_full_name() or membership.user.get_username()
        if request.POST.get("action") == "remove":
            if membership.role == Role.OWNER and not acting_as_owner:
                messages.error(request, "Only an owner removes an owner.")
            elif is_last_owner:
                messages.error(request, "A workspace keeps at least one owner; make someone else owner first.")
            else:
                membership.delete()
                messages.success(request, f"{name} was removed from the workspace.")
            return redirect("members", workspace_slug=workspace_slug)
        if form.is_valid():
            role = form.cleaned_data["role"]
            if Role.OWNER in (role, membership.role) and not acting_as_owner:
                messages.error(request, "Only an owner grants or takes the owner role.")
            elif is_last_owner and role != Role.OWNER:
                messages.error(request, "A workspace keeps at least one owner; make someone else owner first.")
            else:
                membership.role = role
                membership.save(update_fields=["role"])
                messages.success(request, f"{name} is now {membership.get_role_display()}.")
            return redirect("members", workspace_slug=workspace_slug)
    return render(
        request,
        "settings/member_edit.html",
        {"section": "settings", "form": form, "member": membership},
        status=400 if form.errors else 200,
    )


@requires_role("admin")
def invitation_revoke(request, workspace_slug, invitation_id):
    """Revoke a pending invitation (its link stops working); htmx removes the row, a plain POST redirects."""
    invitation = get_object_or_404(Invitation.objects, pk=invitation_id, accepted_at__isnull=True)
    if request.method == "POST":
        invitation.delete()
        if request.headers.get("HX-Request"):
            return HttpResponse("")
        messages.success(request, f"Invitation of {invitation.email} revoked.")
    return redirect("members", workspace_slug=workspace_slug)


def _invitation_by_token(token: str):
    # The token is all we know before a workspace is in scope; it is unique across workspaces.
    with platform_scope():
        return Invitation.objects.select_related("tenant").filter(token=token, tenant__is_active=True).first()


def _username_for(email: str) -> str:
    return email.lower()[: User._meta.get_field(User.USERNAME_FIELD).max_length]


def accept_invitation(invitation: Invitation, user) -> Membership | None:
    """Use up an invitation for a user and return their membership (the invited role unless already a member).

    Returns None when the invitation was used, revoked or expired meanwhile.
    """
    with tenant_scope(invitation.tenant_id):
        # Locked and re-checked, so two clicks on one link cannot both pass.
        locked = Invitation.objects.select_for_update().filter(pk=invitation.pk).first()
        if locked is None or not locked.is_usable:
            return None
        membership, _ = Membership.objects.get_or_create(
            workspace_id=invitation.tenant_id, user=user, defaults={"role": locked.role}
        )
        locked.accepted_at = timezone.now()
        locked.save(update_fields=["accepted_at"])
    return membership


def _invalid_invitation(request, invitation):
    # Unknown or revoked links are 404; expired or used ones are gone for good.
    status = 404 if invitation is None else 410
    return render(request, "registration/invitation_invalid.html", status=status)


def _welcome(request, invitation):
    messages.success(request, f"Welcome to {invitation.tenant.name}.")
    return redirect("dashboard", workspace_slug=invitation.tenant.slug)


def invitation_accept(request, token):
    """Join the workspace of an invitation: confirm when signed in as the invited address, else sign in or sign up."""
    invitation = _invitation_by_token(token)
    if invitation is None or not invitation.is_usable:
        return _invalid_invitation(request, invitation)
    if request.user.is_authenticated:
        if request.user.email.lower() != invitation.email.lower():
            return render(request, "registration/invitation_wrong_account.html", {"invitation": invitation}, status=403)
        if request.method == "POST":
            if accept_invitation(invitation, request.user) is None:
                return _invalid_invitation(request, invitation)
            return _welcome(request, invitation)
        return render(request, "registration/invitation_accept.html", {"invitation": invitation})
    email = invitation.email
    username = _username_for(email)
    if User.objects.filter(Q(email__iexact=email) | Q(**{f"{User.USERNAME_FIELD}__iexact": username})).exists():
        messages.info(request, f"Sign in as {email} to accept the invitation to {invitation.tenant.name}.")
        return redirect(f"{reverse('login')}?next={request.path}")
    user = User(**{User.USERNAME_FIELD: username}, email=email)
    form = SetPasswordForm(user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            form.save()
            if accept_invitation(invitation, user) is None:
                transaction.set_rollback(True)  # no account for a link that was used up meanwhile
                return _invalid_invitation(request, invitation)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.info(request, f"Your account is ready: from now on you sign in as {user.get_username()}.")
        return _welcome(request, invitation)
    return render(
        request,
        "registration/invitation_accept.html",
        {"invitation": invitation, "form": form},
        status=400 if form.errors else 200,
    )
