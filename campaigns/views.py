"""Campaign pages: the list, creating campaigns (broadcast, recurring, journeys from templates), their steps,
going live / pause / resume / cancel, per-customer previews and test sends, the report, and the workspace's
sender identities and sending policy (admins).

Every view that takes an id looks the object up through the scoped manager before checking the method, so
another workspace's id is a 404 whatever the method. Writes need the marketer role (settings: admin).
"""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import patch_vary_headers

from campaigns import journeys, previews, transitions
from campaigns.forms import (
    CampaignForm,
    PreviewForm,
    SenderIdentityForm,
    SendingPolicyForm,
    StepForm,
    TestSendForm,
)
from campaigns.models import Campaign, CampaignStep, Message, SenderIdentity
from campaigns.outbox import sending_policy
from campaigns.rendering import RenderError
from campaigns.reports import Interval, campaign_report
from crm_site.models import Membership
from crm_site.tenancy import requires_role
from customers.models import Channel

CAMPAIGNS_PER_PAGE = 25


def _is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def _render(request, template_name, context, *, partial=None, status=200):
    """Render the page, or only its ``partial`` for an htmx request."""
    name = f"{template_name}#{partial}" if partial and _is_htmx(request) else template_name
    response = render(request, name, {"section": "campaigns", **context}, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _campaign(campaign_id) -> Campaign:
    return get_object_or_404(Campaign.objects.select_related("segment", "sender", "schedule__crontab"),
                             pk=campaign_id)


def _step(campaign: Campaign, step_id) -> CampaignStep:
    return get_object_or_404(CampaignStep.objects, pk=step_id, campaign=campaign)


def _to_detail(request, campaign: Campaign):
    return redirect("campaigns:detail", workspace_slug=request.workspace.slug, campaign_id=campaign.pk)


def _not_allowed_unless_post(request):
    return None if request.method == "POST" else HttpResponseNotAllowed(["POST"])


def _campaign_channel(campaign: Campaign) -> str:
    """The channel of the campaign's messages: its first step's, else e-mail."""
    return campaign.steps.order_by("position").values_list("channel", flat=True).first() or Channel.EMAIL


# --- The list ----------------------------------------------------------------------------------------------


def index(request, workspace_slug):
    """Campaigns, newest first, filtered by status and kind, one page at a time (a count and a page query)."""
    status = request.GET.get("status", "")
    kind = request.GET.get("kind", "")
    campaigns = (Campaign.objects.select_related("segment", "sender").annotate(step_count=Count("steps"))
                 .order_by("-created_at", "-pk"))
    if status in Campaign.Status.values:
        campaigns = campaigns.filter(status=status)
    if kind in Campaign.Kind.values:
        campaigns = campaigns.filter(kind=kind)
    page = Paginator(campaigns, CAMPAIGNS_PER_PAGE).get_page(request.GET.get("page"))
    filters = request.GET.copy()
    filters.pop("page", None)
    context = {
        "page": page, "campaigns": page.object_list, "status": status, "kind": kind,
        "statuses": Campaign.Status.choices, "kinds": Campaign.Kind.choices, "query_string": filters.urlencode(),
    }
    return _render(request, "campaigns/index.html", context, partial="results")


# --- Creating and editing ----------------------------------------------------------------------------------


def _campaign_form_page(request, form: CampaignForm, campaign: Campaign | None, status=200):
    return _render(request, "campaigns/form.html", {"form": form, "campaign": campaign}, status=status)


def _save_campaign(request, form: CampaignForm) -> Campaign | None:
    """Save the form's campaign, its steps' channel and a recurring schedule; None (form errors) when refused."""
    try:
        with transaction.atomic():
            campaign = form.save(commit=False)
            if not campaign.pk:
                campaign.created_by = request.user
            campaign.scheduled_at = (form.cleaned_data.get("scheduled_at")
                                     if campaign.kind == Campaign.Kind.BROADCAST else None)
            campaign.save()
            campaign.steps.exclude(channel=form.cleaned_data["channel"]).update(channel=form.cleaned_data["channel"])
            if campaign.kind == Campaign.Kind.RECURRING:
                transitions.set_recurrence(campaign, **form.crontab())
            else:
                transitions.drop_recurrence(campaign)
            return campaign
    except transitions.TransitionError as error:
        form.add_error(None, f"The schedule was not saved: {error}")
        return None


@requires_role("marketer")
def create(request, workspace_slug):
    """A new broadcast or recurring campaign (``?kind=``); after saving, its first message is written."""
    kind = request.GET.get("kind", Campaign.Kind.BROADCAST)
    initial = {"kind": kind if kind in Campaign.Kind.values else Campaign.Kind.BROADCAST,
               "sender": SenderIdentity.objects.filter(is_default=True).first()}
    form = CampaignForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        campaign = _save_campaign(request, form)
        if campaign is not None:
            messages.success(request, f"Created “{campaign.name}”. Now write its first message.")
            return redirect("campaigns:step_create", workspace_slug=workspace_slug, campaign_id=campaign.pk)
    status = 400 if request.method == "POST" else 200
    return _campaign_form_page(request, form, None, status)


@requires_role("marketer")
def journey_templates(request, workspace_slug):
    """The ready-made journeys; POST makes a draft journey from one and opens it."""
    if request.method == "POST":
        key = request.POST.get("template", "")
        if key not in journeys.JOURNEY_TEMPLATES:
            messages.error(request, "Choose one of the journey templates.")
            return redirect("campaigns:journey_templates", workspace_slug=workspace_slug)
        campaign = journeys.create_from_template(key, user=request.user)
        messages.success(request, f"Created the draft journey “{campaign.name}”: check its messages, then go live.")
        return _to_detail(request, campaign)
    return _render(request, "campaigns/journey_templates.html", {"templates": journeys.JOURNEY_TEMPLATES.values()})


@requires_role("marketer")
def edit(request, workspace_slug, campaign_id):
    campaign = _campaign(campaign_id)
    if not campaign.is_editable:
        messages.info(request, f"A {campaign.get_status_display().lower()} campaign cannot be changed"
                               f"{'; pause it first' if campaign.status == Campaign.Status.SENDING else ''}.")
        return _to_detail(request, campaign)
    form = CampaignForm(request.POST or None, instance=campaign, recurrence=transitions.recurrence(campaign))
    if request.method == "POST" and form.is_valid():
        saved = _save_campaign(request, form)
        if saved is not None:
            messages.success(request, f"Saved “{saved.name}”.")
            return _to_detail(request, saved)
    status = 400 if request.method == "POST" else 200
    return _campaign_form_page(request, form, campaign, status)


# --- A campaign's page ------------------------------------------------------------------------------------


def _team_addresses(request) -> list[str]:
    """The e-mail addresses of the workspace's members: the only places a test send may go."""
    addresses = (Membership.objects.filter(workspace=request.workspace).exclude(user__email="")
                 .order_by("user__email").values_list("user__email", flat=True).distinct())
    return list(addresses)


def _detail_context(request, campaign: Campaign, *, preview_form=None, preview=None, test_form=None) -> dict:
    steps = list(campaign.steps.order_by("position"))
    return {
        "campaign": campaign, "steps": steps, "problems": transitions.problems(campaign),
        "recurrence": transitions.recurrence(campaign), "channel": _campaign_channel(campaign),
        "preview_form": preview_form or PreviewForm(steps=steps),
        "preview": preview,
        "test_form": test_form or TestSendForm(steps=steps, team_addresses=_team_addresses(request),
                                               initial={"to_email": request.user.email}),
        "has_messages": campaign.has_messages,
    }


def detail(request, workspace_slug, campaign_id):
    """A campaign: its settings, messages, what stops it from going out, actions, preview and test send."""
    campaign = _campaign(campaign_id)
    return _render(request, "campaigns/detail.html", _detail_context(request, campaign))


def preview(request, workspace_slug, campaign_id):
    """A step rendered for a chosen customer (or sample values): the subject and body, or the error."""
    campaign = _campaign(campaign_id)
    steps = list(campaign.steps.order_by("position"))
    form = PreviewForm(request.GET or None, steps=steps)
    shown = None
    if form.is_valid():
        shown = previews.preview(form.chosen_step(), form.cleaned_data["customer"])
    status = 400 if form.is_bound and not form.is_valid() else 200
    context = _detail_context(request, campaign, preview_form=form, preview=shown)
    return _render(request, "campaigns/detail.html", context, partial="preview", status=status)


@requires_role("marketer")
def test_send(request, workspace_slug, campaign_id):
    """Mail a step's preview to a team member (never to customers, never through the outbox)."""
    campaign = _campaign(campaign_id)
    if refused := _not_allowed_unless_post(request):
        return refused
    steps = list(campaign.steps.order_by("position"))
    form = TestSendForm(request.POST, steps=steps, team_addresses=_team_addresses(request))
    if form.is_valid():
        to_email = form.cleaned_data["to_email"]
        try:
            previews.send_test(form.chosen_step(), to_email, form.cleaned_data["customer"])
        except RenderError as error:
            form.add_error(None, f"Not sent: {error}")
        except OSError as error:  # the mail server refused or is unreachable
            form.add_error(None, f"Not sent: the mail server did not accept it ({error}).")
        else:
            messages.success(request, f"Test message sent to {to_email}.")
            return _to_detail(request, campaign)
    context = _detail_context(request, campaign, test_form=form)
    return _render(request, "campaigns/detail.html", context, status=400)


# --- Steps -------------------------------------------------------------------------------------------------


def _steps_locked(request, campaign: Campaign) -> bool:
    if campaign.is_editable:
        return False
    messages.info(request, "Pause the campaign to change its messages." if campaign.status == Campaign.Status.SENDING
                  else f"A {campaign.get_status_display().lower()} campaign cannot be changed.")
    return True


def _step_form(request, campaign: Campaign, step: CampaignStep | None):
    """The form of a new step (``step`` None: it goes last) or of an existing one; a broken one re-renders."""
    if _steps_locked(request, campaign):
        return _to_detail(request, campaign)
    creating = step is None
    if creating:
        step = CampaignStep(tenant_id=campaign.tenant_id, campaign=campaign, channel=_campaign_channel(campaign))
    form = StepForm(request.POST or None, instance=step, channel=step.channel)
    if request.method == "POST" and form.is_valid():
        if creating:
            campaign.add_step(form.save(commit=False))
        else:
            form.save()
        messages.success(request, f"{'Added' if creating else 'Saved'} step {step.position}.")
        return _to_detail(request, campaign)
    status = 400 if request.method == "POST" else 200
    return _render(request, "campaigns/step_form.html",
                   {"campaign": campaign, "form": form, "step": None if creating else step, "channel": step.channel},
                   status=status)


@requires_role("marketer")
def step_create(request, workspace_slug, campaign_id):
    return _step_form(request, _campaign(campaign_id), None)


@requires_role("marketer")
def step_edit(request, workspace_slug, campaign_id, step_id):
    campaign = _campaign(campaign_id)
    return _step_form(request, campaign, _step(campaign, step_id))


@requires_role("marketer")
def step_delete(request, workspace_slug, campaign_id, step_id):
    campaign = _campaign(campaign_id)
    step = _step(campaign, step_id)
    if refused := _not_allowed_unless_post(request):
        return refused
    if _steps_locked(request, campaign):
        return _to_detail(request, campaign)
    if step.messages.exists():
        messages.error(request, f"Step {step.position} has messages in the outbox; removing it would erase what "
                                "the report counts. Edit its text instead.")
        return _to_detail(request, campaign)
    campaign.remove_step(step)
    messages.success(request, f"Removed step {step.position}.")
    return _to_detail(request, campaign)


@requires_role("marketer")
def step_move(request, workspace_slug, campaign_id, step_id):
    """Move a step one place earlier (``direction=up``) or later (``down``)."""
    campaign = _campaign(campaign_id)
    step = _step(campaign, step_id)
    if refused := _not_allowed_unless_post(request):
        return refused
    if _steps_locked(request, campaign):
        return _to_detail(request, campaign)
    if campaign.has_messages:
        messages.error(request, "This campaign has already sent messages, so its steps keep their order.")
        return _to_detail(request, campaign)
    campaign.move_step(step, -1 if request.POST.get("direction") == "up" else 1)
    return _to_detail(request, campaign)


# --- Going live, pausing, resuming, cancelling ----------------------------------------------------------------

ACTIONS = {
    "schedule": lambda campaign: transitions.schedule(campaign, at=campaign.scheduled_at),
    "pause": transitions.pause,
    "resume": transitions.resume,
    "cancel": transitions.cancel,
}
REFUSED = {"schedule": "Not scheduled", "pause": "Not paused", "resume": "Not resumed", "cancel": "Not cancelled"}


def _transition_words(action: str, campaign: Campaign, result) -> str:
    """What just happened, in the marketer's words."""
    if action == "pause":
        return "Paused: nothing more goes out until you resume. Waiting messages are kept."
    if action == "cancel":
        return f"Cancelled. {result} waiting message{'' if result == 1 else 's'} will not be sent."
    if campaign.kind == Campaign.Kind.JOURNEY:
        return "The journey is live: customers enter it when their lifecycle moment comes."
    if campaign.kind == Campaign.Kind.RECURRING:
        human = (transitions.recurrence(campaign) or {}).get("human", "")
        return f"Scheduled: it runs {human}." if human else "Scheduled."
    if campaign.status == Campaign.Status.SENDING:
        return "Resumed: sending carries on."
    if campaign.scheduled_at and campaign.scheduled_at > timezone.now() + dt.timedelta(minutes=1):
        return (f"Scheduled for {timezone.localtime(campaign.scheduled_at):%Y-%m-%d %H:%M} "
                f"({timezone.get_current_timezone_name()}).")
    return "Scheduled: it goes out within a minute."


@requires_role("marketer")
def transition(request, workspace_slug, campaign_id, action):
    """Schedule (go live), pause, resume or cancel; a refusal is shown in words on the campaign's page."""
    campaign = _campaign(campaign_id)
    if refused := _not_allowed_unless_post(request):
        return refused
    try:
        result = ACTIONS[action](campaign)
    except transitions.TransitionError as error:
        messages.error(request, f"{REFUSED[action]}: {error}")
        return _to_detail(request, campaign)
    messages.success(request, _transition_words(action, campaign, result))
    return _to_detail(request, campaign)


# --- Report ---------------------------------------------------------------------------------------------------


def report(request, workspace_slug, campaign_id):
    """What the campaign did; while it is sending, the numbers refresh in place (htmx polls ``#progress``)."""
    campaign = _campaign(campaign_id)
    numbers = campaign_report(campaign)
    reasons = dict(Message.SkipReason.choices)
    context = {
        "campaign": campaign, "report": numbers,
        "is_live": campaign.status in (Campaign.Status.SENDING, Campaign.Status.SCHEDULED),
        "rates": {name: 100 * numbers.rate(getattr(numbers, name))
                  for name in ("delivered", "opened", "clicked", "unsubscribed", "bounced")},
        "reasons": [(reasons.get(reason, reason or "other"), count)
                    for reason, count in sorted(numbers.not_sent_reasons.items(), key=lambda item: -item[1])],
        "treatment_rate": 100 * numbers.treatment.conversion_rate,
        "control_rate": 100 * numbers.control.conversion_rate,
        "uplift": _in_points(numbers.uplift),
        "revenue_uplift": numbers.revenue_uplift,
    }
    return _render(request, "campaigns/report.html", context, partial="progress")


def _in_points(interval: Interval | None) -> Interval | None:
    """A difference of two rates in percentage points."""
    if interval is None:
        return None
    return Interval(100 * interval.estimate, 100 * interval.low, 100 * interval.high)


# --- Settings (admins) ---------------------------------------------------------------------------------------


@requires_role("admin")
def senders(request, workspace_slug):
    """The workspace's sender identities, and a form for a new one."""
    form = SenderIdentityForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        _save_sender(form)
        messages.success(request, f"Added the sender “{form.instance.name}”.")
        return redirect("campaigns:senders", workspace_slug=workspace_slug)
    status = 400 if request.method == "POST" else 200
    return _render(request, "campaigns/senders.html",
                   {"section": "settings", "form": form, "senders": SenderIdentity.objects.all()}, status=status)


def _save_sender(form: SenderIdentityForm) -> SenderIdentity:
    with transaction.atomic():
        sender = form.save()
        if sender.is_default:
            SenderIdentity.objects.exclude(pk=sender.pk).filter(is_default=True).update(is_default=False)
    return sender


@requires_role("admin")
def sender_edit(request, workspace_slug, sender_id):
    sender = get_object_or_404(SenderIdentity.objects, pk=sender_id)
    form = SenderIdentityForm(request.POST or None, instance=sender)
    if request.method == "POST" and form.is_valid():
        _save_sender(form)
        messages.success(request, f"Saved the sender “{sender.name}”.")
        return redirect("campaigns:senders", workspace_slug=workspace_slug)
    status = 400 if request.method == "POST" else 200
    return _render(request, "campaigns/sender_form.html", {"section": "settings", "form": form, "sender": sender},
                   status=status)


@requires_role("admin")
def sending_policy_edit(request, workspace_slug):
    """The frequency cap (N messages per rolling window) and quiet hours of the workspace."""
    form = SendingPolicyForm(request.POST or None, instance=sending_policy())
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Sending policy saved.")
        return redirect("campaigns:sending_policy", workspace_slug=workspace_slug)
    status = 400 if request.method == "POST" else 200
    return _render(request, "campaigns/sending_policy.html", {"section": "settings", "form": form}, status=status)
