"""Customer pages."""

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from customers.models import Customer


def customer_list(request, workspace_slug):
    customers = Customer.objects.order_by("-created_at", "-id")
    page = Paginator(customers, 50).get_page(request.GET.get("page"))
    return render(request, "customers/list.html", {"section": "customers", "page": page})


def customer_detail(request, workspace_slug, customer_id):
    customer = get_object_or_404(Customer.objects, pk=customer_id)
    orders = customer.orders.order_by("-placed_at")[:50]
    return render(request, "customers/detail.html", {"section": "customers", "customer": customer, "orders": orders})
