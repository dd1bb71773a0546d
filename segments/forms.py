from django import forms

from segments.models import Segment
from segments.snapshots import MAX_UPLOAD_LINES

MAX_UPLOAD_BYTES = 10 * 1024 * 1024


class SegmentForm(forms.ModelForm):
    """Name, description and kind of a segment; its rules come from the builder tree."""

    class Meta:
        model = Segment
        fields = ["name", "description", "kind"]
        widgets = {
            "name": forms.TextInput(attrs={"class": "form-control", "placeholder": "e.g. Lapsed coffee lovers"}),
            "description": forms.Textarea(attrs={"class": "form-control", "rows": 2}),
            "kind": forms.RadioSelect,
        }
        help_texts = {"kind": "Dynamic segments are re-evaluated whenever they are used; frozen ones keep the list "
                              "of customers who match when you save."}


class UploadForm(forms.Form):
    name = forms.CharField(max_length=120, widget=forms.TextInput(attrs={"class": "form-control"}))
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"class": "form-control", "rows": 2}))
    file = forms.FileField(
        help_text=f"A CSV or text file with one shop customer id or e-mail address per line (first column), "
                  f"up to {MAX_UPLOAD_LINES:,} lines.",
        widget=forms.ClearableFileInput(attrs={"class": "form-control", "accept": ".csv,.txt,text/csv,text/plain"}),
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
        return upload
