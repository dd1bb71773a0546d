"""The OpenAPI 3.1 document of the ingestion API, served at /api/v1/openapi.json.

Request bodies come from the same ``PayloadSpec`` declarations that validate them; responses are
described here next to the serialisers' field lists. A test checks every routed endpoint and method is
documented and that responses match these schemas.
"""

from __future__ import annotations

from django.conf import settings

from customers import api_payloads as payloads
from customers.models import Order

API_VERSION = "1.0.0"

NULLABLE_STRING = {"type": ["string", "null"]}
DATE_TIME = {"type": "string", "format": "date-time"}
NULLABLE_DATE_TIME = {"type": ["string", "null"], "format": "date-time"}
DECIMAL_STRING = {"type": "string", "pattern": r"^-?\d+\.\d{2}$", "examples": ["49.90"]}

RESPONSE_SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "code", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "code": {"type": "string", "examples": ["validation_failed", "rate_limited", "key_revoked"]},
                    "message": {"type": "string"},
                    "fields": {
                        "type": "object",
                        "description": "Messages by field path, e.g. 'customers.3.email' or 'lines.0.sku'.",
                        "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    },
                },
            }
        },
    },
    "Customer": {
        "type": "object",
        "required": ["id", "external_id", "email", "phone", "email_opt_in", "sms_opt_in", "erased"],
        "properties": {
            "id": {"type": "integer"},
            "external_id": {"type": "string"},
            "email": {"type": "string"},
            "phone": {"type": "string"},
            "first_name": {"type": "string"},
            "last_name": {"type": "string"},
            "time_zone": {"type": "string"},
            "locale": {"type": "string"},
            "attributes": {"type": "object"},
            "first_seen_at": DATE_TIME,
            "created_at": DATE_TIME,
            "updated_at": DATE_TIME,
            "email_opt_in": {"type": "boolean", "description": "Consent granted, address present, not suppressed."},
            "sms_opt_in": {"type": "boolean"},
            "erased": {"type": "boolean"},
            "consent": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["channel", "purpose", "granted"],
                    "properties": {
                        "channel": {"type": "string", "enum": list(payloads.CHANNELS)},
                        "purpose": {"type": "string"},
                        "granted": {"type": "boolean"},
                        "since": NULLABLE_DATE_TIME,
                        "method": {"type": "string"},
                        "confirmed": {"type": "boolean"},
                    },
                },
            },
            "suppressed": {
                "type": "object",
                "description": "The suppression reason per channel, or null.",
                "additionalProperties": NULLABLE_STRING,
            },
        },
    },
    "Order": {
        "type": "object",
        "required": ["id", "external_id", "customer_external_id", "placed_at", "total", "currency", "lines"],
        "properties": {
            "id": {"type": "integer"},
            "external_id": {"type": "string"},
            "customer_external_id": {"type": "string"},
            "placed_at": DATE_TIME,
            "total": DECIMAL_STRING,
            "refunded_amount": DECIMAL_STRING,
            "currency": {"type": "string"},
            "channel": {"type": "string"},
            "status": {"type": "string", "enum": list(Order.Status.values)},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer"},
                        "unit_price": DECIMAL_STRING,
                        "line_total": DECIMAL_STRING,
                        "returned_quantity": {"type": "integer"},
                    },
                },
            },
        },
    },
    "UpsertStatus": {"type": "string", "enum": ["created", "updated", "unchanged"]},
    "CustomerUpserted": {
        "type": "object",
        "required": ["status", "customer"],
        "properties": {"status": {"$ref": "#/components/schemas/UpsertStatus"},
                       "customer": {"$ref": "#/components/schemas/Customer"}},
    },
    "OrderUpserted": {
        "type": "object",
        "required": ["status", "order"],
        "properties": {"status": {"$ref": "#/components/schemas/UpsertStatus"},
                       "order": {"$ref": "#/components/schemas/Order"}},
    },
    "BatchResult": {
        "type": "object",
        "required": ["created", "updated", "unchanged", "results"],
        "properties": {
            "created": {"type": "integer"},
            "updated": {"type": "integer"},
            "unchanged": {"type": "integer"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["external_id", "id", "status"],
                    "properties": {"external_id": {"type": "string"}, "id": {"type": "integer"},
                                   "status": {"$ref": "#/components/schemas/UpsertStatus"}},
                },
            },
        },
    },
    "ConsentRecorded": {
        "type": "object",
        "required": ["status", "event_id", "customer"],
        "properties": {
            "status": {"type": "string", "enum": ["created", "unchanged"]},
            "event_id": {"type": "integer"},
            "customer": {"$ref": "#/components/schemas/Customer"},
        },
    },
    "CustomerExport": {
        "type": "object",
        "description": "Everything stored about the customer (GDPR art. 15/20).",
        "required": ["format", "profile", "consent_history", "orders", "timeline", "suppressions"],
        "properties": {
            "format": {"type": "string", "const": "rapport.customer-export/1"},
            "exported_at": DATE_TIME,
            "workspace": {"type": "string"},
            "profile": {"type": "object"},
            "consent": {"type": "object"},
            "consent_history": {"type": "array", "items": {"type": "object"}},
            "orders": {"type": "array", "items": {"type": "object"}},
            "timeline": {"type": "array", "items": {"type": "object"}},
            "suppressions": {"type": "array", "items": {"type": "object"}},
            "paused_until": NULLABLE_DATE_TIME,
        },
    },
    "CustomerErased": {
        "type": "object",
        "required": ["status", "id", "erased_at"],
        "properties": {"status": {"const": "erased"}, "id": {"type": "integer"}, "erased_at": DATE_TIME},
    },
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema_name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _error(description: str) -> dict:
    return _json("Error", description)


COMMON_ERRORS = {
    "401": _error("No or unknown API key."),
    "403": _error("The key was revoked or the workspace deactivated."),
    "429": {**_error("Rate limit reached; retry after the Retry-After seconds."),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}
WRITE_ERRORS = {
    "400": _error("Invalid JSON or field values; 'fields' says which and why."),
    "413": _error("Body larger than the limit."),
    "415": _error("Body not sent as application/json."),
}


def _operation(operation_id: str, summary: str, responses: dict, body: str | None = None,
               path_parameter: str | None = None, description: str = "") -> dict:
    operation = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {**responses, **COMMON_ERRORS},
    }
    if description:
        operation["description"] = description
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        operation["responses"].update(WRITE_ERRORS)
    if path_parameter:
        operation["parameters"] = [{"name": path_parameter, "in": "path", "required": True,
                                    "schema": {"type": "string", "pattern": "^[^/]+$"}}]
    return operation


def build_openapi() -> dict:
    """Return the OpenAPI 3.1 document of /api/v1/ as a dict."""
    schemas = {spec.name: spec.json_schema() for spec in payloads.INPUT_SPECS}
    schemas.update(RESPONSE_SCHEMAS)
    paths = {
        "/customers": {
            "post": _operation(
                "upsertCustomer", "Create or update one customer by external_id",
                {"200": _json("CustomerUpserted", "Updated or unchanged."), "201": _json("CustomerUpserted", "Created."),
                 "409": _error("The e-mail address belongs to another customer.")},
                body="CustomerInput",
                description="Idempotent: sending the same body twice leaves one customer and reports 'unchanged'.",
            )
        },
        "/customers/batch": {
            "post": _operation(
                "upsertCustomers", f"Create or update up to {payloads.max_batch_size()} customers at once",
                {"200": _json("BatchResult", "Every record applied."),
                 "409": _error("An e-mail address belongs to another customer; nothing was written.")},
                body="CustomerBatchInput",
                description="All or nothing: when a record is invalid, no record is written and 'fields' names "
                "each problem as customers.<index>.<field>.",
            )
        },
        "/customers/{external_id}": {
            "get": _operation("getCustomer", "Read a customer with consent state and suppressions",
                              {"200": _json("Customer", "The customer."), "404": _error("No such customer.")},
                              path_parameter="external_id")
        },
        "/customers/{external_id}/export": {
            "get": _operation("exportCustomer", "Export everything stored about a customer (GDPR)",
                              {"200": _json("CustomerExport", "The export."), "404": _error("No such customer.")},
                              path_parameter="external_id")
        },
        "/customers/{external_id}/erase": {
            "post": _operation(
                "eraseCustomer", "Erase a customer's personal data (GDPR)",
                {"200": _json("CustomerErased", "Erased; orders stay as anonymous aggregates."),
                 "404": _error("No such customer.")},
                path_parameter="external_id",
                description="Names, addresses, attributes and free texts are removed and the external_id is "
                "cleared. The addresses stay suppressed (hashed), so a later upsert with consent does not "
                "opt them in. No body is needed.",
            )
        },
        "/orders": {
            "post": _operation(
                "upsertOrder", "Create or update one order with its lines by external_id",
                {"200": _json("OrderUpserted", "Updated or unchanged."), "201": _json("OrderUpserted", "Created.")},
                body="OrderInput",
            )
        },
        "/orders/batch": {
            "post": _operation(
                "upsertOrders", f"Create or update up to {payloads.max_batch_size()} orders at once",
                {"200": _json("BatchResult", "Every record applied.")}, body="OrderBatchInput",
                description="All or nothing, like customers/batch.",
            )
        },
        "/orders/{external_id}": {
            "get": _operation("getOrder", "Read an order with its lines",
                              {"200": _json("Order", "The order."), "404": _error("No such order.")},
                              path_parameter="external_id")
        },
        "/consent-events": {
            "post": _operation(
                "recordConsentEvent", "Append one event to a customer's consent ledger",
                {"201": _json("ConsentRecorded", "Recorded."),
                 "200": _json("ConsentRecorded", "The same event (same occurred_at) was recorded before.")},
                body="ConsentEventInput",
            )
        },
    }
    # The schema itself needs no key; the per-key errors do not apply to it.
    paths["/openapi.json"] = {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }
    }
    # Writes may also answer 409 when two requests race on the same new external id.
    for operations in paths.values():
        for method, operation in operations.items():
            if method == "post":
                operation["responses"].setdefault("409", _error("A concurrent request changed the same record."))
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Rapport ingestion API",
            "version": API_VERSION,
            "description": (
                "Push customers, orders and consent from your shop as they happen. Authenticate with a workspace "
                "API key (Settings › API keys) as 'Authorization: Bearer <key>'. Every error is JSON with a "
                "reason. Requests are rate limited per key; see the X-RateLimit-* headers."
            ),
        },
        "servers": [{"url": f"{settings.SITE_URL}/api/v1"}],
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "A workspace API key."}},
        },
    }
