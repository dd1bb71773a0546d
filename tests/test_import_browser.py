"""In a real browser, with a real Celery worker: a marketer imports a customer file that has one bad row."""

import csv
import io

import pytest
from playwright.sync_api import expect

from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from customers.models import Customer
from tests.factories import MembershipFactory, UserFactory, WorkspaceFactory

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SHOP_EXPORT = (
    "Customer no.,Mail address,Given,Family name\n"
    "K-1001,ada@example.com,Ada,Lovelace\n"
    "K-1002,grace@example.com,Grace,Hopper\n"
    "K-1003,jan@,Jan,Jansen\n"
    "K-1004,edsger@example.com,Edsger,Dijkstra\n"
)


def test_marketer_imports_the_good_rows_reads_the_error_and_downloads_the_bad_row(celery_worker, page, login, tmp_path):
    acme = WorkspaceFactory(name="Acme Coffee", slug="acme")
    user = UserFactory(username="mara")
    MembershipFactory(workspace=acme, user=user, role=Role.MARKETER)
    export = tmp_path / "shop-export.csv"
    export.write_text(SHOP_EXPORT, encoding="utf-8")

    login(user)
    page.wait_for_url("**/w/acme/")
    page.goto("/w/acme/customers/import/")
    page.get_by_label("Customers", exact=True).check()
    page.set_input_files("input[type=file]", str(export))
    page.get_by_role("button", name="Upload and preview").click()

    # The mapping page shows the file and proposes fields from the header; "Given" is not recognised.
    expect(page.locator("#import-preview")).to_contain_text("jan@")
    expect(page.get_by_label("Field for column Customer no.")).to_have_value("external_id")
    expect(page.get_by_label("Field for column Mail address")).to_have_value("email")
    expect(page.get_by_label("Field for column Family name")).to_have_value("last_name")
    expect(page.get_by_label("Field for column Given")).to_have_value("")
    page.get_by_label("Field for column Given").select_option("first_name")
    page.get_by_label("Import the good rows; download the bad ones").check()
    page.get_by_role("button", name="Import", exact=True).click()

    # The worker runs it; the page follows the progress and then shows the outcome.
    status = page.locator("#import-status")
    expect(status).to_contain_text("Imported.", timeout=30_000)
    expect(status).to_contain_text("1 row with errors was skipped.")
    expect(page.locator("#count-created")).to_have_text("3")
    expect(page.locator("#count-errors")).to_have_text("1")
    errors = page.locator("#import-errors tbody tr")
    expect(errors).to_have_count(1)
    expect(errors.first).to_contain_text("line 4, column Mail address: 'jan@' is not a valid e-mail address")

    with page.expect_download() as download_info:
        page.locator("#download-errors").click()
    download = download_info.value
    assert download.suggested_filename == "shop-export-errors.csv"
    rows = list(csv.reader(io.StringIO(open(download.path(), encoding="utf-8-sig").read())))
    assert rows == [
        ["Customer no.", "Mail address", "Given", "Family name", "error", "line"],
        ["K-1003", "jan@", "Jan", "Jansen", "Mail address: 'jan@' is not a valid e-mail address", "4"],
    ]

    with tenant_scope(acme):
        imported = dict(Customer.objects.values_list("external_id", "first_name"))
    assert imported == {"K-1001": "Ada", "K-1002": "Grace", "K-1004": "Edsger"}
    assert not [text for text in page.console_errors if "Content Security Policy" in text]
