import zoneinfo

from django import forms

from crm_site.models import Role, Workspace

TIME_ZONE_CHOICES = [(name, name) for name in sorted(zoneinfo.available_timezones())]


class WorkspaceSettingsForm(forms.ModelForm):
    time_zone = forms.ChoiceField(
        choices=TIME_ZONE_CHOICES, label="Time zone",
        error_messages={"invalid_choice": "Unknown time zone “%(value)s”: choose one from the list, "
                                          "such as Europe/Berlin."},
        help_text="The shop's local time: every page shows times in it and every form reads them in it; "
                  "new recurring campaigns start in it. Recurring campaigns keep the zone they were saved with.",
    )

    class Meta:
        model = Workspace
        fields = ["name", "time_zone", "currency", "postal_address"]


class InvitationForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MARKETER)

    def __init__(self, *args, inviter_role: str, **kwargs):
        super().__init__(*args, **kwargs)
        if inviter_role != Role.OWNER:
            # Only an owner makes another owner.
            self.fields["role"].choices = [c for c in Role.choices if c[0] != Role.OWNER]


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
