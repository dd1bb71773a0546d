"""Sign-in with throttling, workspace members, roles and e-mailed invitations."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import SetPasswordForm
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone

from crm_site.forms import InvitationForm, MemberRoleForm
from crm_site.models import Invitation, Membership, Role
from crm_site.tenancy import platform_scope, requires_role

User = get_user_model()


def _throttle_key(request, username: str) -> str:
    address = request.META.get("REMOTE_ADDR", "")
    return f"login-fail:{address}:{username.strip().lower()}"


class ThrottledLoginView(auth_views.LoginView):
    """Django's login, refusing further attempts for a while after repeated failures from one address."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        key = _throttle_key(request, request.POST.get("username", ""))
        if cache.get(key, 0) >= settings.LOGIN_THROTTLE_ATTEMPTS:
            form = self.get_form()
            form.errors.clear()
            minutes = max(1, settings.LOGIN_THROTTLE_WINDOW_SECONDS // 60)
            form.add_error(None, f"Too many failed sign-in attempts. Try again in {minutes} minutes.")
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        key = _throttle_key(self.request, self.request.POST.get("username", ""))
        cache.add(key, 0, settings.LOGIN_THROTTLE_WINDOW_SECONDS)
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, settings.LOGIN_THROTTLE_WINDOW_SECONDS)
        return super().form_invalid(form)

    def form_valid(self, form):
        cache.delete(_throttle_key(self.request, self.request.POST.get("username", "")))
        return super().form_valid(form)


@requires_role("admin")
def members(request, workspace_slug):
    workspace = request.workspace
    form = InvitationForm(request.POST or None, inviter_role=request.membership.role)
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"].lower()
        if Membership.objects.filter(workspace=workspace, user__email__iexact=email).exists():
            form.add_error("email", "This person is already a member.")
        else:
            invitation = Invitation.objects.create(
                email=email, role=form.cleaned_data["role"], invited_by=request.user
            )
            accept_url = request.build_absolute_uri(reverse("invitation_accept", args=[invitation.token]))
            send_mail(
                f"You are invited to {workspace.name} on Rapport",
                f"{request.user.get_full_name() or request.user.username} invited you to join "
                f"{workspace.name} as {invitation.get_role_display()}.\n\nAccept: {accept_url}\n\n"
                "The link works for 7 days.",
                None,
                [email],
            )
            messages.success(request, f"Invitation sent to {email}.")
            return redirect("members", workspace_slug=workspace.slug)
    context = {
        "section": "settings",
        "form": form,
        "memberships": Membership.objects.filter(workspace=workspace).select_related("user"),
        "invitations": Invitation.objects.filter(accepted_at__isnull=True, expires_at__gt=timezone.now()),
    }
    return render(request, "settings/members.html", context)


@requires_role("admin")
def member_edit(request, workspace_slug, membership_id):
    membership = get_object_or_404(Membership, pk=membership_id, workspace=request.workspace)
    form = MemberRoleForm(request.POST or None, initial={"role": membership.role})
    if request.method == "POST":
        owners = Membership.objects.filter(workspace=request.workspace, role=Role.OWNER)
        is_last_owner = membership.role == Role.OWNER and owners.count() == 1
        if request.POST.get("action") == "remove":
            if is_last_owner:
                messages.error(request, "A workspace keeps at least one owner.")
            elif membership.role == Role.OWNER and request.membership.role != Role.OWNER:
                messages.error(request, "Only an owner removes an owner.")
            else:
                membership.delete()
                messages.success(request, f"{membership.user} was removed.")
            return redirect("members", workspace_slug=workspace_slug)
        if form.is_valid():
            role = form.cleaned_data["role"]
            touches_owner = Role.OWNER in (role, membership.role)
            if touches_owner and request.membership.role != Role.OWNER:
                messages.error(request, "Only an owner grants or takes the owner role.")
            elif is_last_owner and role != Role.OWNER:
                messages.error(request, "A workspace keeps at least one owner.")
            else:
                membership.role = role
                membership.save(update_fields=["role"])
                messages.success(request, f"{membership.user} is now {membership.get_role_display()}.")
            return redirect("members", workspace_slug=workspace_slug)
    return render(request, "settings/member_edit.html", {"section": "settings", "form": form, "member": membership})


@requires_role("admin")
def invitation_revoke(request, workspace_slug, invitation_id):
    invitation = get_object_or_404(Invitation.objects, pk=invitation_id)
    if request.method == "POST":
        invitation.delete()
        messages.success(request, f"Invitation of {invitation.email} revoked.")
    return redirect("members", workspace_slug=workspace_slug)


def invitation_accept(request, token):
    """Join the workspace of an invitation: sign in as the invited address, or create the account."""
    with platform_scope():
        invitation = Invitation.objects.select_related("tenant").filter(token=token).first()
    if invitation is None or not invitation.is_usable:
        return render(request, "registration/invitation_invalid.html", status=404)
    existing = User.objects.filter(email__iexact=invitation.email).first()
    if request.user.is_authenticated:
        if request.user.email.lower() != invitation.email.lower():
            messages.error(request, f"This invitation is for {invitation.email}. Sign out and open the link again.")
            return redirect("home")
        return _join(request, invitation, request.user)
    if existing is not None:
        messages.info(request, "Sign in to accept the invitation.")
        return redirect(f"{reverse('login')}?next={request.path}")
    user = User(username=invitation.email, email=invitation.email)
    form = SetPasswordForm(user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            form.save()
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return _join(request, invitation, user)
    return render(request, "registration/invitation_accept.html", {"form": form, "invitation": invitation})


def _join(request, invitation, user):
    with platform_scope():
        Membership.objects.get_or_create(
            workspace=invitation.tenant, user=user, defaults={"role": invitation.role}
        )
        invitation.accepted_at = timezone.now()
        invitation.save(update_fields=["accepted_at"])
    messages.success(request, f"Welcome to {invitation.tenant.name}.")
    return redirect("dashboard", workspace_slug=invitation.tenant.slug)
