"""The JSON payloads of the ingestion API: field specifications that validate input and describe themselves.

One declaration serves both the validation (``PayloadSpec.clean`` returns clean values or field errors a
developer can act on) and the OpenAPI document (``PayloadSpec.json_schema``), so the published schema
cannot drift from what the API accepts. Value normalisation is shared with the CSV import
(``customers.normalize``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import zoneinfo
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings

from customers import normalize
from customers.models import Channel, ConsentEvent, Order
from customers.normalize import InvalidValue

MAX_ATTRIBUTES = 100
MAX_ATTRIBUTES_BYTES = 16_384
MAX_ORDER_LINES = 500


def max_batch_size() -> int:
    """Return the largest number of records one batch request may carry (settings.API_MAX_BATCH)."""
    return getattr(settings, "API_MAX_BATCH", 1000)


@dataclass
class Context:
    """What a value's meaning depends on: the workspace's time zone for dates without an offset."""

    time_zone: dt.tzinfo = dt.UTC


class Missing:
    """Marks a field absent from the payload (different from an explicit null)."""


MISSING = Missing()


@dataclass
class Field:
    """One JSON property: how to clean it and how to describe it."""

    description: str = ""
    required: bool = False
    nullable: bool = True
    default: Any = MISSING

    def clean(self, value: Any, context: Context) -> Any:
        raise NotImplementedError

    def schema(self) -> dict:
        raise NotImplementedError

    def full_schema(self) -> dict:
        schema = self.schema()
        if self.nullable and not self.required:
            schema = {**schema, "type": [schema["type"], "null"]} if "type" in schema else schema
        if self.description:
            schema["description"] = self.description
        return schema


def _need_string(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"must be a string, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


@dataclass
class Text(Field):
    max_length: int = 200
    blank: bool = True

    def clean(self, value, context):
        if value is None:
            return ""
        text = _need_string(value).strip()
        if "\x00" in text:
            raise InvalidValue("must not contain NUL characters")
        if not text and not self.blank:
            raise InvalidValue("must not be blank")
        if len(text) > self.max_length:
            raise InvalidValue(f"is longer than {self.max_length} characters")
        return text

    def schema(self):
        schema = {"type": "string", "maxLength": self.max_length}
        if not self.blank:
            schema["minLength"] = 1
            schema["pattern"] = r"\S"
        return schema


@dataclass
class Email(Field):
    def clean(self, value, context):
        if value is None or (isinstance(value, str) and not value.strip()):
            return ""
        return normalize.normalize_email(_need_string(value))

    def schema(self):
        return {"type": "string", "format": "email", "maxLength": 254}


@dataclass
class Phone(Field):
    def clean(self, value, context):
        if value is None or (isinstance(value, str) and not value.strip()):
            return ""
        return normalize.normalize_phone(_need_string(value))

    def schema(self):
        return {"type": "string", "maxLength": 40, "examples": ["+4930123456"]}


@dataclass
class DateTime(Field):
    def clean(self, value, context):
        if value is None:
            return None
        text = _need_string(value).strip()
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidValue(f"'{text[:60]}' is not an ISO 8601 date-time such as 2024-05-31T14:05:00+02:00")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=context.time_zone)
        if not 1900 <= parsed.year <= 2200:
            raise InvalidValue("is outside the years 1900 to 2200")
        return parsed

    def schema(self):
        return {"type": "string", "format": "date-time"}


@dataclass
class Amount(Field):
    def clean(self, value, context):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
            raise InvalidValue(f"must be a number or a numeric string, not {_json_type(value)}")
        try:
            number = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise InvalidValue(f"'{str(value)[:60]}' is not a number")
        if not number.is_finite():
            raise InvalidValue("must be a finite number")
        if number < 0:
            raise InvalidValue("must not be negative")
        # Checked before rounding: quantize() fails on numbers beyond the context's precision.
        if number >= Decimal(10) ** 10:
            raise InvalidValue("is too large (at most 9999999999.99)")
        return number.quantize(Decimal("0.01"))

    def schema(self):
        return {
            "oneOf": [
                {"type": "number", "minimum": 0, "maximum": 9999999999.99},
                {"type": "string", "pattern": r"^\s*\d{1,10}(\.\d+)?\s*$"},
            ]
        }

    def full_schema(self):
        schema = self.schema()
        if self.nullable and not self.required:
            schema["oneOf"].append({"type": "null"})
        if self.description:
            schema["description"] = self.description
        return schema


@dataclass
class Integer(Field):
    minimum: int = 0
    maximum: int = 1_000_000

    def clean(self, value, context):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise InvalidValue(f"must be a whole number, not {_json_type(value)}")
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise InvalidValue("must be a whole number")
            value = int(value)
        if not self.minimum <= value <= self.maximum:
            raise InvalidValue(f"must be between {self.minimum} and {self.maximum}")
        return value

    def schema(self):
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


@dataclass
class Choice(Field):
    choices: tuple[str, ...] = ()

    def clean(self, value, context):
        if value is None:
            return None
        text = _need_string(value).strip()
        if text not in self.choices:
            raise InvalidValue(f"must be one of {', '.join(self.choices)}")
        return text

    def schema(self):
        return {"type": "string", "enum": list(self.choices)}

    def full_schema(self):
        schema = self.schema()
        if self.nullable and not self.required:
            schema = {"type": ["string", "null"], "enum": [*self.choices, None]}
        if self.description:
            schema["description"] = self.description
        return schema


@dataclass
class TimeZone(Field):
    def clean(self, value, context):
        if value is None or (isinstance(value, str) and not value.strip()):
            return ""
        return normalize.normalize_time_zone(_need_string(value))

    def schema(self):
        return {"type": "string", "maxLength": 64, "examples": ["Europe/Berlin"]}


@dataclass
class Currency(Field):
    def clean(self, value, context):
        if value is None:
            return None
        return normalize.normalize_currency(_need_string(value))

    def schema(self):
        return {"type": "string", "pattern": "^[A-Za-z]{3}$", "examples": ["EUR"]}


@dataclass
class IpAddress(Field):
    def clean(self, value, context):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        text = _need_string(value).strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise InvalidValue(f"'{text[:60]}' is not an IPv4 or IPv6 address")

    def schema(self):
        return {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}


@dataclass
class Attributes(Field):
    """Free custom attributes: a flat object of strings, numbers, booleans (null removes a key)."""

    def clean(self, value, context):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidValue(f"must be an object, not {_json_type(value)}")
        if len(value) > MAX_ATTRIBUTES:
            raise InvalidValue(f"has more than {MAX_ATTRIBUTES} keys")
        cleaned = {}
        for key, item in value.items():
            if not key.strip() or len(key) > 100:
                raise InvalidValue("keys must be 1 to 100 characters long")
            if isinstance(item, (dict, list)):
                raise InvalidValue(f"'{key[:40]}' must be a string, number, boolean or null")
            cleaned[key] = float(item) if isinstance(item, Decimal) else item
        if len(json.dumps(cleaned)) > MAX_ATTRIBUTES_BYTES:
            raise InvalidValue(f"is larger than {MAX_ATTRIBUTES_BYTES} bytes")
        return cleaned

    def schema(self):
        return {
            "type": "object",
            "maxProperties": MAX_ATTRIBUTES,
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        }


@dataclass
class Nested(Field):
    spec: PayloadSpec | None = None

    def clean(self, value, context):
        if value is None:
            return None
        cleaned, errors = self.spec.clean(value, context)
        if errors:
            raise NestedErrors(errors)
        return cleaned

    def schema(self):
        return {"$ref": f"#/components/schemas/{self.spec.name}"}

    def full_schema(self):
        schema = self.schema()
        if self.nullable and not self.required:
            schema = {"oneOf": [schema, {"type": "null"}]}
        if self.description:
            schema = {**schema, "description": self.description}
        return schema


@dataclass
class ArrayOf(Field):
    spec: PayloadSpec | None = None
    max_items: int = 1000
    min_items: int = 0

    def clean(self, value, context):
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidValue(f"must be an array, not {_json_type(value)}")
        if len(value) > self.max_items:
            raise InvalidValue(f"has more than {self.max_items} items")
        if len(value) < self.min_items:
            raise InvalidValue(f"needs at least {self.min_items} item(s)")
        cleaned_items, errors = [], {}
        for index, item in enumerate(value):
            cleaned, item_errors = self.spec.clean(item, context)
            for name, messages in item_errors.items():
                errors[f"{index}.{name}" if name else str(index)] = messages
            cleaned_items.append(cleaned)
        if errors:
            raise NestedErrors(errors)
        return cleaned_items

    def schema(self):
        schema = {"type": "array", "items": {"$ref": f"#/components/schemas/{self.spec.name}"}}
        schema["maxItems"] = self.max_items
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema


class NestedErrors(Exception):
    """Errors of a nested object or array, keyed by their path inside it."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("nested errors")
        self.errors = errors


@dataclass
class PayloadSpec:
    """A JSON object: named fields; unknown properties are refused so typos do not pass silently."""

    name: str
    fields: dict[str, Field]
    description: str = ""
    examples: list = field(default_factory=list)

    def clean(self, payload: Any, context: Context) -> tuple[dict, dict[str, list[str]]]:
        """Return (clean values of the present fields, errors by field path); absent optional fields are left out."""
        if not isinstance(payload, dict):
            return {}, {"": [f"must be a JSON object, not {_json_type(payload)}"]}
        cleaned, errors = {}, {}
        for name in payload.keys() - self.fields.keys():
            errors[name] = ["is not a known field"]
        for name, spec in self.fields.items():
            if name not in payload:
                if spec.required:
                    errors[name] = ["is required"]
                elif spec.default is not MISSING:
                    cleaned[name] = spec.default
                continue
            value = payload[name]
            if value is None and (spec.required or not spec.nullable):
                errors[name] = ["may not be null"]
                continue
            try:
                cleaned[name] = spec.clean(value, context)
            except NestedErrors as nested:
                for path, messages in nested.errors.items():
                    errors[f"{name}.{path}" if path else name] = messages
            except InvalidValue as invalid:
                errors[name] = [str(invalid)]
        return cleaned, errors

    def json_schema(self) -> dict:
        """Return the JSON Schema (2020-12, as OpenAPI 3.1 uses) of this object."""
        schema = {
            "type": "object",
            "properties": {name: spec.full_schema() for name, spec in self.fields.items()},
            "additionalProperties": False,
        }
        required = [name for name, spec in self.fields.items() if spec.required]
        if required:
            schema["required"] = required
        if self.description:
            schema["description"] = self.description
        if self.examples:
            schema["examples"] = self.examples
        return schema


CONSENT_ACTIONS = tuple(ConsentEvent.Action.values)
CHANNELS = tuple(Channel.values)

CUSTOMER_CONSENT = PayloadSpec(
    "CustomerConsent",
    {
        channel: Choice(
            choices=CONSENT_ACTIONS,
            description=(
                f"Record a marketing consent event for {Channel(channel).label} (method 'api') unless the "
                "current consent already says so. A grant to a suppressed address (unsubscribed, bounced, "
                "erased) is recorded but does not opt the customer in."
            ),
        )
        for channel in CHANNELS
    },
    description="Marketing consent per channel.",
)

CUSTOMER = PayloadSpec(
    "CustomerInput",
    {
        "external_id": Text(max_length=100, blank=False, required=True, nullable=False,
                            description="The customer's id in your system; the upsert key."),
        "email": Email(description="Normalised (lower case, IDNA domain). Unique per workspace."),
        "phone": Phone(description="International format; stored as E.164."),
        "first_name": Text(max_length=100),
        "last_name": Text(max_length=100),
        "time_zone": TimeZone(description="IANA time zone name."),
        "locale": Text(max_length=16, description="e.g. de-DE"),
        "attributes": Attributes(
            description="Custom attributes, merged into the stored ones; a null value removes the key."
        ),
        "first_seen_at": DateTime(nullable=False, description="When the customer first appeared; default now."),
        "consent": Nested(spec=CUSTOMER_CONSENT),
    },
    description="Fields absent from the payload keep their stored value; null or \"\" clears a text field.",
    examples=[
        {"external_id": "C-1001", "email": "ann@example.org", "first_name": "Ann", "consent": {"email": "grant"}}
    ],
)

ORDER_LINE = PayloadSpec(
    "OrderLineInput",
    {
        "sku": Text(max_length=64, blank=False, required=True, nullable=False),
        "name": Text(max_length=200, description="Product name; creates the product when the SKU is new."),
        "category": Text(max_length=100),
        "quantity": Integer(minimum=0, maximum=1_000_000, nullable=False, default=1),
        "unit_price": Amount(required=True, nullable=False),
        "line_total": Amount(nullable=False, description="Default: quantity × unit_price."),
        "returned_quantity": Integer(minimum=0, maximum=1_000_000, nullable=False, default=0),
    },
)

ORDER = PayloadSpec(
    "OrderInput",
    {
        "external_id": Text(max_length=100, blank=False, required=True, nullable=False,
                            description="The order's id in your system; the upsert key."),
        "customer_external_id": Text(max_length=100, blank=False, required=True, nullable=False,
                                     description="external_id of an existing customer."),
        "placed_at": DateTime(required=True, nullable=False),
        "total": Amount(required=True, nullable=False),
        "refunded_amount": Amount(nullable=False, default=Decimal("0.00")),
        "currency": Currency(nullable=False, description="ISO 4217; default the workspace currency."),
        "channel": Text(max_length=30, description="web, store, phone, marketplace…"),
        "status": Choice(choices=tuple(Order.Status.values), nullable=False, default=Order.Status.PLACED.value),
        "lines": ArrayOf(spec=ORDER_LINE, max_items=MAX_ORDER_LINES, nullable=False,
                         description="The order's lines; an upsert replaces the stored lines."),
    },
    description="An upsert replaces every field (absent optional fields take their defaults) and the lines.",
    examples=[
        {
            "external_id": "O-5001", "customer_external_id": "C-1001", "placed_at": "2024-05-31T14:05:00+02:00",
            "total": "49.90", "currency": "EUR",
            "lines": [{"sku": "BEANS-1KG", "name": "Beans 1 kg", "quantity": 2, "unit_price": "24.95"}],
        }
    ],
)

CONSENT_EVENT = PayloadSpec(
    "ConsentEventInput",
    {
        "customer_external_id": Text(max_length=100, blank=False, required=True, nullable=False),
        "channel": Choice(choices=CHANNELS, required=True, nullable=False),
        "action": Choice(choices=CONSENT_ACTIONS, required=True, nullable=False),
        "purpose": Text(max_length=40, blank=False, nullable=False, default="marketing"),
        "occurred_at": DateTime(nullable=False, description="When the customer decided; default now. "
                                "Sending it makes retries idempotent."),
        "method": Text(max_length=40, blank=False, nullable=False, default="api",
                       description="How consent was given: checkout, form, double_opt_in, sms_keyword…"),
        "source": Text(max_length=200, description="Where, e.g. the page or the shop."),
        "ip_address": IpAddress(),
        "user_agent": Text(max_length=400),
        "wording_version": Text(max_length=40, description="The version of the consent text shown."),
        "confirmed_at": DateTime(description="Double opt-in confirmation time. A confirmed grant lifts an "
                                 "'unsubscribed' suppression; bounces and complaints stay."),
    },
    description="One event of the append-only consent ledger.",
)


def batch_spec(name: str, key: str, item: PayloadSpec) -> PayloadSpec:
    """Return the spec of a batch request: ``{key: [item, …]}`` with at most API_MAX_BATCH items."""
    return PayloadSpec(name, {key: ArrayOf(spec=item, required=True, nullable=False, min_items=1,
                                           max_items=max_batch_size())})


CUSTOMER_BATCH = batch_spec("CustomerBatchInput", "customers", CUSTOMER)
ORDER_BATCH = batch_spec("OrderBatchInput", "orders", ORDER)

INPUT_SPECS = [CUSTOMER_CONSENT, CUSTOMER, ORDER_LINE, ORDER, CONSENT_EVENT, CUSTOMER_BATCH, ORDER_BATCH]


def workspace_context(workspace) -> Context:
    """Return the validation context of a workspace (its time zone for dates without an offset)."""
    try:
        return Context(time_zone=zoneinfo.ZoneInfo(workspace.time_zone or "UTC"))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return Context()
