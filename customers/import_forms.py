"""Forms of the CSV import: the upload, and the column mapping with its options."""

from __future__ import annotations

import phonenumbers
from django import forms
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from customers import importing
from customers.models import ImportRun


class UploadSizeLimit(FileUploadHandler):
    """Stop reading an upload as soon as it passes the limit, so a huge file is refused early, not stored."""

    def __init__(self, request=None, limit: int = 0):
        super().__init__(request)
        self.limit = limit
        self.exceeded = False

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # The multipart envelope adds a little; a body far beyond the limit cannot hold an acceptable file.
        if content_length and content_length > self.limit + 1024 * 1024:
            self.exceeded = True

    def receive_data_chunk(self, raw_data, start):
        if self.exceeded or start + len(raw_data) > self.limit:
            self.exceeded = True
            raise StopUpload(connection_reset=False)  # read the rest, so the browser gets the message
        return raw_data

    def file_complete(self, file_size):
        return None


class UploadForm(forms.Form):
    kind = forms.ChoiceField(
        label="What does the file contain?", choices=ImportRun.Kind.choices, initial=ImportRun.Kind.CUSTOMERS,
        widget=forms.RadioSelect,
    )
    file = forms.FileField(
        label="CSV file",
        error_messages={"empty": "The file is empty."},
        help_text="A header row, then one row per customer, order line or consent event. "
                  "UTF-8 (with or without BOM), UTF-16 or Windows-1252; comma, semicolon or tab separated.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.txt,.tsv,text/csv", "class": "form-control"}),
    )


def region_choices() -> list[tuple[str, str]]:
    """Return (region code, label) choices for the default country of phone numbers."""
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    return [("", "None: numbers must start with + and a country code")] + [
        (code, f"{code} (+{phonenumbers.country_code_for_region(code)})") for code in regions
    ]


class MappingForm(forms.Form):
    """One choice per column of the file (``column_<n>``), the error mode and parsing options."""

    mode = forms.ChoiceField(label="If a row has an error", choices=ImportRun.Mode.choices,
                             initial=ImportRun.Mode.REJECT, widget=forms.RadioSelect)
    day_first = forms.TypedChoiceField(
        label="Dates like 05/06/2024 are", coerce=lambda value: value == "1", initial="1",
        choices=[("1", "Day first: 5 June 2024"), ("0", "Month first: May 6, 2024")],
        widget=forms.Select(attrs={"class": "form-select"}),
    )
    default_region = forms.ChoiceField(
        label="Country of phone numbers without +", required=False,
        widget=forms.Select(attrs={"class": "form-select"}),
    )
    default_channel = forms.ChoiceField(
        label="Channel when the file has none", required=False,
        choices=[("", "—"), ("email", "E-mail"), ("sms", "SMS")],
        widget=forms.Select(attrs={"class": "form-select"}),
    )

    def __init__(self, *args, run: ImportRun, **kwargs):
        super().__init__(*args, **kwargs)
        self.run = run
        self.fields["default_region"].choices = region_choices()
        if run.kind != ImportRun.Kind.CONSENT:
            del self.fields["default_channel"]
        choices = importing.field_choices(run.kind)
        self.column_fields = []
        for index, column in enumerate(run.header):
            name = f"column_{index}"
            self.fields[name] = forms.ChoiceField(
                label=column, choices=choices, required=False, initial=run.mapping.get(column, ""),
                widget=forms.Select(attrs={"class": "form-select form-select-sm", "aria-label": f"Field for column {column}"}),
            )
            self.column_fields.append(self[name])
        for option in ("mode", "day_first", "default_region", "default_channel"):
            if option in self.fields and option in run.options:
                value = run.options[option]
                self.fields[option].initial = ("1" if value else "0") if option == "day_first" else value
        if run.mode:
            self.fields["mode"].initial = run.mode

    def clean(self):
        cleaned = super().clean()
        mapping = self.mapping()
        for problem in importing.validate_mapping(self.run.kind, mapping, self.options()):
            self.add_error(None, problem)
        return cleaned

    def mapping(self) -> dict[str, str]:
        """Return {column name: field name or ''} from the submitted choices."""
        data = getattr(self, "cleaned_data", {})
        return {column: data.get(f"column_{index}", "") or "" for index, column in enumerate(self.run.header)}

    def options(self) -> dict:
        data = getattr(self, "cleaned_data", {})
        return {
            "day_first": bool(data.get("day_first", True)),
            "default_region": data.get("default_region", ""),
            "default_channel": data.get("default_channel", ""),
        }
