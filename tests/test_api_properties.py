"""Property tests: whatever JSON arrives, the API answers with a JSON document and a 2xx/4xx status, never a 500;
and an address is suppressed however it is formatted."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from customers.consent import canonical_address
from customers.models import suppression_hash
from tests.api_helpers import api, api_key  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

scalars = st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
CUSTOMER_KEYS = ["external_id", "email", "phone", "first_name", "time_zone", "attributes", "first_seen_at", "consent"]
ORDER_KEYS = ["external_id", "customer_external_id", "placed_at", "total", "refunded_amount", "currency", "status",
              "lines"]
CONSENT_KEYS = ["customer_external_id", "channel", "action", "occurred_at", "ip_address", "confirmed_at"]
plausible = {
    "external_id": st.sampled_from(["C-1", "C-2", "", " ", "x" * 101]),
    "customer_external_id": st.sampled_from(["C-1", "C-404"]),
    "email": st.sampled_from(["a@example.org", "A@EXAMPLE.org", "bad@", "", "ü@bücher.de"]),
    "phone": st.sampled_from(["+4930123456", "030 1234", "+1", ""]),
    "placed_at": st.sampled_from(["2024-01-01T10:00:00Z", "2024-13-01", "yesterday", "2024-01-01"]),
    "total": st.sampled_from([0, 1.5, "12.50", "-1", "1e400", "abc", 10**20]),
    "lines": st.lists(st.fixed_dictionaries({"sku": st.sampled_from(["A", "", "B"]),
                                             "unit_price": st.sampled_from([1, "2.5", -1, None])},
                                            optional={"quantity": st.integers(-5, 10**7),
                                                      "returned_quantity": st.integers(-1, 3)}), max_size=3),
    "consent": st.dictionaries(st.sampled_from(["email", "sms", "fax"]), st.sampled_from(["grant", "withdraw", "x"])),
    "channel": st.sampled_from(["email", "sms", "fax"]),
    "action": st.sampled_from(["grant", "withdraw", "maybe"]),
}


def _bodies(keys):
    fields = {key: plausible.get(key, json_values) | json_values for key in keys}
    return st.fixed_dictionaries({}, optional=fields) | json_values


def _check(response):
    assert response.status_code < 500, response.content
    assert response["Content-Type"] == "application/json"
    document = response.json()
    if response.status_code >= 400:
        assert document["error"]["message"]


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@FUZZ
@given(body=_bodies(CUSTOMER_KEYS))
def test_any_customer_body_gets_a_json_answer_never_a_500(api, body):
    _check(api.post("customers", body))


@FUZZ
@given(body=_bodies(ORDER_KEYS))
def test_any_order_body_gets_a_json_answer_never_a_500(api, body):
    api.post("customers", {"external_id": "C-1"})
    _check(api.post("orders", body))


@FUZZ
@given(body=_bodies(CONSENT_KEYS))
def test_any_consent_body_gets_a_json_answer_never_a_500(api, body):
    api.post("customers", {"external_id": "C-1", "phone": "+4930123456"})
    _check(api.post("consent-events", body))


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_get_a_json_answer_never_a_500(api, raw):
    response = api.client.post("/api/v1/customers/batch", raw, content_type="application/json",
                               HTTP_AUTHORIZATION=f"Bearer {api.key}")
    _check(response)


@settings(max_examples=200)
@given(
    digits=st.text(alphabet="0123456789", min_size=6, max_size=12),
    separators=st.lists(st.sampled_from([" ", "-", ".", "/", "(", ")"]), max_size=12),
    international_prefix=st.sampled_from(["+", "00"]),
)
def test_a_phone_number_is_suppressed_however_it_is_punctuated(digits, separators, international_prefix):
    e164 = "+49" + digits
    written = list(international_prefix + "49" + digits)
    for position, separator in enumerate(separators):
        written.insert(1 + position % max(1, len(written) - 1), separator)
    assert canonical_address("sms", "".join(written)) == e164
    assert suppression_hash("sms", canonical_address("sms", "".join(written))) == suppression_hash("sms", e164)


@settings(max_examples=200)
@given(local=st.from_regex(r"[a-z0-9._%+-]{1,20}", fullmatch=True), padding=st.sampled_from(["", " ", "\t"]))
def test_an_email_address_is_suppressed_whatever_its_case_and_padding(local, padding):
    address = f"{local}@example.org"
    assert canonical_address("email", padding + address.upper() + padding) == address
