"""Forms of the campaign pages: a campaign's settings and schedule, its steps, previews and test sends, and the
workspace's sender identities and sending policy.

Querysets of tenant-owned rows are set in ``__init__`` (the scoped managers only answer inside a request's
workspace scope). Template checks use the same sandbox as sending, so what saves here also renders there.
"""

from __future__ import annotations

import zoneinfo

from django import forms
from django.utils import timezone

from campaigns.models import Campaign, CampaignStep, SenderIdentity, SendingPolicy, Trigger
from campaigns.rendering import TemplateRejected, validate_template
from customers.models import Channel, Customer
from segments.models import Segment

TIME_ZONE_CHOICES = [(name, name) for name in sorted(zoneinfo.available_timezones())]
CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


class CampaignForm(forms.ModelForm):
    """A campaign's settings: audience (segment and/or lifecycle trigger), channel, sender, holdout, schedule.

    ``channel`` is the channel of every step. A broadcast's time is ``scheduled_at``; a recurring campaign's
    crontab fields end up in its django-celery-beat entry (transitions.set_recurrence), not on the model.
    """

    # Querysets come in __init__: the scoped managers answer only inside the request's workspace.
    segment = forms.ModelChoiceField(queryset=None, required=False, label="Audience segment",
                                     help_text=Campaign._meta.get_field("segment").help_text)
    sender = forms.ModelChoiceField(queryset=None, required=False, label="Sender identity")
    channel = forms.ChoiceField(choices=Channel.choices, initial=Channel.EMAIL,
                                help_text="Every message of the campaign goes out on this channel.")
    scheduled_at = forms.DateTimeField(
        required=False, label="Send at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Broadcasts only, in the workspace's time zone. Leave empty to send as soon as you schedule it.",
    )
    minute = forms.CharField(max_length=60, initial="0", required=False)
    hour = forms.CharField(max_length=60, initial="9", required=False)
    day_of_week = forms.CharField(max_length=64, initial="*", required=False, label="Day of week",
                                  help_text="0-6 (Sunday is 0), e.g. 1 for Mondays or 1-5 for weekdays.")
    day_of_month = forms.CharField(max_length=124, initial="*", required=False, label="Day of month")
    month_of_year = forms.CharField(max_length=64, initial="*", required=False, label="Month")
    time_zone = forms.ChoiceField(choices=TIME_ZONE_CHOICES, required=False, label="Time zone",
                                  help_text="New recurring campaigns start in the workspace's zone.")

    class Meta:
        model = Campaign
        fields = ["name", "description", "kind", "segment", "trigger", "sender", "priority", "holdout_percent",
                  "attribution_window_days", "exit_on_purchase", "issues_reward_codes", "reward_code_prefix"]
        labels = {"segment": "Audience segment", "trigger": "Lifecycle trigger", "sender": "Sender identity",
                  "holdout_percent": "Holdout (%)", "attribution_window_days": "Attribution window (days)"}
        help_texts = {"trigger": "Journeys only: the lifecycle moment that enters a customer into the journey."}

    def __init__(self, *args, recurrence: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # The request runs in the workspace's zone (WorkspaceMiddleware): the send time is read in it, so say so.
        zone_name = timezone.get_current_timezone_name()
        self.fields["scheduled_at"].label = f"Send at ({zone_name})"
        self.fields["time_zone"].initial = zone_name
        self.fields["segment"].queryset = Segment.objects.order_by("-is_builtin", "name")
        self.fields["segment"].empty_label = "Everyone (no segment)"
        self.fields["sender"].queryset = SenderIdentity.objects.all()
        self.fields["trigger"].choices = [("", "No trigger")] + list(Trigger.choices)
        campaign = self.instance
        if campaign.pk:
            first_channel = campaign.steps.order_by("position").values_list("channel", flat=True).first()
            self.initial.setdefault("channel", first_channel or Channel.EMAIL)
            if campaign.scheduled_at:
                self.initial.setdefault("scheduled_at", timezone.localtime(campaign.scheduled_at))
        for name, value in (recurrence or {}).items():
            if name in self.fields:
                self.initial.setdefault(name, value)

    def clean_scheduled_at(self):
        at = self.cleaned_data.get("scheduled_at")
        if at and at < timezone.now() and "scheduled_at" in self.changed_data:
            raise forms.ValidationError("Pick a time in the future, or leave it empty to send when you schedule it.")
        return at

    def clean(self):
        cleaned = super().clean()
        kind = cleaned.get("kind")
        if kind == Campaign.Kind.JOURNEY and not cleaned.get("trigger") and "trigger" not in self.errors:
            self.add_error("trigger", "A journey starts on a lifecycle moment: choose one.")
        if kind and kind != Campaign.Kind.JOURNEY and cleaned.get("trigger"):
            self.add_error("trigger", "Only journeys start on a lifecycle moment; use a segment as the audience.")
        if (kind == Campaign.Kind.BROADCAST and self.instance.status == Campaign.Status.SCHEDULED
                and not cleaned.get("scheduled_at") and "scheduled_at" not in self.errors):
            self.add_error("scheduled_at", "A scheduled broadcast needs its time; pause it to hold it back.")
        if kind == Campaign.Kind.RECURRING:
            for name in CRONTAB_FIELDS:
                if not (cleaned.get(name) or "").strip():
                    self.add_error(name, "Needed for a recurring campaign (* means every).")
        if cleaned.get("issues_reward_codes") and not (cleaned.get("reward_code_prefix") or "").strip():
            self.add_error("reward_code_prefix", "Reward codes need a prefix, e.g. THANKS.")
        return cleaned

    def crontab(self) -> dict:
        """The recurrence fields as transitions.set_recurrence takes them."""
        values = {name: self.cleaned_data[name].strip() for name in CRONTAB_FIELDS}
        return values | {"time_zone": self.cleaned_data.get("time_zone") or timezone.get_current_timezone_name()}


def _check_template(source: str, **options) -> None:
    try:
        validate_template(source, **options)
    except TemplateRejected as error:
        raise forms.ValidationError(str(error)) from None


class StepForm(forms.ModelForm):
    """One message of a campaign: its delay, subject and body, checked by the sending sandbox."""

    class Meta:
        model = CampaignStep
        fields = ["delay_days", "delay_hours", "subject", "body", "body_format"]
        widgets = {"body": forms.Textarea(attrs={"rows": 10, "class": "font-monospace"})}
        labels = {"delay_days": "Delay (days)", "delay_hours": "and hours"}
        help_texts = {
            "subject": "E-mail only. Personalise with {{ first_name }}, {{ workspace_name }}, …",
            "body": "Variables: {{ first_name }}, {{ last_purchase.product }}, {{ products }}, {{ reward_code }}, "
                    "{{ links.unsubscribe }}; conditions with {% if %} … {% endif %}.",
        }

    def __init__(self, *args, channel: str = Channel.EMAIL, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel = channel
        if channel == Channel.SMS:
            del self.fields["subject"], self.fields["body_format"]

    def clean_subject(self):
        subject = self.cleaned_data.get("subject", "")
        if self.channel == Channel.EMAIL and not subject.strip():
            raise forms.ValidationError("An e-mail needs a subject.")
        _check_template(subject, subject=True)
        return subject

    def clean(self):
        cleaned = super().clean()
        body = cleaned.get("body")
        if body:
            try:
                validate_template(body, html=cleaned.get("body_format") == CampaignStep.Format.HTML)
            except TemplateRejected as error:
                self.add_error("body", str(error))
        return cleaned


def find_customer(query: str) -> Customer | None:
    """Return the customer a marketer typed: an e-mail address, a shop customer id or Rapport's id."""
    query = query.strip()
    if not query:
        return None
    customers = Customer.objects.filter(erased_at__isnull=True)
    found = customers.filter(email__iexact=query).order_by("pk").first() if "@" in query else None
    found = found or customers.filter(external_id=query).order_by("pk").first()
    if found is None and query.isdigit() and len(query) < 19:
        found = customers.filter(pk=int(query)).first()
    return found


class PreviewForm(forms.Form):
    """Which step to preview, for which customer (sample values when left empty)."""

    step = forms.TypedChoiceField(coerce=int)
    customer = forms.CharField(required=False, max_length=254, label="Customer",
                               help_text="E-mail, shop customer id or Rapport id; empty for sample values.")

    def __init__(self, *args, steps, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = {step.pk: step for step in steps}
        self.fields["step"].choices = [(step.pk, f"Step {step.position}: {step.subject or step.body[:40]}")
                                       for step in steps]

    def clean_customer(self):
        query = self.cleaned_data.get("customer", "")
        if not query.strip():
            return None
        customer = find_customer(query)
        if customer is None:
            raise forms.ValidationError(f"No customer “{query.strip()}” in this workspace.")
        return customer

    def chosen_step(self) -> CampaignStep:
        return self.steps[self.cleaned_data["step"]]


class TestSendForm(PreviewForm):
    """A preview mailed to a team member: only addresses of the workspace's members, never anyone else."""

    to_email = forms.ChoiceField(label="Send to")

    def __init__(self, *args, team_addresses, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["to_email"].choices = [(address, address) for address in team_addresses]
        self.fields["step"].choices = [(pk, label) for pk, label in self.fields["step"].choices
                                       if self.steps[pk].channel == Channel.EMAIL]


class SenderIdentityForm(forms.ModelForm):
    class Meta:
        model = SenderIdentity
        fields = ["name", "from_name", "from_email", "reply_to", "sms_from", "is_default"]
        labels = {"from_email": "From address", "reply_to": "Reply-To address", "sms_from": "SMS sender",
                  "is_default": "Default sender for new campaigns"}

    def clean_from_email(self):
        # The unique constraint includes the tenant, which the form does not carry: checked here, in scope.
        address = self.cleaned_data["from_email"]
        taken = SenderIdentity.objects.filter(from_email__iexact=address)
        if self.instance.pk:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise forms.ValidationError("Another sender identity already uses this address.")
        return address


class SendingPolicyForm(forms.ModelForm):
    class Meta:
        model = SendingPolicy
        fields = ["frequency_cap", "frequency_window_days", "quiet_hours_enabled", "quiet_hours_start",
                  "quiet_hours_end"]
        labels = {"frequency_cap": "At most this many marketing messages per customer",
                  "frequency_window_days": "in a rolling window of (days)",
                  "quiet_hours_enabled": "Hold messages back during quiet hours",
                  "quiet_hours_start": "Quiet hours start", "quiet_hours_end": "Quiet hours end"}
        widgets = {"quiet_hours_start": forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
                   "quiet_hours_end": forms.TimeInput(attrs={"type": "time"}, format="%H:%M")}

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("quiet_hours_start"), cleaned.get("quiet_hours_end")
        if cleaned.get("quiet_hours_enabled") and start and end and start == end:
            self.add_error("quiet_hours_end", "Quiet hours that start and end at the same time are none at all; "
                                              "untick quiet hours instead.")
        return cleaned
