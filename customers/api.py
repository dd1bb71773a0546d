"""The JSON ingestion API (/api/v1/): the shop's systems push customers, orders and consent as they happen.

Every endpoint goes through ``api_endpoint``, which owns the HTTP contract in one place: bearer-key
authentication (the key names the workspace; the view runs in its tenant scope), a per-key rate limit,
content type and size checks, JSON parsing, and JSON errors with a reason for every failure. Views
parse, call one domain function (``customers.upserts``, ``customers.consent``, ``customers.gdpr``) and
serialise. No input can produce an HTML page or a 500.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import RequestDataTooBig
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, IntegrityError
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from crm_site.tenancy import tenant_scope
from customers import api_payloads as payloads
from customers import consent, gdpr, upserts
from customers.api_keys import find_api_key, touch_api_key
from customers.models import ConsentEvent, Customer, Order

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPES = {"application/json"}


class ApiError(Exception):
    """An error response: HTTP status, a stable machine code, a message for people, optional field errors."""

    def __init__(self, status: int, code: str, message: str, fields: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = fields or {}
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, fields: dict | None = None, headers=None) -> JsonResponse:
    """Return the JSON error document every failure uses: ``{"error": {status, code, message, fields?}}``."""
    body = {"status": status, "code": code, "message": message}
    if fields:
        body["fields"] = fields
    response = JsonResponse({"error": body}, status=status, encoder=DjangoJSONEncoder)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def rate_limit(api_key) -> tuple[int, int, int]:
    """Count one request of the key in the current fixed window; return (limit, remaining, seconds to reset).

    Raises ApiError 429 with Retry-After when the key used up its window.
    """
    limit = _setting("API_RATE_LIMIT", 600)
    window = max(1, _setting("API_RATE_WINDOW_SECONDS", 60))
    now = time.time()
    window_index = int(now // window)
    reset = max(1, math.ceil((window_index + 1) * window - now))
    key = f"api-rate:{api_key.pk}:{window_index}"
    cache.add(key, 0, window + 5)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, window + 5)
        count = 1
    if count > limit:
        raise ApiError(
            429, "rate_limited", f"This key may make {limit} requests per {window} seconds. Retry in {reset} s.",
            headers={"Retry-After": str(reset), "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"},
        )
    return limit, limit - count, reset


def _authenticate(request):
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="rapport"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "Send your API key as 'Authorization: Bearer <key>'.", headers=challenge)
    api_key = find_api_key(token)
    if api_key is None:
        raise ApiError(401, "invalid_key", "This API key is not valid.",
                       headers={"WWW-Authenticate": 'Bearer realm="rapport", error="invalid_token"'})
    if api_key.revoked_at is not None:
        raise ApiError(403, "key_revoked", "This API key was revoked; create a new one in Settings › API keys.")
    if not api_key.workspace.is_active:
        raise ApiError(403, "workspace_inactive", "The workspace of this key is deactivated.")
    return api_key


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _read_json(request):
    limit = _setting("API_MAX_BODY_BYTES", 5 * 1024 * 1024)
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "bad_request", "The Content-Length header is not a number.")
    if declared > limit:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes; send smaller batches.")
    try:
        raw = request.read(limit + 1)
    except RequestDataTooBig:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes; send smaller batches.")
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes; send smaller batches.")
    if not raw.strip():
        raise ApiError(400, "invalid_json", "The body is empty; send a JSON object.")
    content_type = (request.content_type or "").lower()
    if content_type not in JSON_CONTENT_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"Send the body as application/json (got '{content_type or 'nothing'}').")
    try:
        return json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "The body is not UTF-8 text.")
    except RecursionError:
        raise ApiError(400, "invalid_json", "The JSON is nested too deeply.")
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}")


def api_endpoint(*methods: str, authenticated: bool = True):
    """Wrap a view as an API endpoint answering ``methods``; the view gets ``(request, api_key, body, **kwargs)``.

    It returns ``(status, document)``. Authentication, rate limit, content checks, the tenant scope and
    JSON errors are handled here; any ApiError raised inside rolls back what the view wrote.
    """

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        def endpoint(request, **kwargs):
            rate_headers = {}
            try:
                if request.method not in methods:
                    raise ApiError(405, "method_not_allowed",
                                   f"{request.method} is not allowed here; use {', '.join(methods)}.",
                                   headers={"Allow": ", ".join(methods)})
                if not authenticated:
                    status, document = view(request, None, None, **kwargs)
                    return JsonResponse(document, status=status, encoder=DjangoJSONEncoder)
                api_key = _authenticate(request)
                limit, remaining, reset = rate_limit(api_key)
                rate_headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining),
                                "X-RateLimit-Reset": str(reset)}
                body = _read_json(request) if request.method in ("POST", "PUT", "PATCH") else None
                touch_api_key(api_key)  # outside the scope: a failing request still counts as use
                with tenant_scope(api_key.workspace):
                    status, document = view(request, api_key, body, **kwargs)
                response = JsonResponse(document, status=status, encoder=DjangoJSONEncoder, safe=False)
            except ApiError as error:
                response = error_response(error.status, error.code, error.message, error.fields, error.headers)
            except IntegrityError:
                # Two requests raced to create the same external id; the retry will find the row.
                response = error_response(409, "conflict", "A concurrent request changed the same record; retry.")
            except DatabaseError:
                logger.exception("API database error")
                response = error_response(503, "unavailable", "The database is unavailable; retry later.",
                                          headers={"Retry-After": "5"})
            except Exception:
                logger.exception("API error on %s %s", request.method, request.path)
                response = error_response(500, "internal_error", "Something went wrong on our side; it was logged.")
            for name, value in rate_headers.items():
                response.setdefault(name, value)
            return response

        endpoint.api_methods = methods
        return endpoint

    return decorate


# --- Serialisation ----------------------------------------------------------------------------------


def customer_document(customer: Customer, *, detail: bool = False) -> dict:
    """Return the API representation of a customer; ``detail`` adds consent state and suppressions."""
    document = {
        "id": customer.pk,
        "external_id": customer.external_id,
        "email": customer.email,
        "phone": customer.phone,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "time_zone": customer.time_zone,
        "locale": customer.locale,
        "attributes": customer.attributes,
        "first_seen_at": customer.first_seen_at,
        "created_at": customer.created_at,
        "updated_at": customer.updated_at,
        "email_opt_in": customer.email_opt_in,
        "sms_opt_in": customer.sms_opt_in,
        "erased": customer.erased_at is not None,
    }
    if detail:
        document["consent"] = [
            {"channel": s.channel, "purpose": s.purpose, "granted": s.granted, "since": s.since,
             "method": s.method, "confirmed": s.confirmed}
            for s in consent.current_consent(customer).values()
        ]
        suppressed = {s.channel: s.reason for s in consent.suppressions_for(customer)}
        document["suppressed"] = {channel: suppressed.get(channel) for channel in consent.ADDRESS_FIELD}
    return document


def order_document(order: Order) -> dict:
    """Return the API representation of an order with its lines."""
    return {
        "id": order.pk,
        "external_id": order.external_id,
        "customer_external_id": order.customer.external_id,
        "placed_at": order.placed_at,
        "total": order.total,
        "refunded_amount": order.refunded_amount,
        "currency": order.currency,
        "channel": order.channel,
        "status": order.status,
        "lines": [
            {"sku": line.sku, "quantity": line.quantity, "unit_price": line.unit_price,
             "line_total": line.line_total, "returned_quantity": line.returned_quantity}
            for line in order.lines.order_by("id")
        ],
    }


def _clean(spec: payloads.PayloadSpec, body, api_key) -> dict:
    cleaned, errors = spec.clean(body, payloads.workspace_context(api_key.workspace))
    if errors:
        raise ApiError(400, "validation_failed", "Some fields are not valid; see 'fields'.", fields=errors)
    return cleaned


def _rejected(rejected: upserts.UpsertRejected, prefix: str | None) -> ApiError:
    fields = {}
    for index, field_errors in rejected.errors.items():
        for name, messages in field_errors.items():
            fields[f"{prefix}.{index}.{name}" if prefix else name] = messages
    conflict = all("belongs to another customer" in m for ms in fields.values() for m in ms)
    if conflict:
        return ApiError(409, "conflict", "The e-mail address is held by another customer.", fields=fields)
    return ApiError(400, "validation_failed", "Some records cannot be applied; nothing was written.", fields=fields)


def _batch_document(results: list[upserts.UpsertResult]) -> dict:
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    for result in results:
        counts[result.status] += 1
    return {**counts, "results": [{"external_id": r.external_id, "id": r.id, "status": r.status} for r in results]}


def _get_customer(external_id: str) -> Customer:
    customer = Customer.objects.filter(external_id=external_id).first() if external_id else None
    if customer is None:
        raise ApiError(404, "not_found", f"No customer has external_id '{external_id[:100]}'.")
    return customer


# --- Endpoints ----------------------------------------------------------------------------------------


@api_endpoint("POST")
def customer_upsert(request, api_key, body):
    record = _clean(payloads.CUSTOMER, body, api_key)
    try:
        [result] = upserts.upsert_customers([record], source=f"api key {api_key.prefix}")
    except upserts.UpsertRejected as rejected:
        raise _rejected(rejected, None)
    customer = Customer.objects.get(pk=result.id)
    return (201 if result.status == "created" else 200), {"status": result.status,
                                                          "customer": customer_document(customer, detail=True)}


@api_endpoint("POST")
def customer_batch(request, api_key, body):
    records = _clean(payloads.CUSTOMER_BATCH, body, api_key)["customers"]
    try:
        results = upserts.upsert_customers(records, source=f"api key {api_key.prefix}")
    except upserts.UpsertRejected as rejected:
        raise _rejected(rejected, "customers")
    return 200, _batch_document(results)


@api_endpoint("GET")
def customer_detail(request, api_key, body, external_id):
    return 200, customer_document(_get_customer(external_id), detail=True)


@api_endpoint("GET")
def customer_export(request, api_key, body, external_id):
    return 200, gdpr.export_customer(_get_customer(external_id))


@api_endpoint("POST")
def customer_erase(request, api_key, body, external_id):
    customer = gdpr.erase_customer(_get_customer(external_id), requested_by=f"api key {api_key.prefix}")
    return 200, {"status": "erased", "id": customer.pk, "erased_at": customer.erased_at}


@api_endpoint("POST")
def order_upsert(request, api_key, body):
    record = _clean(payloads.ORDER, body, api_key)
    try:
        [result] = upserts.upsert_orders([record], default_currency=api_key.workspace.currency)
    except upserts.UpsertRejected as rejected:
        raise _rejected(rejected, None)
    order = Order.objects.select_related("customer").get(pk=result.id)
    return (201 if result.status == "created" else 200), {"status": result.status, "order": order_document(order)}


@api_endpoint("POST")
def order_batch(request, api_key, body):
    records = _clean(payloads.ORDER_BATCH, body, api_key)["orders"]
    try:
        results = upserts.upsert_orders(records, default_currency=api_key.workspace.currency)
    except upserts.UpsertRejected as rejected:
        raise _rejected(rejected, "orders")
    return 200, _batch_document(results)


@api_endpoint("GET")
def order_detail(request, api_key, body, external_id):
    order = Order.objects.select_related("customer").filter(external_id=external_id).first()
    if order is None:
        raise ApiError(404, "not_found", f"No order has external_id '{external_id[:100]}'.")
    return 200, order_document(order)


@api_endpoint("POST")
def consent_event_create(request, api_key, body):
    record = _clean(payloads.CONSENT_EVENT, body, api_key)
    customer = Customer.objects.filter(external_id=record.pop("customer_external_id")).first()
    if customer is None:
        raise ApiError(400, "validation_failed", "Unknown customer.", fields={
            "customer_external_id": [f"no customer has external_id '{body['customer_external_id']}'"]})
    occurred_at = record.get("occurred_at")
    if occurred_at is not None:
        # A retry of the same decision (same instant) is not a second decision.
        duplicate = ConsentEvent.objects.filter(
            customer=customer, channel=record["channel"], purpose=record["purpose"], action=record["action"],
            occurred_at=occurred_at,
        ).first()
        if duplicate is not None:
            customer.refresh_from_db()
            return 200, {"status": "unchanged", "event_id": duplicate.pk,
                         "customer": customer_document(customer, detail=True)}
    event = consent.record_consent(
        customer, record["channel"], record["action"], record["method"], purpose=record["purpose"],
        occurred_at=occurred_at, source=record.get("source") or f"api key {api_key.prefix}",
        ip_address=record.get("ip_address"), user_agent=record.get("user_agent", ""),
        wording_version=record.get("wording_version", ""), confirmed_at=record.get("confirmed_at"),
    )
    return 201, {"status": "created", "event_id": event.pk, "customer": customer_document(customer, detail=True)}


@api_endpoint("GET", authenticated=False)
def openapi_document(request, api_key, body):
    from customers.openapi import build_openapi

    return 200, build_openapi()


@api_endpoint("GET", "POST", "PUT", "PATCH", "DELETE", authenticated=False)
def not_found(request, api_key, body, rest=""):
    raise ApiError(404, "not_found", f"There is no API endpoint at {request.path}; see /api/v1/openapi.json.")
