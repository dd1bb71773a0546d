"""Hostile and odd files: encodings, BOMs, embedded newlines, huge cells, formulas, wrong types, many rows.

None of them may give a 500 or a partial, silent import: either rows are imported and every bad one is
reported by line and column, or nothing is written and the reason is shown.
"""

import gc
import io
import tracemalloc

import pytest

from crm_site.tenancy import tenant_scope
from customers import importing
from customers.csv_reading import MAX_COLUMNS, MAX_FIELD_CHARS, CsvFileError
from customers.models import Customer, ImportRun, Order
from tests.factories import CustomerFactory
from tests.test_import_pipeline import messages, run_csv

pytestmark = pytest.mark.django_db

PEOPLE = "external_id;email;first_name\r\nC1;ann@example.com;Zoë\r\nC2;bob@example.com;Łukasz\r\n"


def names(workspace):
    with tenant_scope(workspace):
        return dict(Customer.objects.values_list("external_id", "first_name"))


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "utf-32"])
def test_byte_order_marks_decide_the_encoding(workspace, encoding):
    if encoding.endswith("-bom"):
        codec = encoding.removesuffix("-bom")
        content = ("\ufeff" + PEOPLE).encode(codec)
    else:
        content = PEOPLE.encode(encoding)
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, content)
    assert run.status == ImportRun.Status.IMPORTED and run.encoding_note == ""
    assert names(workspace) == {"C1": "Zoë", "C2": "Łukasz"}


def test_a_file_that_is_not_utf8_is_read_as_windows_1252_and_the_user_is_told(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id,email,first_name\nC1,ann@example.com,Zoë\nC2,b@example.com,€uro\n".encode("cp1252"))
    assert run.encoding == "cp1252"
    assert "not valid UTF-8 (first at byte" in run.encoding_note and "line 2" in run.encoding_note
    assert names(workspace) == {"C1": "Zoë", "C2": "€uro"}


def test_newlines_inside_quoted_cells_are_kept_and_lines_are_counted_physically(workspace):
    content = 'id,email,first_name\nC1,ann@example.com,"Ann\nMarie"\nC2,"bob@"\nC3,cid@example.com,"Cid\r\n\r\nJr"\nC4,x@,\n'
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, content)
    assert messages(run) == [
        "line 4, column email: 'bob@' is not a valid e-mail address",
        "line 8, column email: 'x@' is not a valid e-mail address",
    ]
    assert names(workspace) == {"C1": "Ann\nMarie", "C3": "Cid\r\n\r\nJr"}


def test_a_huge_cell_stops_the_import_with_a_clear_message_and_writes_nothing(workspace):
    content = "id,email,first_name\nC1,ann@example.com,Ann\nC2,bob@example.com,\"" + "x" * (MAX_FIELD_CHARS + 10) + "\"\n"
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, content, mode=ImportRun.Mode.SKIP)
    assert run.status == ImportRun.Status.FAILED
    assert run.fatal_error.startswith("Line 3: a cell is longer than 100,000 characters")
    assert names(workspace) == {}


def test_a_quote_left_open_is_reported_not_swallowed_silently(workspace):
    content = 'id,email,first_name\nC1,ann@example.com,Ann\nC2,bob@example.com,"Bob\n' + "C9,x@example.com,Someone\n" * 6000
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, content)
    assert run.status == ImportRun.Status.FAILED
    assert run.fatal_error.startswith("Line 3: a cell is longer than") and "Is a quote (\") left open?" in run.fatal_error
    assert names(workspace) == {}


def test_a_quote_left_open_in_the_first_row_is_refused_at_upload(workspace):
    from django.core.files.uploadedfile import SimpleUploadedFile

    content = 'id,email,first_name\nC1,ann@example.com,"Ann\n' + "C9,x@example.com,Someone\n" * 6000
    with tenant_scope(workspace), pytest.raises(CsvFileError, match="Is a quote"):
        importing.store_upload(SimpleUploadedFile("open.csv", content.encode()), "customers")


def test_a_long_value_is_an_error_of_its_row_not_a_truncation(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id,email,first_name\nC1,ann@example.com," + "A" * 150 + "\n")
    assert messages(run) == ["line 2, column first_name: is longer than 100 characters (150)"]


def test_formula_payloads_are_stored_as_plain_text(workspace):
    content = "id,email,first_name,last_name\nC1,ann@example.com,=cmd|' /C calc'!A0,+SUM(1)\nC2,bob@example.com,@evil,-2+3\n"
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, content)
    assert run.created_count == 2
    with tenant_scope(workspace):
        assert sorted(Customer.objects.values_list("first_name", "last_name")) == [
            ("=cmd|' /C calc'!A0", "+SUM(1)"), ("@evil", "-2+3")]


def test_formula_payloads_in_bad_rows_are_escaped_in_the_error_report(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id,email\n=HYPERLINK(\"http://x\"),bad\n")
    report = importing.error_report_path(run).read_text(encoding="utf-8-sig")
    assert "'=HYPERLINK" in report


def test_wrong_types_are_reported_for_each_cell(workspace):
    CustomerFactory(tenant=workspace, external_id="C1")
    content = (
        "order_id,customer_id,placed_at,total,currency,status\n"
        "O1,C1,2024-13-45,12.5,EUR,placed\n"
        "O2,C1,31.12.2023,abc,EURO,lost\n"
        "O3,C1,12/31/2023 11:30 PM,-5,usd,refunded\n"
        "O4,C1,2023-12-31T23:30:00+01:00,\"1.299,90\",usd,paid\n"
    )
    run = run_csv(workspace, ImportRun.Kind.ORDERS, content)
    assert messages(run) == [
        "line 2, column placed_at: '2024-13-45' is not a date (use e.g. 2024-01-31, 2024-01-31T14:05:00+01:00, "
        "31/01/2024 14:05, 31.01.2024, 31 Jan 2024, Jan 31, 2024)",
        "line 3, column total: 'abc' is not a number",
        "line 3, column currency: 'EURO' is not a three-letter currency code such as EUR",
        "line 3, column status: 'lost' is not an order status (placed, refunded, partially_refunded, cancelled)",
        "line 4, column total: '-5' is negative",
    ]
    with tenant_scope(workspace):
        order = Order.objects.get()
    assert (order.external_id, str(order.total), order.currency) == ("O4", "1299.90", "USD")
    assert order.placed_at.isoformat() == "2023-12-31T22:30:00+00:00"


def test_rows_longer_than_the_header_are_errors_and_short_rows_are_padded(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id,email,first_name\nC1,ann@example.com\nC2,bob@example.com,Bob,extra\n")
    assert messages(run) == ["line 3: 4 cells, but the header has 3 columns"]
    assert names(workspace) == {"C1": ""}


def test_too_many_columns_is_refused(workspace):
    header = ",".join(f"c{n}" for n in range(MAX_COLUMNS + 1))
    with tenant_scope(workspace), pytest.raises(CsvFileError, match="columns; at most 200"):
        from django.core.files.uploadedfile import SimpleUploadedFile

        importing.store_upload(SimpleUploadedFile("wide.csv", f"{header}\n{header}\n".encode()), "customers")


def test_nul_characters_in_a_utf16_file_are_an_error_of_the_cell(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id,email\nC1,ann\x00@example.com\nC2,bob@example.com\n".encode("utf-16"))
    assert messages(run) == ["line 2, column email: contains a NUL character"]
    assert names(workspace) == {"C2": ""}


def test_semicolons_tabs_and_blank_lines(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, "id\temail\n\nC1\tann@example.com\n\n\nC2\tbob@\n")
    assert run.delimiter == "\t"
    assert messages(run) == ["line 6, column email: 'bob@' is not a valid e-mail address"]


def _customers_csv(rows: int) -> bytes:
    out = io.StringIO()
    out.write("external_id,email,first_name,last_name,signup\n")
    for number in range(rows):
        out.write(f"C{number},person{number}@example.com,First{number},Last{number},2024-01-{number % 28 + 1:02d}\n")
    return out.getvalue().encode()


def test_a_200k_row_file_imports_in_batches(workspace):
    run = run_csv(workspace, ImportRun.Kind.CUSTOMERS, _customers_csv(200_000), mode=ImportRun.Mode.REJECT)
    assert (run.status, run.rows_read, run.created_count) == (ImportRun.Status.IMPORTED, 200_000, 200_000)
    with tenant_scope(workspace):
        assert Customer.objects.count() == 200_000


def _peak_memory_of_validation(workspace, rows: int) -> int:
    """Peak Python memory while a file of ``rows`` rows is read and staged (the file itself is on disk)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    with tenant_scope(workspace):
        run = importing.store_upload(SimpleUploadedFile("big.csv", _customers_csv(rows)), "customers")
        gc.collect()
        tracemalloc.start()
        try:
            importing.run_import(run)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def test_memory_does_not_grow_with_the_file_the_import_streams(workspace, other_workspace, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_ROWS", 2000)
    small = _peak_memory_of_validation(workspace, 6_000)
    large = _peak_memory_of_validation(other_workspace, 30_000)
    assert large < small * 1.6, (small, large)
