"""CSV import, end to end without the web: upsert by external id, normalisation, duplicates, reject vs skip."""

import csv
import datetime as dt
import io
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from crm_site.tenancy import tenant_scope
from customers import importing
from customers.models import ConsentEvent, Customer, ImportRun, Interaction, Order, OrderLine, Product
from tests.factories import CustomerFactory, OrderFactory

pytestmark = pytest.mark.django_db


def run_csv(workspace, kind, content, *, mapping=None, mode=ImportRun.Mode.SKIP, options=None, name="upload.csv"):
    """Upload ``content`` (text or bytes) as a ``kind`` import, map it (guessed unless given), run it; return the run."""
    data = content.encode() if isinstance(content, str) else content
    with tenant_scope(workspace):
        run = importing.store_upload(SimpleUploadedFile(name, data, content_type="text/csv"), kind)
        if mapping is not None:
            run.mapping = {column: mapping.get(column, "") for column in run.header}
        run.mode = mode
        run.options = {"default_region": "DE", "day_first": True, **(options or {})}
        run.save()
        importing.run_import(run)
        run.refresh_from_db()
    return run


def messages(run):
    return [f"line {e['line']}{', column ' + e['column'] if e['column'] else ''}: {e['message']}" for e in run.errors]


def read_error_report(run):
    path = importing.error_report_path(run)
    assert path is not None, "an error report was expected"
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


CUSTOMERS = """external_id,email,phone,first_name,last_name,signup date
C1, Ann@Example.COM ,030 1234567,Ann,Lee,2024-01-31
C2,bob@bücher.de,+44 20 7946 0958,Bob,Stone,31/01/2024
C3,,,Cid,,Jan 5 2024
"""


def test_customers_are_created_with_normalised_email_phone_and_dates(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, CUSTOMERS.replace("Jan 5 2024", "\"Jan 5, 2024\""))
    assert run.status == ImportRun.Status.IMPORTED, run.errors
    assert (run.created_count, run.updated_count, run.error_count) == (3, 0, 0)
    with tenant_scope(workspace):
        ann = Customer.objects.get(external_id="C1")
        bob = Customer.objects.get(external_id="C2")
        cid = Customer.objects.get(external_id="C3")
    assert (ann.email, ann.phone) == ("ann@example.com", "+49301234567")
    assert (bob.email, bob.phone) == ("bob@xn--bcher-kva.de", "+442079460958")
    assert ann.first_seen_at.date() == dt.date(2024, 1, 31) and bob.first_seen_at.date() == dt.date(2024, 1, 31)
    assert cid.first_seen_at.date() == dt.date(2024, 1, 5)
    assert not ann.email_opt_in, "a customer import never subscribes anyone"


def test_reimporting_the_same_file_updates_and_never_duplicates(workspace):
    first = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "external_id,email,first_name\nC1,ann@example.com,Ann\n")
    again = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "external_id,email,first_name\nC1,ann@example.com,Ann\n")
    changed = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "external_id,email,first_name\nC1,ann@example.com,Anna\n")
    assert (first.created_count, again.created_count, changed.created_count) == (1, 0, 0)
    assert again.summary["unchanged"] == 1 and again.updated_count == 0
    assert changed.updated_count == 1
    with tenant_scope(workspace):
        assert Customer.objects.count() == 1
        assert Customer.objects.get().first_name == "Anna"


def test_existing_customer_without_external_id_is_matched_by_email_and_blank_cells_keep_values(workspace):
    CustomerFactory(tenant=workspace, external_id="", email="ann@example.com", first_name="Ann", last_name="Lee")
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id,email,last name\nC9,ANN@example.com,\n")
    assert (run.created_count, run.updated_count) == (0, 1)
    with tenant_scope(workspace):
        ann = Customer.objects.get()
    assert (ann.external_id, ann.last_name) == ("C9", "Lee")


def test_duplicates_within_the_file_and_against_another_customer_are_reported_by_line(workspace):
    CustomerFactory(tenant=workspace, external_id="X1", email="taken@example.com")
    content = "external_id,email\nC1,a@example.com\nC1,b@example.com\nC2,A@example.com\nC3,taken@example.com\n"
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, content)
    assert messages(run) == [
        "line 3, column external_id: 'C1' external id is also on line 2",
        "line 4, column email: 'a@example.com' e-mail address is also on line 2",
        "line 5, column email: 'taken@example.com' already belongs to another customer (external id 'X1')",
    ]
    assert (run.created_count, run.skipped_count) == (1, 3)


def test_reject_mode_writes_nothing_when_one_row_is_bad(workspace):
    content = "external_id,email\nC1,ann@example.com\nC2,bob@\nC3,cid@example.com\n"
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, content, mode=ImportRun.Mode.REJECT)
    assert run.status == ImportRun.Status.REJECTED
    assert messages(run) == ["line 3, column email: 'bob@' is not a valid e-mail address"]
    assert (run.created_count, run.skipped_count, run.error_count) == (0, 3, 1)
    with tenant_scope(workspace):
        assert Customer.objects.count() == 0


def test_skip_mode_imports_good_rows_and_offers_the_bad_ones_with_an_error_column(workspace):
    content = "external_id,email,phone\nC1,ann@example.com,\nC2,bob@,12\nC3,cid@example.com,\n"
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, content)
    assert run.status == ImportRun.Status.IMPORTED
    assert (run.created_count, run.skipped_count, run.error_count) == (2, 1, 1)
    [bad] = read_error_report(run)
    assert (bad["external_id"], bad["email"], bad["line"]) == ("C2", "bob@", "3")
    assert "email: 'bob@' is not a valid e-mail address" in bad["error"]
    assert "phone: '12' is not a valid phone number" in bad["error"]


def test_the_upload_is_deleted_after_the_import(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "email\nann@example.com\n")
    assert run.stored_path == ""
    assert not any(Path(settings.MEDIA_ROOT, "imports", str(workspace.pk)).glob("*[!s].csv"))


def test_custom_attributes_are_kept_and_merged(workspace):
    mapping = {"id": "external_id", "tier": importing.ATTRIBUTE, "shoe size": importing.ATTRIBUTE}
    run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id,tier,shoe size\nC1,gold,42\n", mapping=mapping)
    run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id,tier,shoe size\nC1,platinum,\n", mapping=mapping)
    with tenant_scope(workspace):
        assert Customer.objects.get().attributes == {"tier": "platinum", "shoe size": "42"}


# --- Orders -------------------------------------------------------------------------------------------


def test_orders_without_lines_reference_customers_by_external_id_or_email(workspace):
    CustomerFactory(tenant=workspace, external_id="C1", email="ann@example.com")
    CustomerFactory(tenant=workspace, external_id="C2", email="bob@example.com")
    content = (
        "order_id,customer_id,email,order date,total,currency\n"
        "O1,C1,,2024-02-01 10:00,\"1,234.50\",eur\n"
        "O2,,BOB@example.com,02/03/2024,19.90,\n"
        "O3,C404,,2024-02-03,5,\n"
    )
    run = run_csv(workspace, ImportRun.Kind.ORDERS, content)
    assert messages(run) == ["line 4, column customer_id: no customer with external id 'C404' (import the customers first)"]
    with tenant_scope(workspace):
        o1, o2 = Order.objects.select_related("customer").order_by("external_id")
    assert (o1.customer.external_id, o1.total, o1.currency) == ("C1", Decimal("1234.50"), "EUR")
    assert (o2.customer.external_id, o2.placed_at.date()) == ("C2", dt.date(2024, 3, 2))


def test_order_reimport_updates_and_keeps_orders_missing_from_the_file(workspace):
    customer = CustomerFactory(tenant=workspace, external_id="C1")
    OrderFactory(tenant=workspace, customer=customer, external_id="OLD")
    run_csv(workspace, ImportRun.Kind.ORDERS, "order_id,customer_id,date,total\nO1,C1,2024-01-01,10\n")
    run = run_csv(workspace, ImportRun.Kind.ORDERS, "order_id,customer_id,date,total\nO1,C1,2024-01-01,12\n")
    assert (run.created_count, run.updated_count) == (0, 1)
    with tenant_scope(workspace):
        assert sorted(Order.objects.values_list("external_id", "total")) == [("O1", Decimal("12.00")), ("OLD", Decimal("49.90"))]


def test_orders_with_lines_are_grouped_by_order_id_and_lines_replace_on_reimport(workspace):
    CustomerFactory(tenant=workspace, external_id="C1")
    content = (
        "order_id,customer_id,placed_at,sku,product,qty,unit price\n"
        "O1,C1,2024-01-01,BEAN,Beans,2,8.50\n"
        "O2,C1,2024-01-05,MUG,Mug,1,12\n"
        "O1,C1,2024-01-01,MUG,Mug,1,12\n"
    )
    first = run_csv(workspace, ImportRun.Kind.ORDERS, content)
    assert first.created_count == 2 and first.summary["order_lines"] == 3, first.errors
    second = run_csv(workspace, ImportRun.Kind.ORDERS, content)
    assert (second.created_count, second.summary["order_lines"]) == (0, 3)
    with tenant_scope(workspace):
        o1 = Order.objects.get(external_id="O1")
        assert o1.total == Decimal("29.00")
        assert sorted(o1.lines.values_list("sku", "quantity", "line_total")) == [
            ("BEAN", 2, Decimal("17.00")), ("MUG", 1, Decimal("12.00"))]
        assert OrderLine.objects.count() == 3
        assert set(Product.objects.values_list("sku", "name")) == {("BEAN", "Beans"), ("MUG", "Mug")}
        assert o1.lines.get(sku="MUG").product.name == "Mug"


def test_a_bad_line_skips_its_whole_order(workspace):
    CustomerFactory(tenant=workspace, external_id="C1")
    content = (
        "order_id,customer_id,placed_at,sku,qty,unit price\n"
        "O1,C1,2024-01-01,BEAN,2,8.50\n"
        "O1,C1,2024-01-01,MUG,one,12\n"
        "O2,C1,2024-01-02,MUG,1,12\n"
    )
    run = run_csv(workspace, ImportRun.Kind.ORDERS, content)
    assert messages(run) == [
        "line 2, column order_id: another line of order 'O1' has an error",
        "line 3, column qty: 'one' is not a whole number",
    ]
    with tenant_scope(workspace):
        assert list(Order.objects.values_list("external_id", flat=True)) == ["O2"]


def test_unparseable_date_is_an_error_by_line_and_column(workspace):
    CustomerFactory(tenant=workspace, external_id="C1")
    run = run_csv(workspace, ImportRun.Kind.ORDERS, "order_id,customer_id,date,total\nO1,C1,next tuesday,5\n")
    assert messages(run)[0].startswith("line 2, column date: 'next tuesday' is not a date")


# --- Consent ------------------------------------------------------------------------------------------


def test_consent_rows_append_to_the_ledger_and_update_the_derived_opt_in(workspace):
    CustomerFactory(tenant=workspace, external_id="C1", email="ann@example.com")
    CustomerFactory(tenant=workspace, external_id="C2", email="bob@example.com", phone="+49301234567")
    content = (
        "customer_id,channel,subscribed,date\n"
        "C1,email,yes,2024-01-01T10:00:00Z\n"
        "C2,sms,yes,2024-01-01T10:00:00Z\n"
        "C2,email,yes,2024-01-01T10:00:00Z\n"
        "C2,email,no,2024-02-01T10:00:00Z\n"
    )
    run = run_csv(workspace, ImportRun.Kind.CONSENT, content)
    assert run.created_count == 4, run.errors
    again = run_csv(workspace, ImportRun.Kind.CONSENT, content)
    assert (again.created_count, again.summary["unchanged"]) == (0, 4)
    with tenant_scope(workspace):
        ann, bob = Customer.objects.order_by("external_id")
        assert (ann.email_opt_in, ann.sms_opt_in) == (True, False)
        assert (bob.email_opt_in, bob.sms_opt_in) == (False, True)
        assert ConsentEvent.objects.count() == 4
        assert set(ConsentEvent.objects.values_list("method", flat=True)) == {"import"}
        assert Interaction.objects.filter(kind="consent").count() == 4


def test_consent_import_with_a_default_channel_and_an_unknown_customer(workspace):
    CustomerFactory(tenant=workspace, external_id="C1", email="ann@example.com")
    run = run_csv(workspace, ImportRun.Kind.CONSENT, "email,consent\nann@example.com,granted\nzed@example.com,yes\n",
                  options={"default_channel": "email"})
    assert messages(run) == ["line 3, column email: no customer with e-mail 'zed@example.com' (import the customers first)"]
    with tenant_scope(workspace):
        assert Customer.objects.get().email_opt_in


def test_another_workspace_sees_nothing_of_an_import(workspace, other_workspace):
    run_csv(workspace, ImportRun.Kind.CUSTOMERS, "external_id,email\nC1,ann@example.com\n")
    with tenant_scope(other_workspace):
        assert Customer.objects.count() == 0 and ImportRun.objects.count() == 0
