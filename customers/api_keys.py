"""Workspace API keys: creation (the secret is shown once), hashed lookup, revocation, and the Settings pages.

A key looks like ``rpk_<prefix>_<secret>``. Only the SHA-256 digest of the whole key is stored: the secret
has 256 bits of entropy, so a plain digest resists guessing and keeps the per-request lookup one indexed
query (a slow password hash would only add latency). The prefix is stored in clear to tell keys apart.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django import forms
from django.contrib import messages
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from crm_site.tenancy import requires_role
from customers.models import ApiKey

KEY_MARKER = "rpk"
# last_used_at is bookkeeping for the Settings page, not an audit log: write it at most this often.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(raw_key: str) -> str:
    """Return the hex SHA-256 digest under which a key is stored."""
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def create_api_key(workspace, name: str, created_by=None) -> tuple[ApiKey, str]:
    """Create a key for the workspace; return the stored key and the full secret (shown once, never stored)."""
    prefix = secrets.token_hex(4)
    raw_key = f"{KEY_MARKER}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        workspace=workspace, name=name.strip()[:100], prefix=f"{KEY_MARKER}_{prefix}", key_hash=hash_key(raw_key),
        created_by=created_by,
    )
    return api_key, raw_key


def find_api_key(raw_key: str) -> ApiKey | None:
    """Return the key (active or revoked) matching a presented secret, with its workspace, or None."""
    raw_key = (raw_key or "").strip()
    if not raw_key.startswith(f"{KEY_MARKER}_") or len(raw_key) > 200:
        return None
    return ApiKey.objects.select_related("workspace").filter(key_hash=hash_key(raw_key)).first()


def touch_api_key(api_key: ApiKey) -> None:
    """Record that the key was used now (at most one write per key and minute)."""
    now = timezone.now()
    ApiKey.objects.filter(pk=api_key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    ).update(last_used_at=now)


def revoke_api_key(api_key: ApiKey) -> bool:
    """Revoke the key at once; return False when it was already revoked."""
    return bool(ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()))


# --- Settings pages ---------------------------------------------------------------------------------


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=100, label="Name", help_text="What uses this key, e.g. “Shop backend” or “Nightly sync”."
    )


@requires_role("admin")
def api_keys(request, workspace_slug):
    """List the workspace's keys and create one; the new secret is shown on this page once."""
    workspace = request.workspace
    form = ApiKeyForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        api_key, new_key = create_api_key(workspace, form.cleaned_data["name"], created_by=request.user)
        messages.success(request, f"API key “{api_key.name}” created. Copy it now: it will not be shown again.")
        form = ApiKeyForm()
    keys = ApiKey.objects.filter(workspace=workspace).select_related("created_by")
    return render(
        request,
        "settings/api_keys.html",
        {"section": "settings", "form": form, "keys": keys, "new_key": new_key},
    )


@requires_role("admin")
def api_key_revoke(request, workspace_slug, key_id):
    """Revoke a key on POST; a GET (or another workspace's key, a 404) changes nothing."""
    api_key = get_object_or_404(ApiKey, pk=key_id, workspace=request.workspace)
    if request.method == "POST" and revoke_api_key(api_key):
        messages.success(request, f"API key “{api_key.name}” revoked. Requests using it now get 403.")
    return redirect("api_keys", workspace_slug=workspace_slug)
