"""Staff pages for data subject requests: download a customer's data as JSON, erase a customer."""

import json

from django.contrib import messages
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from crm_site.tenancy import requires_role
from customers import gdpr
from customers.models import Customer


@requires_role("marketer")
def customer_data_export(request, workspace_slug, customer_id):
    """Download everything stored about the customer (GDPR art. 15/20) as a JSON file."""
    customer = get_object_or_404(Customer.objects, pk=customer_id)
    document = gdpr.export_customer(customer)
    response = HttpResponse(json.dumps(document, cls=DjangoJSONEncoder, indent=2), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="customer-{customer.pk}-data.json"'
    response["Cache-Control"] = "no-store"
    return response


@requires_role("admin")
def customer_erase(request, workspace_slug, customer_id):
    """GET: what erasure does, and a confirmation form. POST with the confirmation: erase (GDPR art. 17)."""
    customer = get_object_or_404(Customer.objects, pk=customer_id)
    error = ""
    if request.method == "POST":
        if request.POST.get("confirm", "").strip().upper() == "ERASE":
            gdpr.erase_customer(customer, requested_by=request.user.get_username())
            messages.success(request, "The customer's personal data was erased. Orders stay as anonymous figures.")
            return redirect("customers:detail", workspace_slug=workspace_slug, customer_id=customer.pk)
        error = "Type ERASE to confirm."
    return render(
        request,
        "customers/gdpr_erase.html",
        {"section": "customers", "customer": customer, "error": error},
        status=400 if error else 200,
    )
