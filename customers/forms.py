"""Forms of the customer pages: the list's search and filters, create/edit of a customer, and notes."""

import re
import zoneinfo

from django import forms
from django.core.exceptions import ValidationError

from customers import listing, normalize
from customers.models import Customer, Interaction

_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


class CustomerListForm(forms.Form):
    """Search, registered filters and sort of the customer list; invalid fields are reported and ignored."""

    q = forms.CharField(
        label="Search", required=False, max_length=listing.MAX_SEARCH_LENGTH,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Name, e-mail, phone or id",
                                      "autocomplete": "off"}),
    )
    sort = forms.ChoiceField(label="Sort by", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["sort"].choices = listing.sort_choices()
        for list_filter in listing.list_filters():
            self.fields.update(list_filter.make_fields())
        for name, form_field in self.fields.items():
            css = "form-select form-select-sm" if isinstance(form_field.widget, forms.Select) else "form-control form-control-sm"
            if name not in ("q", "sort"):
                css += " list-filter"  # the list reloads when one of these changes (hx-trigger)
            form_field.widget.attrs.setdefault("class", css)

    def values(self) -> dict:
        """Return the cleaned values of the valid fields (an invalid filter is ignored, its error shown)."""
        if not self.is_bound:
            return {}
        self.is_valid()
        return dict(self.cleaned_data)


def _normalized(normalizer, raw: str) -> str:
    """Return ``normalizer(raw)`` for a filled-in value ("" for a blank one), its complaint as a form error."""
    if not raw.strip():
        return ""
    try:
        return normalizer(raw)
    except normalize.InvalidValue as error:
        raise ValidationError(str(error).capitalize() + ".", code="invalid")


class CustomerForm(forms.ModelForm):
    """Create or edit a customer's profile; consent is not edited here (it is a ledger of events)."""

    # Wider than the stored E.164 value: people type spaces and brackets, which normalisation drops.
    phone = forms.CharField(label="Phone", required=False, max_length=40,
                            help_text="International format, e.g. +49 30 123456.")

    class Meta:
        model = Customer
        fields = ["first_name", "last_name", "email", "phone", "external_id", "time_zone", "locale"]
        labels = {"email": "E-mail", "external_id": "External id", "time_zone": "Time zone"}
        help_texts = {
            "time_zone": "IANA name such as Europe/Berlin; the workspace's when blank.",
            "locale": "Language tag such as de or en-GB.",
        }

    def clean_email(self):
        email = _normalized(normalize.normalize_email, self.cleaned_data.get("email") or "")
        if email:
            duplicate = Customer.objects.filter(email=email).exclude(pk=self.instance.pk)
            if duplicate.exists():
                raise ValidationError("Another customer of this workspace already has this e-mail address.",
                                      code="duplicate_email")
        return email

    def clean_phone(self):
        # Without a country code the number is refused rather than guessed (a workspace has no home country).
        return _normalized(normalize.normalize_phone, self.cleaned_data.get("phone") or "")

    def clean_external_id(self):
        external_id = (self.cleaned_data.get("external_id") or "").strip()
        if external_id and Customer.objects.filter(external_id=external_id).exclude(pk=self.instance.pk).exists():
            raise ValidationError("Another customer of this workspace already has this external id.",
                                  code="duplicate_external_id")
        return external_id

    def clean_time_zone(self):
        name = (self.cleaned_data.get("time_zone") or "").strip()
        if name and name not in zoneinfo.available_timezones():
            raise ValidationError("Unknown time zone: use an IANA name such as Europe/Berlin.", code="invalid_time_zone")
        return name

    def clean_locale(self):
        locale = (self.cleaned_data.get("locale") or "").strip()
        if locale and not _LOCALE.match(locale):
            raise ValidationError("Enter a language tag such as de or en-GB.", code="invalid_locale")
        return locale

    def clean(self):
        cleaned = super().clean()
        identifying = ("first_name", "last_name", "email", "phone", "external_id")
        if not self.errors and not any(cleaned.get(name) for name in identifying):
            raise ValidationError("Give at least a name, an e-mail address, a phone number or an external id.",
                                  code="empty_customer")
        return cleaned


class NoteForm(forms.Form):
    """A note on a customer's timeline."""

    text = forms.CharField(label="Note", max_length=2000, widget=forms.Textarea(attrs={"rows": 3}),
                           error_messages={"required": "Write the note first."})

    def save(self, customer: Customer, author) -> Interaction:
        """Return the note, added to the customer's timeline with its author."""
        text = self.cleaned_data["text"]
        summary = text if len(text) <= 300 else text[:299] + "…"
        return Interaction.objects.create(
            customer=customer, kind=Interaction.Kind.NOTE, summary=summary, details={"text": text}, author=author
        )
