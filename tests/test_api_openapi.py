"""The published OpenAPI document is valid OpenAPI 3.1, lists every routed endpoint, and matches real answers."""

import re

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from customers import api_urls
from tests.api_helpers import api, api_key  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def document(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def _routed_operations():
    operations = set()
    for pattern in api_urls.urlpatterns:
        if pattern.name == "not_found":
            continue
        route = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))
        for method in pattern.callback.api_methods:
            operations.add((f"/{route}", method.lower()))
    return operations


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_routed_endpoint_and_method_is_documented_and_nothing_else(document):
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert documented == _routed_operations()


def _validator(document, name):
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_request_examples_are_valid_inputs(document, api):
    for name in ("CustomerInput", "OrderInput"):
        for example in document["components"]["schemas"][name]["examples"]:
            _validator(document, name).validate(example)
    customer_example = document["components"]["schemas"]["CustomerInput"]["examples"][0]
    order_example = document["components"]["schemas"]["OrderInput"]["examples"][0]
    assert api.post("customers", customer_example).status_code == 201
    assert api.post("orders", order_example).status_code == 201


def test_real_responses_match_the_documented_schemas(document, api):
    checks = [
        (api.post("customers", {"external_id": "C-1", "email": "a@example.org", "consent": {"email": "grant"}}),
         "CustomerUpserted"),
        (api.post("customers/batch", {"customers": [{"external_id": "C-2"}]}), "BatchResult"),
        (api.get("customers/C-1"), "Customer"),
        (api.post("orders", {"external_id": "O-1", "customer_external_id": "C-1", "placed_at": "2024-01-01T00:00:00Z",
                             "total": 5, "lines": [{"sku": "A", "unit_price": 5}]}), "OrderUpserted"),
        (api.get("orders/O-1"), "Order"),
        (api.post("consent-events", {"customer_external_id": "C-1", "channel": "email", "action": "withdraw"}),
         "ConsentRecorded"),
        (api.get("customers/C-1/export"), "CustomerExport"),
        (api.post("customers", {"external_id": ""}), "Error"),
        (api.get("customers/C-404"), "Error"),
        (api.post("customers/C-1/erase"), "CustomerErased"),
    ]
    for response, schema_name in checks:
        assert response["Content-Type"] == "application/json"
        _validator(document, schema_name).validate(response.json())


def test_documented_status_codes_cover_the_answers(document, api):
    upsert = document["paths"]["/customers"]["post"]["responses"]
    assert {"200", "201", "400", "401", "403", "409", "413", "415", "429"} <= set(upsert)
