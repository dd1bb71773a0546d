"""Public pages of a workspace (no login): subscribe with double opt-in, preference centre, unsubscribe, export.

URLs live under ``/p/<public_slug>/``. The kwarg is deliberately not ``workspace_slug``: WorkspaceMiddleware
would then demand a signed-in member. ``public_page`` resolves the workspace and runs the view in its
tenant scope instead; customers are identified only by signed tokens (``customers.public_links``).

Unsubscribing follows RFC 8058: a POST whose body carries ``List-Unsubscribe=One-Click`` unsubscribes
(no CSRF token: mail providers post it without a session); a GET only shows a page with a button, because
link scanners fetch every URL in a mail.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import zoneinfo

from django import forms
from django.contrib import messages
from django.core.cache import cache
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from crm_site.accounts import client_address
from crm_site.models import Workspace
from crm_site.tenancy import tenant_scope, workspace_time_zone
from customers import consent, gdpr, public_links
from customers.models import Channel, ConsentEvent, Customer
from customers.normalize import InvalidValue, normalize_email
from customers.public_links import InvalidLink

# The consent text shown on the subscribe form, by version. A new text gets a new version (never edit
# one in place): each consent event records the version the customer agreed to.
CONSENT_WORDING = {
    "email-2025-01": (
        "Yes, I would like to receive news and offers from {workspace} by e-mail. "
        "I can unsubscribe at any time with the link in every e-mail."
    ),
}
CURRENT_WORDING_VERSION = "email-2025-01"
PAUSE_CHOICES = [(0, "No pause"), (2, "2 weeks"), (4, "4 weeks"), (8, "8 weeks"), (12, "12 weeks")]

SUBSCRIBE_LIMIT_PER_ADDRESS = (20, 3600)  # requests per client address per hour
SUBSCRIBE_LIMIT_PER_EMAIL = (3, 3600)  # confirmation mails per e-mail address per hour
EXPORT_MAIL_INTERVAL = 600  # seconds between two export mails for one customer


def public_page(view):
    """Resolve ``public_slug`` to an active workspace, run the view in its scope; bad links get a 404 page."""

    @functools.wraps(view)
    def wrapped(request, public_slug, **kwargs):
        workspace = Workspace.objects.filter(slug=public_slug, is_active=True).first()
        if workspace is None:
            raise Http404("No such workspace")
        request.public_workspace = workspace
        try:
            with tenant_scope(workspace):
                response = view(request, workspace, **kwargs)
                if response.status_code >= 500:
                    transaction.set_rollback(True)
                return response
        except InvalidLink as invalid:
            return render(request, "public/invalid_link.html", {"public_workspace": workspace, "reason": str(invalid)},
                          status=404)

    return wrapped


def _over_limit(key: str, limit: tuple[int, int]) -> bool:
    count_limit, window = limit
    cache.add(key, 0, window)
    try:
        return cache.incr(key) > count_limit
    except ValueError:
        cache.set(key, 1, window)
        return False


def _customer(workspace, values: dict) -> Customer:
    customer = Customer.objects.filter(pk=values.get("c")).first()
    if customer is None:
        raise InvalidLink("This link is no longer valid.")
    return customer


def mask_address(address: str) -> str:
    """Return an address shown on a public page without revealing it whole: 'a•••@example.org', '+49•••56'."""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}•••@{domain}"
    return f"{address[:3]}•••{address[-2:]}" if len(address) > 5 else "•••"


# --- Subscribe with double opt-in -------------------------------------------------------------------------


class SubscribeForm(forms.Form):
    email = forms.CharField(max_length=254, label="E-mail address")
    first_name = forms.CharField(max_length=100, required=False, label="First name (optional)")
    agree = forms.BooleanField(required=True, label="")
    # A field people do not see; bots fill it in.
    website = forms.CharField(required=False, label="Leave this empty")

    def clean_email(self):
        try:
            return normalize_email(self.cleaned_data["email"])
        except InvalidValue as invalid:
            raise forms.ValidationError(str(invalid))


@public_page
def subscribe(request, workspace):
    wording = CONSENT_WORDING[CURRENT_WORDING_VERSION].format(workspace=workspace.name)
    form = SubscribeForm(request.POST or None)
    context = {"public_workspace": workspace, "form": form, "wording": wording}
    if request.method != "POST":
        return render(request, "public/subscribe.html", context)
    address = client_address(request)
    if _over_limit(f"subscribe:addr:{workspace.pk}:{address}", SUBSCRIBE_LIMIT_PER_ADDRESS):
        form.add_error(None, "Too many requests from your network. Please try again in an hour.")
        return render(request, "public/subscribe.html", context, status=429)
    if not form.is_valid():
        return render(request, "public/subscribe.html", context, status=400)
    email = form.cleaned_data["email"]
    if form.cleaned_data["website"]:
        return render(request, "public/subscribe_sent.html", context)  # a bot: look the same, send nothing
    if not _over_limit(f"subscribe:email:{workspace.pk}:{email}", SUBSCRIBE_LIMIT_PER_EMAIL):
        token = public_links.make_token(
            "confirm", workspace.pk, e=email, n=form.cleaned_data["first_name"][:100], v=CURRENT_WORDING_VERSION,
            ip=address, ua=request.headers.get("User-Agent", "")[:400], t=timezone.now().isoformat(),
        )
        link = public_links.confirmation_url(workspace, token)
        send_mail(
            f"Please confirm your subscription to {workspace.name}",
            f"Hello,\n\nsomeone (hopefully you) asked to receive e-mails from {workspace.name} at this address.\n\n"
            f"To confirm, open this link and press the button:\n{link}\n\n"
            "The link works for 7 days. If you did not ask for this, ignore this e-mail: nothing happens.\n",
            None,
            [email],
        )
    # The same answer whether or not a mail went out, so the form reveals nothing about an address.
    return render(request, "public/subscribe_sent.html", context)


@public_page
def confirm(request, workspace, token):
    """GET shows what is being confirmed and a button; the POST records the confirmed consent."""
    values = public_links.read_token("confirm", token, workspace.pk)
    requested_at = dt.datetime.fromisoformat(values["t"])
    wording = CONSENT_WORDING.get(values["v"], "").format(workspace=workspace.name)
    context = {"public_workspace": workspace, "email": values["e"], "wording": wording}
    if request.method != "POST":
        return render(request, "public/confirm.html", context)
    customer, _created = Customer.objects.get_or_create(
        email=values["e"], defaults={"first_name": values.get("n", ""), "first_seen_at": requested_at}
    )
    already = ConsentEvent.objects.filter(
        customer=customer, channel=Channel.EMAIL, method="double_opt_in", occurred_at=requested_at
    ).exists()
    if not already:
        consent.record_consent(
            customer, Channel.EMAIL, ConsentEvent.Action.GRANT, "double_opt_in",
            occurred_at=requested_at, confirmed_at=timezone.now(), ip_address=values.get("ip") or None,
            user_agent=values.get("ua", ""), wording_version=values["v"],
            source=f"subscribe form; confirmed from {client_address(request) or 'unknown address'}",
        )
    context.update(customer=customer, preference_url=public_links.preference_url(customer), already=already)
    return render(request, "public/confirmed.html", context)


# --- Preference centre --------------------------------------------------------------------------------------


class PreferencesForm(forms.Form):
    email = forms.BooleanField(required=False, label="E-mails with news and offers")
    sms = forms.BooleanField(required=False, label="Text messages (SMS) with news and offers")
    pause_weeks = forms.TypedChoiceField(choices=PAUSE_CHOICES, coerce=int, required=False, empty_value=0,
                                         label="Pause all messages for")


def _channels(customer: Customer) -> list[dict]:
    suppressed = {s.channel: s for s in consent.suppressions_for(customer)}
    rows = []
    for channel, field in consent.ADDRESS_FIELD.items():
        address = getattr(customer, field)
        if not address:
            continue
        suppression = suppressed.get(channel)
        rows.append({
            "channel": channel,
            "label": Channel(channel).label,
            "address": mask_address(address),
            "opted_in": getattr(customer, consent.OPT_IN_FIELD[channel]),
            "blocked": suppression is not None and suppression.reason not in consent.SELF_SERVICE_LIFTABLE,
        })
    return rows


def customer_time_zone(customer: Customer, workspace: Workspace) -> zoneinfo.ZoneInfo:
    """Return the customer's own time zone, else the workspace's (an empty or unknown name never fails a page)."""
    try:
        return zoneinfo.ZoneInfo(customer.time_zone) if customer.time_zone else workspace_time_zone(workspace)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return workspace_time_zone(workspace)


@public_page
def preferences(request, workspace, token):
    """Show and change consent per channel, pause, and request a copy of one's data.

    Dates on the page and in its messages ("paused until") are the customer's own calendar days.
    """
    customer = _customer(workspace, public_links.read_token("preferences", token, workspace.pk))
    if customer.erased_at is not None:
        return render(request, "public/erased.html", {"public_workspace": workspace})
    with timezone.override(customer_time_zone(customer, workspace)):
        return _preferences(request, workspace, customer)


def _preferences(request, workspace, customer: Customer):
    channels = _channels(customer)
    if request.method == "POST" and request.POST.get("action") == "export":
        return _send_export_link(request, workspace, customer)
    initial = {row["channel"]: row["opted_in"] for row in channels}
    form = PreferencesForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        _apply_preferences(request, customer, channels, form.cleaned_data)
        return redirect(request.path)
    context = {
        "public_workspace": workspace,
        "form": form,
        "channels": channels,
        "paused_until": consent.paused_until(customer),
    }
    return render(request, "public/preferences.html", context, status=400 if form.errors else 200)


def _apply_preferences(request, customer: Customer, channels: list[dict], choices: dict) -> None:
    details = {"ip_address": client_address(request) or None, "user_agent": request.headers.get("User-Agent", ""),
               "source": "preference centre"}
    for row in channels:
        channel, wanted = row["channel"], choices.get(row["channel"], False)
        if wanted and not row["opted_in"]:
            # The link reached the e-mail address, which proves it is theirs: a confirmed grant. A phone number
            # is not proven by an e-mail link, so an SMS grant does not lift an SMS unsubscribe.
            confirmed = timezone.now() if channel == Channel.EMAIL else None
            consent.record_consent(customer, channel, ConsentEvent.Action.GRANT, "preference_centre",
                                   confirmed_at=confirmed, **details)
            if not getattr(customer, consent.OPT_IN_FIELD[channel]):
                messages.warning(request, f"We cannot send {row['label']} messages to {row['address']}: earlier "
                                          "messages could not be delivered. Please contact us.")
            else:
                messages.success(request, f"{row['label']} messages are on.")
        elif not wanted and row["opted_in"]:
            consent.unsubscribe(customer, channel, method="preference_centre", **details)
            messages.success(request, f"{row['label']} messages are off.")
    weeks = choices.get("pause_weeks") or 0
    if weeks:
        until = timezone.now() + dt.timedelta(weeks=weeks)
        consent.pause_messages(customer, until)
        messages.success(request, f"Messages are paused until {timezone.localtime(until):%-d %B %Y}.")
    elif request.POST.get("resume") and consent.resume_messages(customer):
        messages.success(request, "Messages are no longer paused.")


def _send_export_link(request, workspace, customer: Customer):
    if not customer.email:
        messages.error(request, "We have no e-mail address to send your data to. Please contact us.")
    elif _over_limit(f"export-mail:{workspace.pk}:{customer.pk}", (1, EXPORT_MAIL_INTERVAL)):
        messages.info(request, "We sent you a link a few minutes ago. Please check your inbox.")
    else:
        send_mail(
            f"Your data at {workspace.name}",
            f"Hello,\n\nyou asked for a copy of the data {workspace.name} keeps about you.\n\n"
            f"Download it (JSON) here:\n{public_links.export_url(customer)}\n\nThe link works for 7 days.\n",
            None,
            [customer.email],
        )
        messages.success(request, f"We sent a download link to {mask_address(customer.email)}.")
    return redirect(request.path)


# --- Unsubscribe (RFC 8058) and export download ----------------------------------------------------------


@csrf_exempt
@public_page
def unsubscribe(request, workspace, token):
    """GET: a page with a button, never unsubscribing. POST with List-Unsubscribe=One-Click: unsubscribe."""
    values = public_links.read_token("unsubscribe", token, workspace.pk)
    customer = _customer(workspace, values)
    channel = values.get("ch", Channel.EMAIL)
    if channel not in consent.ADDRESS_FIELD:
        raise InvalidLink("This link is not valid.")
    address = consent.customer_address(customer, channel)
    context = {"public_workspace": workspace, "channel_label": Channel(channel).label,
               "address": mask_address(address) if address else "", "token": token,
               "preference_url": public_links.preference_url(customer)}
    if request.method != "POST":
        return render(request, "public/unsubscribe.html", context)
    if request.POST.get("List-Unsubscribe") != "One-Click":
        return render(request, "public/unsubscribe.html", {**context, "bad_request": True}, status=400)
    already = not getattr(customer, consent.OPT_IN_FIELD[channel]) and (
        not address or consent.is_suppressed(channel, address)
    )
    if not already and customer.erased_at is None:
        method = "unsubscribe_page" if request.POST.get("via") == "page" else "list_unsubscribe"
        consent.unsubscribe(customer, channel, method=method, ip_address=client_address(request) or None,
                            user_agent=request.headers.get("User-Agent", ""), source="unsubscribe link")
    return render(request, "public/unsubscribed.html", context)


@public_page
def export(request, workspace, token):
    """Download the customer's data as a JSON file (link from the export e-mail)."""
    customer = _customer(workspace, public_links.read_token("export", token, workspace.pk))
    document = gdpr.export_customer(customer)
    response = HttpResponse(json.dumps(document, cls=DjangoJSONEncoder, indent=2), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{workspace.slug}-my-data.json"'
    response["Cache-Control"] = "no-store"
    return response

