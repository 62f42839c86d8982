"""Console forms: what an operator may submit, checked before any service is called."""

from __future__ import annotations

import json

from django import forms


class JSONText(forms.CharField):
    """A textarea holding JSON; cleans to the parsed value."""

    widget = forms.Textarea(attrs={"rows": 14, "spellcheck": "false", "class": "json"})

    def to_python(self, value):
        text = super().to_python(value)
        if not text and not self.required:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None


class RecordEditForm(forms.Form):
    value = JSONText()
    # The version the operator looked at: a write over anything newer is refused as a conflict.
    expected_version = forms.IntegerField(min_value=0, widget=forms.HiddenInput)


class ResolveForm(forms.Form):
    action = forms.ChoiceField(choices=[("accept", "accept"), ("keep", "keep"), ("merge", "merge")])
    expected_version = forms.IntegerField(min_value=0, widget=forms.HiddenInput)
    value = JSONText(required=False)

    def clean(self):
        data = super().clean()
        if data.get("action") == "merge" and "value" not in self.errors and not self.data.get("value"):
            self.add_error("value", "A merge needs the value to write.")
        return data


def reason_field(**options) -> forms.CharField:
    """Why an operator acted, for the log: required, and white space alone is none (the field
    strips it before the required check)."""
    return forms.CharField(max_length=500, error_messages={"required": "A reason is required."}, **options)


class ForceReleaseForm(forms.Form):
    resource = forms.CharField(max_length=200, widget=forms.HiddenInput)
    reason = reason_field(widget=forms.TextInput(attrs={"placeholder": "why (recorded in the log)"}))


class ReleaseAgentForm(forms.Form):
    reason = reason_field()


class IssueTokenForm(forms.Form):
    read_only = forms.BooleanField(required=False)
