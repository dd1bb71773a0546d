"""CSV import of customers, orders (with or without lines) and consent events.

The pipeline, for any size of file:

1. ``store_upload`` keeps the file under MEDIA_ROOT/imports/<tenant>/ (never served), detects its encoding
   and delimiter, and checks it has a header and rows. ``guess_mapping`` proposes a field per column.
2. ``run_import`` (in a Celery task) streams the records once, validates and normalises each row in
   Python, and bulk-loads good rows into a temporary staging table (``COPY`` on PostgreSQL, batched
   inserts on SQLite); bad cells go to a temporary error table with their line and column.
3. Checks that need the whole file or the database run as SQL over the staging table: duplicates within
   the file, unknown customers, e-mail addresses that belong to another customer.
4. In "reject" mode any error means nothing is written. Otherwise one transaction merges the staging
   table into the real tables with set-based ``INSERT … ON CONFLICT (tenant_id, external_id) DO UPDATE``
   (upsert by external id, so a re-import updates and never duplicates; history is never deleted).
5. The first errors are kept on the ImportRun for the page; all bad rows are written to a CSV with an
   ``error`` column, and the upload is deleted.
"""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import json
import logging
import re
import time
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models.expressions import RawSQL
from django.utils import timezone

from crm_site.tenancy import current_tenant_id, tenant_transaction
from customers import csv_reading
from customers.csv_reading import CsvFileError, FileFormat
from customers.models import ConsentEvent, Customer, ImportRun, Order, OrderLine
from customers.normalize import (
    InvalidValue,
    escape_formula,
    normalize_currency,
    normalize_datetime,
    normalize_decimal,
    normalize_email,
    normalize_flag,
    normalize_integer,
    normalize_phone,
    normalize_time_zone,
)
from customers.signals import send_first_seen_changed, send_orders_changed

log = logging.getLogger(__name__)

BATCH_ROWS = 20_000
IMPORT_WORK_MEM = "64MB"
ERRORS_SHOWN = 200
ATTRIBUTE = "attribute"  # mapping value: keep the column as a custom attribute of the customer


def max_upload_bytes() -> int:
    """Return the largest accepted upload in bytes (setting RAPPORT_IMPORT_MAX_BYTES, default 512 MiB)."""
    return int(getattr(settings, "RAPPORT_IMPORT_MAX_BYTES", 512 * 1024 * 1024))


def retention() -> dt.timedelta:
    """Return how long uploads and error reports are kept (setting RAPPORT_IMPORT_RETENTION_HOURS, default 24)."""
    return dt.timedelta(hours=float(getattr(settings, "RAPPORT_IMPORT_RETENTION_HOURS", 24)))


# --- What can be imported ------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """A field a column can be mapped to: its stage column, value type and the header names that suggest it."""

    name: str
    label: str
    type: str  # text, email, phone, datetime, amount, signed_amount, integer, time_zone, currency, channel, action, status, ip
    sql_type: str = "text"
    max_length: int = 0
    synonyms: tuple[str, ...] = ()


def _max(model, name):
    return model._meta.get_field(name).max_length


CUSTOMER_FIELDS = [
    FieldSpec("external_id", "External id", "text", max_length=_max(Customer, "external_id"),
              synonyms=("externalid", "id", "customerid", "customernumber", "customerno", "clientid", "kundennummer")),
    FieldSpec("email", "E-mail", "email", synonyms=("email", "emailaddress", "mail", "courriel")),
    FieldSpec("phone", "Phone", "phone", synonyms=("phone", "phonenumber", "mobile", "mobilephone", "tel",
                                                   "telephone", "cell", "cellphone", "sms")),
    FieldSpec("first_name", "First name", "text", max_length=_max(Customer, "first_name"),
              synonyms=("firstname", "givenname", "forename", "vorname", "prenom")),
    FieldSpec("last_name", "Last name", "text", max_length=_max(Customer, "last_name"),
              synonyms=("lastname", "surname", "familyname", "nachname", "nom")),
    FieldSpec("time_zone", "Time zone", "time_zone", synonyms=("timezone", "tz")),
    FieldSpec("locale", "Locale", "text", max_length=_max(Customer, "locale"), synonyms=("locale", "language", "lang")),
    FieldSpec("first_seen_at", "First seen", "datetime", "timestamptz",
              synonyms=("firstseenat", "firstseen", "createdat", "signupdate", "signedupat", "registeredat",
                        "customersince", "since")),
]

ORDER_FIELDS = [
    FieldSpec("order_external_id", "Order id", "text", max_length=_max(Order, "external_id"),
              synonyms=("orderid", "orderexternalid", "ordernumber", "orderno", "externalid", "order", "id")),
    FieldSpec("customer_external_id", "Customer external id", "text", max_length=_max(Customer, "external_id"),
              synonyms=("customerid", "customerexternalid", "customernumber", "customerno", "clientid")),
    FieldSpec("customer_email", "Customer e-mail", "email", synonyms=("customeremail", "email", "emailaddress")),
    FieldSpec("placed_at", "Placed at", "datetime", "timestamptz",
              synonyms=("placedat", "orderdate", "date", "createdat", "orderedat", "purchasedat", "purchasedate")),
    FieldSpec("total", "Order total", "amount", "numeric(12,2)",
              synonyms=("total", "ordertotal", "amount", "grandtotal", "totalprice")),
    FieldSpec("refunded_amount", "Refunded amount", "amount", "numeric(12,2)",
              synonyms=("refundedamount", "refunded", "refund", "refunds")),
    FieldSpec("currency", "Currency", "currency", synonyms=("currency", "currencycode")),
    FieldSpec("channel", "Sales channel", "text", max_length=_max(Order, "channel"),
              synonyms=("channel", "saleschannel", "source")),
    FieldSpec("status", "Status", "status", synonyms=("status", "orderstatus")),
    FieldSpec("sku", "Line: SKU", "text", max_length=_max(OrderLine, "sku"),
              synonyms=("sku", "productsku", "itemsku", "productcode", "articlenumber")),
    FieldSpec("product_name", "Line: product name", "text", max_length=200,
              synonyms=("productname", "product", "itemname", "item", "title")),
    FieldSpec("quantity", "Line: quantity", "integer", "integer", synonyms=("quantity", "qty")),
    FieldSpec("unit_price", "Line: unit price", "amount", "numeric(12,2)", synonyms=("unitprice", "price", "itemprice")),
    FieldSpec("line_total", "Line: total", "amount", "numeric(12,2)", synonyms=("linetotal", "lineamount", "subtotal")),
    FieldSpec("returned_quantity", "Line: returned quantity", "integer", "integer",
              synonyms=("returnedquantity", "returnedqty", "returned", "returns")),
]
LINE_FIELDS = {"sku", "product_name", "quantity", "unit_price", "line_total", "returned_quantity"}

CONSENT_FIELDS = [
    FieldSpec("customer_external_id", "Customer external id", "text", max_length=_max(Customer, "external_id"),
              synonyms=("customerid", "customerexternalid", "externalid", "customernumber", "id")),
    FieldSpec("customer_email", "Customer e-mail", "email", synonyms=("customeremail", "email", "emailaddress")),
    FieldSpec("channel", "Channel", "channel", synonyms=("channel", "consentchannel")),
    FieldSpec("action", "Action (grant/withdraw)", "action",
              synonyms=("action", "consent", "subscribed", "optin", "acceptsmarketing", "status", "granted")),
    FieldSpec("occurred_at", "Occurred at", "datetime", "timestamptz",
              synonyms=("occurredat", "date", "timestamp", "consentdate", "consentedat", "time", "at")),
    FieldSpec("purpose", "Purpose", "text", max_length=_max(ConsentEvent, "purpose"), synonyms=("purpose",)),
    FieldSpec("method", "Method", "text", max_length=_max(ConsentEvent, "method"), synonyms=("method",)),
    FieldSpec("source", "Source detail", "text", max_length=_max(ConsentEvent, "source"),
              synonyms=("source", "sourcedetail", "form")),
    FieldSpec("ip_address", "IP address", "ip", "text", synonyms=("ip", "ipaddress")),
    FieldSpec("user_agent", "User agent", "text", max_length=_max(ConsentEvent, "user_agent"),
              synonyms=("useragent", "browser")),
    FieldSpec("wording_version", "Wording version", "text", max_length=_max(ConsentEvent, "wording_version"),
              synonyms=("wordingversion", "wording", "version")),
    FieldSpec("confirmed_at", "Double opt-in confirmed at", "datetime", "timestamptz",
              synonyms=("confirmedat", "confirmed", "doubleoptinat", "doioptinat")),
]

FIELDS = {ImportRun.Kind.CUSTOMERS: CUSTOMER_FIELDS, ImportRun.Kind.ORDERS: ORDER_FIELDS,
          ImportRun.Kind.CONSENT: CONSENT_FIELDS}


def field_choices(kind: str) -> list[tuple[str, str]]:
    """Return the (value, label) choices for mapping a column of a ``kind`` import ('' = ignore)."""
    choices = [("", "— ignore this column —")]
    choices += [(spec.name, spec.label) for spec in FIELDS[kind]]
    if kind == ImportRun.Kind.CUSTOMERS:
        choices.append((ATTRIBUTE, "Custom attribute (named after the column)"))
    return choices


def _header_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def guess_mapping(kind: str, header: list[str]) -> dict[str, str]:
    """Return a proposed mapping {column name: field name or ''} from the header names.

    An exact synonym wins over a partial one; each field is proposed for one column at most.
    """
    specs = FIELDS[kind]
    mapping = {name: "" for name in header}
    taken: set[str] = set()
    keys = {name: _header_key(name) for name in header}
    for exact in (True, False):
        for spec in specs:
            if spec.name in taken:
                continue
            candidates = {_header_key(spec.name), _header_key(spec.label), *spec.synonyms}
            for name in header:
                if mapping[name]:
                    continue
                key = keys[name]
                hit = key in candidates if exact else (len(key) > 3 and any(len(c) > 3 and c in key for c in candidates))
                if hit:
                    mapping[name] = spec.name
                    taken.add(spec.name)
                    break
    return mapping


def validate_mapping(kind: str, mapping: dict[str, str], options: dict) -> list[str]:
    """Return what is wrong with a column mapping (empty when it can be imported)."""
    problems = []
    allowed = {name for name, _ in field_choices(kind)}
    used: dict[str, str] = {}
    for column, target in mapping.items():
        if target not in allowed:
            problems.append(f"Column “{column}”: unknown field {target!r}.")
        elif target and target != ATTRIBUTE:
            if target in used:
                problems.append(f"“{target}” is chosen for both “{used[target]}” and “{column}”.")
            used[target] = column
    mapped = set(used)
    if kind == ImportRun.Kind.CUSTOMERS and not mapped & {"external_id", "email"}:
        problems.append("Map a column to External id or E-mail: customers are matched by them.")
    if kind in (ImportRun.Kind.ORDERS, ImportRun.Kind.CONSENT) and not mapped & {"customer_external_id", "customer_email"}:
        problems.append("Map a column to Customer external id or Customer e-mail.")
    if kind == ImportRun.Kind.ORDERS:
        for required in ("order_external_id", "placed_at"):
            if required not in mapped:
                problems.append(f"Map a column to {_label(kind, required)}.")
        if not mapped & {"total", "unit_price", "line_total"}:
            problems.append("Map a column to Order total (or to the line unit price or line total).")
    if kind == ImportRun.Kind.CONSENT:
        if "action" not in mapped:
            problems.append("Map a column to Action (grant/withdraw).")
        if "channel" not in mapped and not options.get("default_channel"):
            problems.append("Map a column to Channel, or choose the channel of every row.")
    return problems


def _label(kind: str, name: str) -> str:
    return next(spec.label for spec in FIELDS[kind] if spec.name == name)


# --- Upload ----------------------------------------------------------------------------------------


def import_dir(tenant_id: int) -> Path:
    """Return the private folder of a workspace's uploads and error reports (created if missing)."""
    folder = Path(settings.MEDIA_ROOT) / "imports" / str(int(tenant_id))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def store_upload(uploaded_file, kind: str, *, user=None) -> ImportRun:
    """Keep an uploaded CSV file privately and return its ImportRun, waiting for a column mapping.

    Raises CsvFileError (the file is kept nowhere) when it is too large, empty, binary, has no header or
    has a header and no rows. Runs inside the workspace's scope.
    """
    limit = max_upload_bytes()
    if uploaded_file.size > limit:
        raise CsvFileError(f"The file is {_megabytes(uploaded_file.size)}; the limit is {_megabytes(limit)}.")
    tenant_id = current_tenant_id()
    purge_expired_files(tenant_id)
    path = import_dir(tenant_id) / f"{uuid.uuid4().hex}.csv"
    with path.open("wb") as destination:
        for chunk in uploaded_file.chunks():
            destination.write(chunk)
    try:
        file_format = csv_reading.detect_format(path)
        header, rows = csv_reading.preview(path, file_format, rows=1)
        if not rows:
            raise CsvFileError("The file has a header row but no data rows.")
    except CsvFileError:
        path.unlink(missing_ok=True)
        raise
    except UnicodeDecodeError as error:
        path.unlink(missing_ok=True)
        raise CsvFileError(f"The file cannot be decoded as {file_format.encoding} ({error.reason}).") from None
    run = ImportRun.objects.create(
        kind=kind,
        original_name=Path(uploaded_file.name or "upload.csv").name[:255],
        stored_path=str(path.relative_to(settings.MEDIA_ROOT)),
        size=path.stat().st_size,
        encoding=file_format.encoding,
        delimiter=file_format.delimiter,
        encoding_note=file_format.note,
        line_count=file_format.line_count,
        header=header,
        mapping=guess_mapping(kind, header),
        created_by=user,
    )
    return run


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):,.1f} MB"


def upload_path(run: ImportRun) -> Path | None:
    """Return the stored upload of a run, or None once it was deleted."""
    if not run.stored_path:
        return None
    path = Path(settings.MEDIA_ROOT) / run.stored_path
    return path if path.exists() else None


def file_format_of(run: ImportRun) -> FileFormat:
    """Return how to read a run's stored file."""
    return FileFormat(run.encoding, run.delimiter, run.encoding_note, run.line_count)


def preview_rows(run: ImportRun, rows: int = 10) -> list[csv_reading.Record]:
    """Return the first records of a run's file for the mapping page (empty once the file is gone)."""
    path = upload_path(run)
    if path is None:
        return []
    try:
        return csv_reading.preview(path, file_format_of(run), rows=rows)[1]
    except (CsvFileError, UnicodeDecodeError):
        return []


def purge_expired_files(tenant_id: int | None = None) -> int:
    """Delete uploads and error reports older than the retention period; return how many files went.

    ``tenant_id`` limits the sweep to one workspace's folder (None: every workspace).
    """
    root = Path(settings.MEDIA_ROOT) / "imports"
    folders = [root / str(tenant_id)] if tenant_id is not None else [p for p in root.glob("*") if p.is_dir()]
    cutoff = time.time() - retention().total_seconds()
    removed = 0
    for folder in folders:
        for path in folder.glob("*.csv"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def start_import(run: ImportRun, *, mapping: dict, mode: str, options: dict, user=None):
    """Save a run's mapping and options and queue it; return its BackgroundJob (the task starts after commit).

    Raises CsvFileError when the run was already started or its upload expired.
    """
    from django.db import transaction

    from crm_site.jobs import start_job
    from customers.tasks import run_csv_import

    if run.status != ImportRun.Status.UPLOADED:
        raise CsvFileError("This import was already started.")
    if upload_path(run) is None:
        raise CsvFileError("The uploaded file is no longer there (uploads are kept for a limited time); upload it again.")
    job = start_job("import", user=user, total=max(run.line_count - 1, 0), message=f"Queued: {run.original_name}")
    run.mapping, run.mode, run.options, run.status, run.job = mapping, mode, options, ImportRun.Status.QUEUED, job
    run.save(update_fields=["mapping", "mode", "options", "status", "job"])
    tenant_id, run_id, job_id = run.tenant_id, run.pk, job.pk
    transaction.on_commit(lambda: run_csv_import.delay(tenant_id, run_id, job_id))
    return job


# --- Row validation --------------------------------------------------------------------------------


@dataclass
class ImportOptions:
    time_zone: dt.tzinfo
    day_first: bool = True
    default_region: str = ""
    default_channel: str = ""
    currency: str = "EUR"


_CHANNELS = {"email": "email", "e-mail": "email", "mail": "email", "sms": "sms", "text": "sms", "mobile": "sms",
             "phone": "sms"}
_STATUSES = {
    "placed": "placed", "paid": "placed", "completed": "placed", "complete": "placed", "fulfilled": "placed",
    "shipped": "placed", "delivered": "placed", "open": "placed",
    "refunded": "refunded", "partially_refunded": "partially_refunded", "partially refunded": "partially_refunded",
    "partiallyrefunded": "partially_refunded", "cancelled": "cancelled", "canceled": "cancelled",
}


# Values a column repeats (amounts, quantities, currencies, statuses, an order's fields on each of its lines) are
# parsed once per distinct text. The memory is bounded: after MEMO_LIMIT distinct texts it starts over if most
# lookups were repeats, and stops remembering (but for the previous cell) if most were new, as with e-mail addresses.
MEMO_LIMIT = 2048
# Types whose parsing is worth remembering (text only checks a length).
_MEMOIZED_TYPES = {"email", "phone", "datetime", "amount", "integer", "time_zone", "currency", "channel", "action",
                   "status", "ip"}
_UNSET = object()


class _Rejected(str):
    """A remembered InvalidValue message."""


def _memoized(parse: Callable[[str], object], limit: int = MEMO_LIMIT) -> Callable[[str], object]:
    """Return ``parse`` remembering its answer (or its complaint) per distinct text (see MEMO_LIMIT)."""
    seen: dict[str, object] = {}
    lookup = seen.get
    hits = 0
    remembering = True
    previous_raw, previous_value = _UNSET, None

    def parse_once(raw: str):
        nonlocal hits, remembering, previous_raw, previous_value
        if raw == previous_raw:
            value = previous_value
        else:
            value = lookup(raw, _UNSET)
            if value is _UNSET:
                try:
                    value = parse(raw)
                except InvalidValue as error:
                    value = _Rejected(str(error))
                if remembering:
                    if len(seen) >= limit:
                        remembering = hits >= limit // 2
                        seen.clear()
                        hits = 0
                    if remembering:
                        seen[raw] = value
            else:
                hits += 1
            previous_raw, previous_value = raw, value
        if type(value) is _Rejected:
            raise InvalidValue(value)
        return value

    return parse_once


def _parser(spec: FieldSpec, options: ImportOptions) -> Callable[[str], object]:
    """Return the function that turns a cell of ``spec``'s column into its stage value (raises InvalidValue)."""
    parse = _plain_parser(spec, options)
    return _memoized(parse) if spec.type in _MEMOIZED_TYPES else parse


def _plain_parser(spec: FieldSpec, options: ImportOptions) -> Callable[[str], object]:
    if spec.type == "text":
        limit = spec.max_length

        def parse_text(raw: str) -> str:
            if limit and len(raw) > limit:
                raise InvalidValue(f"is longer than {limit} characters ({len(raw):,})")
            return raw

        return parse_text
    if spec.type == "email":
        return normalize_email
    if spec.type == "phone":
        return lambda raw: normalize_phone(raw, options.default_region)
    if spec.type == "datetime":
        tz, day_first = options.time_zone, options.day_first
        fromisoformat = dt.datetime.fromisoformat

        def parse_datetime(raw: str) -> dt.datetime:
            try:  # the common machine-export case, without the general parser's overhead
                value = fromisoformat(raw)
                if 1900 <= value.year <= 2200:
                    return value if value.tzinfo is not None else value.replace(tzinfo=tz)
            except ValueError:
                pass
            return normalize_datetime(raw, tz, day_first)

        return parse_datetime
    if spec.type == "amount":
        return normalize_decimal
    if spec.type == "integer":
        return normalize_integer
    if spec.type == "time_zone":
        return normalize_time_zone
    if spec.type == "currency":
        return normalize_currency
    if spec.type == "channel":
        def parse_channel(raw: str) -> str:
            try:
                return _CHANNELS[raw.lower()]
            except KeyError:
                raise InvalidValue(f"'{raw[:40]}' is not a channel (email or sms)") from None

        return parse_channel
    if spec.type == "action":
        return lambda raw: "grant" if normalize_flag(raw) else "withdraw"
    if spec.type == "status":
        def parse_status(raw: str) -> str:
            try:
                return _STATUSES[raw.lower()]
            except KeyError:
                raise InvalidValue(f"'{raw[:40]}' is not an order status (placed, refunded, "
                                   "partially_refunded, cancelled)") from None

        return parse_status
    if spec.type == "ip":
        def parse_ip(raw: str) -> str:
            try:
                return str(ipaddress.ip_address(raw))
            except ValueError:
                raise InvalidValue(f"'{raw[:60]}' is not an IP address") from None

        return parse_ip
    raise ValueError(f"unknown field type {spec.type}")


@dataclass
class RowPlan:
    """How to turn a record into a stage row: which cell feeds which field, and how to parse it."""

    kind: str
    header: list[str]
    specs: list[FieldSpec]
    cells: list[tuple[int, int, str, Callable]]  # (stage position, cell index, column name, parser)
    attributes: list[tuple[int, str]]  # (cell index, attribute key)
    column_of: dict[str, str]  # field name -> column name, for messages
    options: ImportOptions
    has_lines: bool = False
    positions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, run: ImportRun, options: ImportOptions) -> RowPlan:
        specs = FIELDS[run.kind]
        positions = {spec.name: position for position, spec in enumerate(specs, start=1)}
        by_name = {spec.name: spec for spec in specs}
        cells, attributes, column_of = [], [], {}
        for index, column in enumerate(run.header):
            target = run.mapping.get(column, "")
            if target == ATTRIBUTE:
                attributes.append((index, column))
            elif target in by_name:
                cells.append((positions[target], index, column, _parser(by_name[target], options)))
                column_of[target] = column
        has_lines = run.kind == ImportRun.Kind.ORDERS and bool(set(column_of) & LINE_FIELDS)
        return cls(run.kind, run.header, specs, cells, attributes, column_of, options, has_lines, positions)

    def column(self, name: str) -> str:
        """Return the file's column for a field (its label when it is not mapped)."""
        return self.column_of.get(name) or _label(self.kind, name)


def validate_record(plan: RowPlan, record: csv_reading.Record) -> tuple[list, list[tuple[str, str]]]:
    """Return the stage row of a record (line first, then one value per field) and its errors (column, message)."""
    values: list = [record.line] + [None] * len(plan.specs)
    errors: list[tuple[str, str]] = []
    cells = record.cells
    count = len(cells)
    width = len(plan.header)
    if count > width and any(cell.strip() for cell in cells[width:]):
        errors.append(("", f"{count} cells, but the header has {width} columns"))
    for position, index, column, parse in plan.cells:
        if index >= count:
            continue
        raw = cells[index].strip()
        if not raw:
            continue
        if "\x00" in raw:
            errors.append((column, "contains a NUL character"))
            continue
        try:
            values[position] = parse(raw)
        except InvalidValue as error:
            errors.append((column, str(error)))
    if plan.attributes:
        attributes = {}
        for index, key in plan.attributes:
            if index < count and (raw := cells[index].strip()):
                attributes[key] = raw.replace("\x00", "")[:1000]
        values.append(json.dumps(attributes) if attributes else None)
    _CHECKS[plan.kind](plan, values, errors)
    return values, errors


def _check_customer(plan: RowPlan, values: list, errors: list) -> None:
    p = plan.positions
    if values[p["external_id"]] is None and values[p["email"]] is None and not errors:
        column = plan.column("email") if "email" in plan.column_of else plan.column("external_id")
        errors.append((column, "a customer needs an external id or an e-mail address"))


def _check_customer_reference(plan: RowPlan, values: list, errors: list) -> None:
    p = plan.positions
    if values[p["customer_external_id"]] is None and values[p["customer_email"]] is None:
        if not any(column in (plan.column_of.get("customer_external_id"), plan.column_of.get("customer_email"))
                   for column, _ in errors):
            column = plan.column_of.get("customer_external_id") or plan.column("customer_email")
            errors.append((column, "no customer given (external id or e-mail)"))


def _require(plan: RowPlan, values: list, errors: list, name: str, message: str) -> None:
    if values[plan.positions[name]] is None:
        column = plan.column(name)
        if not any(error_column == column for error_column, _ in errors):
            errors.append((column, message))


def _check_order(plan: RowPlan, values: list, errors: list) -> None:
    p = plan.positions
    _require(plan, values, errors, "order_external_id", "an order needs an order id")
    _require(plan, values, errors, "placed_at", "an order needs the date it was placed")
    _check_customer_reference(plan, values, errors)
    if values[p["total"]] is None and values[p["unit_price"]] is None and values[p["line_total"]] is None:
        if "total" in plan.column_of or not plan.has_lines:
            _require(plan, values, errors, "total", "an order needs its total")
        else:
            _require(plan, values, errors, "line_total", "a line needs its total or unit price")


def _check_consent(plan: RowPlan, values: list, errors: list) -> None:
    p = plan.positions
    _check_customer_reference(plan, values, errors)
    if values[p["channel"]] is None:
        if plan.options.default_channel:
            values[p["channel"]] = plan.options.default_channel
        else:
            _require(plan, values, errors, "channel", "the channel (email or sms) is missing")
    _require(plan, values, errors, "action", "say grant or withdraw (yes/no)")


_CHECKS = {ImportRun.Kind.CUSTOMERS: _check_customer, ImportRun.Kind.ORDERS: _check_order,
           ImportRun.Kind.CONSENT: _check_consent}


# --- SQL that differs between PostgreSQL and SQLite ------------------------------------------------


class _Dialect:
    def __init__(self):
        self.postgres = connection.vendor == "postgresql"
        self.distinct = "IS DISTINCT FROM" if self.postgres else "IS NOT"
        self.least = "LEAST" if self.postgres else "MIN"
        self.false = "false" if self.postgres else "0"

    def datetime(self, value):
        return value if self.postgres or value is None else connection.ops.adapt_datetimefield_value(value)

    def json_merge(self, old: str, new: str) -> str:
        if self.postgres:
            return f"COALESCE({old}, '{{}}'::jsonb) || {new}::jsonb"
        return f"json_patch(COALESCE({old}, '{{}}'), {new})"

    def json_object(self, *pairs: str) -> str:
        return f"{'jsonb_build_object' if self.postgres else 'json_object'}({', '.join(pairs)})"

    def column_type(self, sql_type: str) -> str:
        return sql_type if self.postgres else {"timestamptz": "text", "numeric(12,2)": "numeric"}.get(sql_type, sql_type)


# --- The run ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Counts of one import, as shown on the result page."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    error_rows: int = 0
    details: dict = field(default_factory=dict)


class _Stage:
    """The temporary staging and error tables of one run, on the current database connection."""

    def __init__(self, run: ImportRun, plan: RowPlan, dialect: _Dialect):
        self.run, self.plan, self.sql = run, plan, dialect
        self.table = f"import_stage_{run.pk}"
        self.errors = f"import_errors_{run.pk}"
        self.orders = f"import_orders_{run.pk}"
        self.columns = ["line_no"] + [spec.name for spec in plan.specs]
        types = ["bigint"] + [dialect.column_type(spec.sql_type) for spec in plan.specs]
        if plan.attributes:
            self.columns.append("attributes")
            types.append("jsonb" if dialect.postgres else "text")
        self.types = types

    def create(self) -> None:
        self.drop()
        definition = ", ".join(f"{name} {kind}" for name, kind in zip(self.columns, self.types))
        extra = ", target_id bigint" if self.run.kind == ImportRun.Kind.CUSTOMERS else ""
        identity = "id bigserial" if self.sql.postgres else "id integer PRIMARY KEY"
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TEMPORARY TABLE {self.table} ({definition}{extra})")
            cursor.execute(
                f"CREATE TEMPORARY TABLE {self.errors} ({identity}, line_no bigint NOT NULL, "
                "column_name text NOT NULL, message text NOT NULL, group_key text)"
            )

    def drop(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self.table}")
            cursor.execute(f"DROP TABLE IF EXISTS {self.errors}")
            cursor.execute(f"DROP TABLE IF EXISTS {self.orders}")

    def give_memory(self) -> None:
        """Let this transaction's sorts and hashes over the whole file work in memory (PostgreSQL's default
        work_mem, 4 MB, sends them to disk at a few hundred thousand rows)."""
        if self.sql.postgres:
            self.execute(f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'")

    def analyze(self) -> None:
        """Give the planner the staged row counts (autovacuum never analyzes temporary tables)."""
        if self.sql.postgres:
            self.execute(f"ANALYZE {self.table}")
            self.execute(f"ANALYZE {self.errors}")

    def build_orders(self) -> None:
        """(Re)build the table of the staged orders: each order's first line, with the sum of its lines.

        One aggregate and one hash join, instead of a subquery per line.
        """
        line_amount = "COALESCE(line_total, unit_price * COALESCE(quantity, 1))"
        self.execute(f"DROP TABLE IF EXISTS {self.orders}")
        self.execute(
            f"CREATE TEMPORARY TABLE {self.orders} AS SELECT s.*, a.lines_total FROM {self.table} s JOIN "
            f"(SELECT order_external_id, MIN(line_no) AS first_line, SUM({line_amount}) AS lines_total "
            f"FROM {self.table} GROUP BY order_external_id) a ON s.line_no = a.first_line"
        )
        if self.sql.postgres:
            self.execute(f"ANALYZE {self.orders}")

    def load(self, rows: list[list], errors: list[tuple]) -> None:
        """Bulk-load validated rows and error rows (COPY on PostgreSQL)."""
        with connection.cursor() as cursor:
            if self.sql.postgres:
                if rows:
                    with cursor.copy(f"COPY {self.table} ({', '.join(self.columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                if errors:
                    with cursor.copy(f"COPY {self.errors} (line_no, column_name, message, group_key) FROM STDIN") as copy:
                        for error in errors:
                            copy.write_row(error)
                return
            if rows:
                converted = [[self._sqlite_value(value) for value in row] for row in rows]
                marks = ", ".join(["%s"] * len(self.columns))
                cursor.executemany(f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES ({marks})", converted)
            if errors:
                cursor.executemany(
                    f"INSERT INTO {self.errors} (line_no, column_name, message, group_key) VALUES (%s, %s, %s, %s)",
                    errors,
                )

    def _sqlite_value(self, value):
        if isinstance(value, dt.datetime):
            return connection.ops.adapt_datetimefield_value(value)
        if value is not None and not isinstance(value, (str, int, float)):
            return str(value)
        return value

    def scalar(self, sql: str, params=()) -> int:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return int(row[0] or 0) if row else 0

    def execute(self, sql: str, params=()) -> int:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

    def add_errors(self, select_sql: str, params=()) -> int:
        """Record errors found by SQL: ``select_sql`` yields (line_no, column_name, message, group_key)."""
        return self.execute(
            f"INSERT INTO {self.errors} (line_no, column_name, message, group_key) {select_sql}", params
        )

    def drop_bad_rows(self) -> None:
        self.execute(f"DELETE FROM {self.table} WHERE line_no IN (SELECT line_no FROM {self.errors})")

    def error_lines(self) -> int:
        return self.scalar(f"SELECT COUNT(DISTINCT line_no) FROM {self.errors}")

    def first_errors(self, limit: int) -> list[dict]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT line_no, column_name, message FROM {self.errors} ORDER BY line_no, id LIMIT %s", [limit]
            )
            return [{"line": line, "column": column, "message": message} for line, column, message in cursor.fetchall()]

    def iter_errors(self, chunk: int = 5000) -> Iterator[tuple[int, str, str]]:
        last = (0, 0)
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT line_no, id, column_name, message FROM {self.errors} "
                    "WHERE line_no > %s OR (line_no = %s AND id > %s) ORDER BY line_no, id LIMIT %s",
                    [last[0], last[0], last[1], chunk],
                )
                rows = cursor.fetchall()
            if not rows:
                return
            for line, error_id, column, message in rows:
                yield line, column, message
            last = (rows[-1][0], rows[-1][1])


def options_for(run: ImportRun) -> ImportOptions:
    """Return the parsing options of a run: the workspace's time zone and currency, and the form's choices."""
    from crm_site.models import Workspace

    workspace = Workspace.objects.get(pk=run.tenant_id)
    try:
        tz = zoneinfo.ZoneInfo(workspace.time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = dt.UTC
    return ImportOptions(
        time_zone=tz,
        day_first=bool(run.options.get("day_first", True)),
        default_region=run.options.get("default_region", ""),
        default_channel=run.options.get("default_channel", ""),
        currency=workspace.currency,
    )


ProgressCallback = Callable[[int, str], None]


def run_import(run: ImportRun, progress: ProgressCallback | None = None) -> Outcome:
    """Import a mapped run's file and return the counts; the run records the outcome and its error report.

    Call it in the run's tenant scope *without* an open transaction for progress to be visible; the
    data itself is written in one transaction at the end (or not at all: rejected file, fatal error).
    """
    progress = progress or (lambda rows, message: None)
    dialect = _Dialect()
    path = upload_path(run)
    _save(run, status=ImportRun.Status.RUNNING)
    outcome = Outcome()
    if path is None:
        return _fail(run, outcome, "The uploaded file is no longer there (uploads are kept for a limited time); "
                                   "upload it again.")
    plan = RowPlan.build(run, options_for(run))
    stage = _Stage(run, plan, dialect)
    stage.create()
    try:
        try:
            outcome.rows, parse_errors = _load_stage(run, path, plan, stage, progress)
        except (CsvFileError, UnicodeDecodeError) as error:
            message = str(error) if isinstance(error, CsvFileError) else f"The file cannot be decoded: {error.reason}."
            return _fail(run, outcome, message)
        stage.analyze()
        progress(outcome.rows, "Checking against the workspace's data…")
        with tenant_transaction():
            stage.give_memory()
            _SQL_CHECKS[run.kind](stage, plan, run)
        outcome.error_rows = stage.error_lines()
        if outcome.error_rows and run.mode == ImportRun.Mode.REJECT:
            outcome.skipped = outcome.rows
            status = ImportRun.Status.REJECTED
        else:
            progress(outcome.rows, "Writing…")
            if outcome.error_rows:
                stage.drop_bad_rows()
            outcome.skipped = outcome.error_rows
            with tenant_transaction():
                stage.give_memory()
                _MERGES[run.kind](stage, plan, run, outcome)
                staged = RawSQL(f"SELECT order_external_id FROM {stage.orders if plan.has_lines else stage.table}", ())
                touched = (list(Order.objects.filter(external_id__in=staged).order_by()
                                .values_list("customer_id", flat=True).distinct())
                           if run.kind == ImportRun.Kind.ORDERS else [])
            send_orders_changed(run.tenant_id, touched)  # committed: lifecycle refreshes these customers
            status = ImportRun.Status.IMPORTED
        if outcome.error_rows:
            progress(outcome.rows, "Writing the error report…")
            error_file = _write_error_report(run, path, plan, stage)
        else:
            error_file = ""
        _finish(run, outcome, status, errors=stage.first_errors(ERRORS_SHOWN), error_file=error_file)
        return outcome
    finally:
        stage.drop()
        _delete_upload(run)


def _load_stage(run, path, plan, stage, progress) -> tuple[int, int]:
    rows: list[list] = []
    errors: list[tuple] = []
    count = 0
    error_count = 0
    group_position = plan.positions.get("order_external_id") if plan.has_lines else None
    group_index = next((index for position, index, _, _ in plan.cells if position == group_position), None)
    with csv_reading.open_text(path, run.encoding) as text:
        records = csv_reading.read_records(text, run.delimiter)
        csv_reading.read_header(records)
        for record in records:
            count += 1
            values, row_errors = validate_record(plan, record)
            if row_errors:
                group_key = None
                if group_index is not None and group_index < len(record.cells):
                    group_key = record.cells[group_index].strip() or None
                errors.extend((record.line, column, message, group_key) for column, message in row_errors)
                error_count += 1
            else:
                rows.append(values)
            if len(rows) >= BATCH_ROWS or len(errors) >= BATCH_ROWS:
                stage.load(rows, errors)
                rows, errors = [], []
                progress(count, f"Validated {count:,} rows…")
    stage.load(rows, errors)
    if count == 0:
        raise CsvFileError("The file has a header row but no data rows.")
    progress(count, f"Validated {count:,} rows.")
    return count, error_count


# --- Checks over the whole file -------------------------------------------------------------------


def _quoted(expression: str) -> str:
    return f"'''' || {expression} || ''''"


def _duplicates(stage: _Stage, column: str, label: str, what: str, where: str = "") -> None:
    """Report each later line whose ``column`` repeats an earlier line's value."""
    stage.add_errors(
        f"SELECT line_no, %s, {_quoted(column)} || ' {what} is also on line ' || first_line, NULL "
        f"FROM (SELECT line_no, {column}, MIN(line_no) OVER (PARTITION BY {column}) AS first_line "
        f"FROM {stage.table} WHERE {column} IS NOT NULL {where}) d WHERE line_no > first_line",
        [label],
    )


def _customer_match(stage_alias: str, tenant_param: str = "%s") -> str:
    """SQL joins giving ``matched_id``: the customer by external id, else by e-mail."""
    return (
        f"LEFT JOIN customers_customer by_id ON by_id.tenant_id = {tenant_param} AND by_id.external_id <> '' "
        f"AND by_id.external_id = {stage_alias}.customer_external_id "
        f"LEFT JOIN customers_customer by_email ON by_id.id IS NULL AND by_email.tenant_id = {tenant_param} "
        f"AND by_email.email <> '' AND by_email.email = {stage_alias}.customer_email"
    )


def _check_customers(stage: _Stage, plan: RowPlan, run: ImportRun) -> None:
    tenant = run.tenant_id
    t = stage.table
    _duplicates(stage, "external_id", plan.column("external_id"), "external id")
    _duplicates(stage, "email", plan.column("email"), "e-mail address")
    # Match existing customers by external id, else by e-mail (only one without an external id of its own).
    stage.execute(
        f"UPDATE {t} SET target_id = c.id FROM customers_customer c WHERE c.tenant_id = %s "
        f"AND c.external_id <> '' AND c.external_id = {t}.external_id",
        [tenant],
    )
    stage.execute(
        f"UPDATE {t} SET target_id = c.id FROM customers_customer c WHERE {t}.target_id IS NULL "
        f"AND c.tenant_id = %s AND c.email <> '' AND c.email = {t}.email "
        f"AND (c.external_id = '' OR {t}.external_id IS NULL)",
        [tenant],
    )
    # An address that belongs to another customer would merge two people: report it.
    stage.add_errors(
        f"SELECT s.line_no, %s, {_quoted('s.email')} || ' already belongs to another customer' || "
        f"CASE WHEN c.external_id <> '' THEN ' (external id ' || {_quoted('c.external_id')} || ')' ELSE '' END, NULL "
        f"FROM {t} s JOIN customers_customer c ON c.tenant_id = %s AND c.email = s.email "
        f"WHERE s.email IS NOT NULL AND (s.target_id IS NULL OR c.id <> s.target_id)",
        [plan.column("email"), tenant],
    )


def _check_orders(stage: _Stage, plan: RowPlan, run: ImportRun) -> None:
    t = stage.table
    if plan.has_lines:
        stage.build_orders()
        # Lines of one order must name the same customer as its first line.
        stage.add_errors(
            f"SELECT s.line_no, %s, 'order ' || {_quoted('s.order_external_id')} || ' names another customer on line ' "
            f"|| f.line_no, s.order_external_id FROM {t} s JOIN {stage.orders} f "
            f"ON f.order_external_id = s.order_external_id "
            f"WHERE s.line_no <> f.line_no AND (COALESCE(s.customer_external_id, '') <> COALESCE(f.customer_external_id, '') "
            f"OR COALESCE(s.customer_email, '') <> COALESCE(f.customer_email, ''))",
            [plan.column_of.get("customer_external_id") or plan.column("customer_email")],
        )
    else:
        _duplicates(stage, "order_external_id", plan.column("order_external_id"), "order id")
    _unknown_customers(stage, plan, run)
    if plan.has_lines:
        # A bad line makes its whole order bad: importing the other lines would give a wrong order.
        stage.add_errors(
            f"SELECT s.line_no, %s, 'another line of order ' || {_quoted('s.order_external_id')} || ' has an error', "
            f"s.order_external_id FROM {t} s WHERE s.order_external_id IN "
            f"(SELECT group_key FROM {stage.errors} WHERE group_key IS NOT NULL) "
            f"AND s.line_no NOT IN (SELECT line_no FROM {stage.errors})",
            [plan.column("order_external_id")],
        )


def _unknown_customers(stage: _Stage, plan: RowPlan, run: ImportRun) -> None:
    t = stage.table
    column = plan.column_of.get("customer_external_id") or plan.column("customer_email")
    group = "s.order_external_id" if run.kind == ImportRun.Kind.ORDERS else "NULL"
    stage.add_errors(
        f"SELECT s.line_no, %s, 'no customer with ' || CASE WHEN s.customer_external_id IS NOT NULL "
        f"THEN 'external id ' || {_quoted('s.customer_external_id')} ELSE '' END || "
        f"CASE WHEN s.customer_external_id IS NOT NULL AND s.customer_email IS NOT NULL THEN ' or ' ELSE '' END || "
        f"CASE WHEN s.customer_email IS NOT NULL THEN 'e-mail ' || {_quoted('s.customer_email')} ELSE '' END || "
        f"' (import the customers first)', {group} "
        f"FROM {t} s {_customer_match('s')} WHERE by_id.id IS NULL AND by_email.id IS NULL",
        [column, run.tenant_id, run.tenant_id],
    )


def _check_consent(stage: _Stage, plan: RowPlan, run: ImportRun) -> None:
    _unknown_customers(stage, plan, run)


_SQL_CHECKS = {ImportRun.Kind.CUSTOMERS: _check_customers, ImportRun.Kind.ORDERS: _check_orders,
               ImportRun.Kind.CONSENT: _check_consent}


# --- Merges (one transaction, set-based) ------------------------------------------------------------


def _merge_customers(stage: _Stage, plan: RowPlan, run: ImportRun, outcome: Outcome) -> None:
    sql, t, tenant = stage.sql, stage.table, run.tenant_id
    now = sql.datetime(timezone.now())
    mapped = [spec.name for spec in plan.specs if spec.name in plan.column_of]
    matched = stage.scalar(f"SELECT COUNT(*) FROM {t} WHERE target_id IS NOT NULL")
    # Only mapped columns with a value change an existing customer: a blank cell keeps what is there.
    new_values = {name: f"COALESCE(s.{name}, c.{name})" for name in mapped}
    if "first_seen_at" in new_values:
        new_values["first_seen_at"] = f"{sql.least}(c.first_seen_at, COALESCE(s.first_seen_at, c.first_seen_at))"
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT c.id FROM customers_customer AS c JOIN {t} s ON c.id = s.target_id "
                           f"WHERE c.tenant_id = %s AND s.first_seen_at < c.first_seen_at", [tenant])
            moved = [row[0] for row in cursor.fetchall()]
        transaction.on_commit(lambda: send_first_seen_changed(tenant, moved))  # lifecycle refreshes these
    if plan.attributes:
        new_values["attributes"] = f"CASE WHEN s.attributes IS NULL THEN c.attributes ELSE {sql.json_merge('c.attributes', 's.attributes')} END"
    if new_values:
        assignments = ", ".join(f"{name} = {expression}" for name, expression in new_values.items())
        current = ", ".join(f"c.{name}" for name in new_values)
        wanted = ", ".join(new_values.values())
        outcome.updated = stage.execute(
            f"UPDATE customers_customer AS c SET {assignments}, updated_at = %s FROM {t} s "
            f"WHERE c.tenant_id = %s AND c.id = s.target_id AND ({current}) {sql.distinct} ({wanted})",
            [now, tenant],
        )
    outcome.unchanged = matched - outcome.updated
    columns = ["tenant_id", "external_id", "email", "phone", "first_name", "last_name", "time_zone", "locale",
               "attributes", "email_opt_in", "sms_opt_in", "first_seen_at", "created_at", "updated_at"]
    attributes = "s.attributes" if plan.attributes else ("'{}'::jsonb" if sql.postgres else "'{}'")
    select = (
        f"SELECT %s, COALESCE(s.external_id, ''), COALESCE(s.email, ''), COALESCE(s.phone, ''), "
        f"COALESCE(s.first_name, ''), COALESCE(s.last_name, ''), COALESCE(s.time_zone, ''), COALESCE(s.locale, ''), "
        f"COALESCE({attributes}, {"'{}'::jsonb" if sql.postgres else "'{}'"}), {sql.false}, {sql.false}, "
        f"COALESCE(s.first_seen_at, %s), %s, %s FROM {t} s WHERE s.target_id IS NULL"
    )
    # ON CONFLICT makes a concurrent writer (the API) an update instead of a failed import.
    conflict_update = ", ".join(
        f"{name} = CASE WHEN EXCLUDED.{name} = '' THEN customers_customer.{name} ELSE EXCLUDED.{name} END"
        for name in ("email", "phone", "first_name", "last_name", "time_zone", "locale") if name in mapped
    ) or "updated_at = EXCLUDED.updated_at"
    outcome.created = stage.execute(
        f"INSERT INTO customers_customer ({', '.join(columns)}) {select} AND s.external_id IS NOT NULL "
        f"ON CONFLICT (tenant_id, external_id) WHERE NOT (external_id = '') DO UPDATE SET {conflict_update}",
        [tenant, now, now, now],
    )
    outcome.created += stage.execute(
        f"INSERT INTO customers_customer ({', '.join(columns)}) {select} AND s.external_id IS NULL "
        f"ON CONFLICT (tenant_id, email) WHERE NOT (email = '') DO UPDATE SET {conflict_update}",
        [tenant, now, now, now],
    )


def _merge_orders(stage: _Stage, plan: RowPlan, run: ImportRun, outcome: Outcome) -> None:
    sql, t, tenant = stage.sql, stage.table, run.tenant_id
    now = sql.datetime(timezone.now())
    mapped = set(plan.column_of)
    if plan.has_lines:
        if outcome.error_rows:
            stage.build_orders()  # without the orders whose lines were dropped
        t = stage.orders  # one row per order
        total = "COALESCE(s.total, s.lines_total, 0)" if "total" in mapped else "COALESCE(s.lines_total, 0)"
    else:
        total = "COALESCE(s.total, 0)"
    orders = stage.scalar(f"SELECT COUNT(*) FROM {t}")
    existing = stage.scalar(
        f"SELECT COUNT(*) FROM {t} s JOIN customers_order o ON o.tenant_id = %s AND o.external_id = s.order_external_id",
        [tenant],
    )
    values = {
        "customer_id": "COALESCE(by_id.id, by_email.id)",
        "placed_at": "s.placed_at",
        "total": total,
        "refunded_amount": "COALESCE(s.refunded_amount, 0)",
        "currency": "COALESCE(s.currency, %s)",
        "channel": "COALESCE(s.channel, '')",
        "status": "COALESCE(s.status, 'placed')",
    }
    # On re-import, fields the file does not carry keep their stored value.
    updatable = ["customer_id", "placed_at", "total"] + [
        name for name in ("refunded_amount", "currency", "channel", "status") if name in mapped
    ]
    assignments = ", ".join(f"{name} = EXCLUDED.{name}" for name in updatable)
    current = ", ".join(f"customers_order.{name}" for name in updatable)
    wanted = ", ".join(f"EXCLUDED.{name}" for name in updatable)
    written = stage.execute(
        f"INSERT INTO customers_order (tenant_id, external_id, {', '.join(values)}, created_at) "
        f"SELECT %s, s.order_external_id, {', '.join(values.values())}, %s FROM {t} s {_customer_match('s')} "
        f"WHERE 1 = 1 "  # SQLite needs a WHERE before ON CONFLICT in INSERT … SELECT
        f"ON CONFLICT (tenant_id, external_id) DO UPDATE SET {assignments} WHERE ({current}) {sql.distinct} ({wanted})",
        [tenant, run_currency(plan), now, tenant, tenant],
    )
    outcome.created = orders - existing
    outcome.updated = max(0, written - outcome.created)
    outcome.unchanged = existing - outcome.updated
    outcome.details["orders"] = orders
    if plan.has_lines:
        _merge_lines(stage, plan, run, outcome, replace_stored_lines=existing > 0)


def run_currency(plan: RowPlan) -> str:
    return plan.options.currency


def _merge_lines(stage: _Stage, plan: RowPlan, run: ImportRun, outcome: Outcome, *,
                 replace_stored_lines: bool = True) -> None:
    t, tenant = stage.table, run.tenant_id
    if "product_name" in plan.column_of:
        stage.execute(
            f"INSERT INTO customers_product (tenant_id, sku, name, category, price) "
            f"SELECT %s, s.sku, MIN(s.product_name), '', COALESCE(MIN(s.unit_price), 0) FROM {t} s "
            f"WHERE s.sku IS NOT NULL AND s.product_name IS NOT NULL GROUP BY s.sku "
            f"ON CONFLICT (tenant_id, sku) DO UPDATE SET name = EXCLUDED.name",
            [tenant],
        )
    # The file's lines replace the stored lines of each order it contains; other orders are untouched. When
    # none of its orders existed before, there is nothing to replace (and a million lookups to save).
    if replace_stored_lines:
        order_ids = (
            f"SELECT o.id FROM customers_order o WHERE o.tenant_id = %s AND o.external_id IN "
            f"(SELECT order_external_id FROM {stage.orders})"
        )
        stage.execute(f"DELETE FROM customers_orderline WHERE tenant_id = %s AND order_id IN ({order_ids})",
                      [tenant, tenant])
    outcome.details["order_lines"] = stage.execute(
        f"INSERT INTO customers_orderline (tenant_id, order_id, product_id, sku, quantity, unit_price, line_total, "
        f"returned_quantity) SELECT %s, o.id, p.id, COALESCE(s.sku, ''), COALESCE(s.quantity, 1), "
        f"COALESCE(s.unit_price, COALESCE(s.line_total, 0) / CASE WHEN COALESCE(s.quantity, 1) = 0 THEN 1 "
        f"ELSE COALESCE(s.quantity, 1) END), "
        f"COALESCE(s.line_total, COALESCE(s.unit_price, 0) * COALESCE(s.quantity, 1)), "
        f"COALESCE(s.returned_quantity, 0) FROM {t} s "
        f"JOIN customers_order o ON o.tenant_id = %s AND o.external_id = s.order_external_id "
        f"LEFT JOIN customers_product p ON p.tenant_id = %s AND p.sku = s.sku WHERE 1 = 1 ORDER BY s.line_no",
        [tenant, tenant, tenant],
    )


def _merge_consent(stage: _Stage, plan: RowPlan, run: ImportRun, outcome: Outcome) -> None:
    from customers.consent import recompute_derived_consent

    sql, t, tenant = stage.sql, stage.table, run.tenant_id
    now = sql.datetime(timezone.now())
    source = f"import: {run.original_name}"[:200]
    event = (
        "COALESCE(by_id.id, by_email.id) AS customer_id, s.channel, COALESCE(s.purpose, 'marketing') AS purpose, "
        "s.action, COALESCE(s.occurred_at, %s) AS occurred_at"
    )
    # The ledger is append-only and a re-import must not repeat it: an identical event is skipped.
    candidates = (
        f"SELECT s.line_no, {event}, COALESCE(s.method, 'import') AS method, COALESCE(s.source, %s) AS source, "
        f"s.ip_address, COALESCE(s.user_agent, '') AS user_agent, COALESCE(s.wording_version, '') AS wording_version, "
        f"s.confirmed_at FROM {t} s {_customer_match('s')}"
    )
    new_events = (
        f"SELECT * FROM ({candidates}) n WHERE NOT EXISTS (SELECT 1 FROM customers_consentevent e "
        f"WHERE e.tenant_id = %s AND e.customer_id = n.customer_id AND e.channel = n.channel "
        f"AND e.purpose = n.purpose AND e.action = n.action AND e.occurred_at = n.occurred_at)"
    )
    params = [now, source, tenant, tenant, tenant]
    total = stage.scalar(f"SELECT COUNT(*) FROM {t}")
    ip = "CAST(n.ip_address AS inet)" if sql.postgres else "n.ip_address"
    outcome.created = stage.execute(
        f"INSERT INTO customers_consentevent (tenant_id, customer_id, channel, purpose, action, occurred_at, method, "
        f"source, ip_address, user_agent, wording_version, confirmed_at, recorded_at) "
        f"SELECT %s, n.customer_id, n.channel, n.purpose, n.action, n.occurred_at, n.method, n.source, {ip}, "
        f"n.user_agent, n.wording_version, n.confirmed_at, %s FROM ({new_events}) n ORDER BY n.line_no",
        [tenant, now, *params],
    )
    outcome.unchanged = total - outcome.created
    # The timeline shows each consent change, as when it is recorded one by one.
    verb = "CASE WHEN e.action = 'grant' THEN 'granted' ELSE 'withdrawn' END"
    label = "CASE WHEN e.channel = 'email' THEN 'E-mail' ELSE 'SMS' END"
    details = sql.json_object("'event_id'", "e.id", "'channel'", "e.channel", "'purpose'", "e.purpose",
                              "'action'", "e.action", "'method'", "e.method")
    stage.execute(
        f"INSERT INTO customers_interaction (tenant_id, customer_id, kind, occurred_at, summary, details) "
        f"SELECT %s, e.customer_id, 'consent', e.occurred_at, "
        f"{label} || ' consent ' || {verb} || ' via ' || e.method, {details} "
        f"FROM customers_consentevent e WHERE e.tenant_id = %s AND e.recorded_at = %s AND e.source = %s",
        [tenant, tenant, now, source],
    ) if outcome.created else None
    affected = outcome.created
    if affected:
        if affected > 50_000:
            recompute_derived_consent(None)
        else:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT DISTINCT e.customer_id FROM customers_consentevent e WHERE e.tenant_id = %s "
                    f"AND e.recorded_at = %s AND e.source = %s",
                    [tenant, now, source],
                )
                recompute_derived_consent([row[0] for row in cursor.fetchall()])


_MERGES = {ImportRun.Kind.CUSTOMERS: _merge_customers, ImportRun.Kind.ORDERS: _merge_orders,
           ImportRun.Kind.CONSENT: _merge_consent}


# --- Outcome and error report ---------------------------------------------------------------------


def _write_error_report(run: ImportRun, path: Path, plan: RowPlan, stage: _Stage) -> str:
    """Write the bad rows (cells escaped against formulas) with an ``error`` column; return the relative path."""
    report = import_dir(run.tenant_id) / f"{run.pk}-{uuid.uuid4().hex[:8]}-errors.csv"
    errors = stage.iter_errors()
    pending = next(errors, None)
    with report.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([escape_formula(name) for name in run.header] + ["error", "line"])
        with csv_reading.open_text(path, run.encoding) as text:
            records = csv_reading.read_records(text, run.delimiter)
            csv_reading.read_header(records)
            for record in records:
                if pending is None:
                    break
                if record.line < pending[0]:
                    continue
                messages = []
                while pending is not None and pending[0] == record.line:
                    column, message = pending[1], pending[2]
                    messages.append(f"{column}: {message}" if column else message)
                    pending = next(errors, None)
                if messages:
                    cells = [escape_formula(cell) for cell in record.cells]
                    writer.writerow(cells + [""] * (len(run.header) - len(cells)) + ["; ".join(messages), record.line])
    return str(report.relative_to(settings.MEDIA_ROOT))


def error_report_path(run: ImportRun) -> Path | None:
    """Return the bad-rows CSV of a run, or None when there is none (or it expired)."""
    if not run.error_file:
        return None
    path = Path(settings.MEDIA_ROOT) / run.error_file
    return path if path.exists() else None


def _save(run: ImportRun, **changes) -> None:
    for name, value in changes.items():
        setattr(run, name, value)
    with tenant_transaction():
        ImportRun.objects.filter(pk=run.pk).update(**changes)


def _finish(run: ImportRun, outcome: Outcome, status: str, *, errors=(), error_file: str = "", fatal: str = "") -> None:
    _save(
        run,
        status=status,
        rows_read=outcome.rows,
        created_count=outcome.created,
        updated_count=outcome.updated,
        skipped_count=outcome.skipped,
        error_count=outcome.error_rows,
        errors=list(errors),
        error_file=error_file,
        fatal_error=fatal,
        summary={"unchanged": outcome.unchanged, **outcome.details},
        finished_at=timezone.now(),
    )


def _fail(run: ImportRun, outcome: Outcome, message: str) -> Outcome:
    outcome.skipped = outcome.rows
    _finish(run, outcome, ImportRun.Status.FAILED, fatal=message)
    return outcome


def _delete_upload(run: ImportRun) -> None:
    path = upload_path(run)
    if path is not None:
        path.unlink(missing_ok=True)
    if run.stored_path:
        _save(run, stored_path="")


def mark_failed(run: ImportRun, message: str) -> None:
    """Record that a run stopped on an unexpected error (nothing was written: the merge is one transaction)."""
    _finish(run, Outcome(rows=run.rows_read, skipped=run.rows_read), ImportRun.Status.FAILED, fatal=message)
    _delete_upload(run)
