"""Settings forms of lifecycle: the workspace's thresholds and its reward rules."""

from django import forms

from lifecycle.models import LifecyclePolicy
from lifecycle.rewards import RULE_KINDS, RewardRuleError, validate_reward_rules


class LifecyclePolicyForm(forms.ModelForm):
    class Meta:
        model = LifecyclePolicy
        fields = [
            "onboarding_days", "at_risk_gap_multiplier", "at_risk_min_days", "at_risk_p_alive",
            "one_time_buyer_at_risk_days", "lapsed_days", "lapsed_p_alive", "heavy_user_revenue_share",
            "reinforce_window_days", "gross_margin_percent",
        ]
        labels = {
            "at_risk_gap_multiplier": "At risk after × usual gap",
            "at_risk_min_days": "At risk no sooner than (days)",
            "at_risk_p_alive": "At risk below P(alive)",
            "one_time_buyer_at_risk_days": "One-time buyer at risk after (days)",
            "lapsed_p_alive": "Lapsed below P(alive)",
            "heavy_user_revenue_share": "Heavy users' share of 12-month revenue",
            "gross_margin_percent": "Gross margin (%)",
        }

    def clean(self):
        cleaned = super().clean()
        bounds = {
            "onboarding_days": (1, 3650), "at_risk_min_days": (0, 3650), "one_time_buyer_at_risk_days": (1, 3650),
            "lapsed_days": (1, 3650), "reinforce_window_days": (1, 365), "at_risk_gap_multiplier": (1.0, 20.0),
            "at_risk_p_alive": (0.0, 1.0), "lapsed_p_alive": (0.0, 1.0), "heavy_user_revenue_share": (0.05, 1.0),
            "gross_margin_percent": (0.0, 100.0),
        }
        for name, (low, high) in bounds.items():
            value = cleaned.get(name)
            if value is not None and not low <= value <= high:
                self.add_error(name, f"Must be between {low:g} and {high:g}.")
        lapsed, one_time = cleaned.get("lapsed_days"), cleaned.get("one_time_buyer_at_risk_days")
        if lapsed is not None and one_time is not None and lapsed <= one_time:
            self.add_error("lapsed_days", "Must be longer than the one-time buyer's at-risk days.")
        lapsed_p, risk_p = cleaned.get("lapsed_p_alive"), cleaned.get("at_risk_p_alive")
        if lapsed_p is not None and risk_p is not None and lapsed_p > risk_p:
            self.add_error("lapsed_p_alive", "Must not be above the at-risk P(alive).")
        return cleaned


class RewardRuleForm(forms.Form):
    key = forms.SlugField(max_length=40, help_text="Lowercase letters, digits and _; campaigns refer to it.")
    # The blank first choice keeps an untouched extra form unchanged, so the formset skips it.
    kind = forms.ChoiceField(choices=[("", "Choose a rule…"), *RULE_KINDS.items()])
    label = forms.CharField(max_length=80, required=False)
    n = forms.IntegerField(label="n-th order", required=False, min_value=1)
    amount = forms.DecimalField(label="Spend amount", required=False, min_value=0, max_digits=12, decimal_places=2)
    window_days = forms.IntegerField(label="Anniversary window (days)", required=False, min_value=1, max_value=366)

    def rule(self) -> dict:
        data = self.cleaned_data
        rule = {"key": data["key"].lower(), "kind": data["kind"], "label": data.get("label") or ""}
        if data["kind"] == "nth_order":
            rule["n"] = data.get("n")
        elif data["kind"] == "spend_threshold":
            rule["amount"] = float(data["amount"]) if data.get("amount") is not None else None
        elif data["kind"] == "anniversary":
            rule["window_days"] = data.get("window_days") or 14
        return rule


class BaseRewardRuleFormSet(forms.BaseFormSet):
    def clean(self):
        if any(self.errors):
            return
        try:
            self.rules = validate_reward_rules(
                [form.rule() for form in self.forms
                 if form.cleaned_data and not self._should_delete_form(form)])
        except RewardRuleError as error:
            message = str(error)
            raise forms.ValidationError(message[:1].upper() + message[1:] + ".") from None


RewardRuleFormSet = forms.formset_factory(RewardRuleForm, formset=BaseRewardRuleFormSet, extra=1, can_delete=True,
                                          max_num=20, validate_max=True)
