"""Frozen segments: snapshots of who matched the rules on a date, and lists uploaded as CSV files.

A snapshot is written with one INSERT … SELECT from the compiled query, so freezing a million members
never loads them into Python. An uploaded list is matched in chunks against the unique (tenant, e-mail)
and (tenant, external id) indexes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass, field

from django.db import connection
from django.utils import timezone

from customers.models import Customer
from customers.normalize import InvalidValue, normalize_email
from segments.audience import customers_matching
from segments.models import Segment, SegmentMember

MAX_UPLOAD_LINES = 200_000
MATCH_CHUNK = 5_000
UNMATCHED_SHOWN = 200
HEADER_WORDS = {"id", "ids", "email", "e-mail", "emails", "external_id", "external id", "customer", "customer_id",
                "customer id"}


class UploadError(ValueError):
    """The uploaded file cannot be read as a list of customer ids or e-mails."""


def write_snapshot(segment: Segment, rules: dict, *, now: dt.datetime | None = None) -> int:
    """Replace ``segment``'s members with the customers matching ``rules`` now; return how many there are.

    The segment becomes frozen with ``frozen_at`` set. Raises InvalidRules for rules that do not validate.
    Call inside the workspace's tenant scope.
    """
    now = now or timezone.now()
    members = customers_matching(rules, now=now, segment=segment).order_by().values("pk")  # selected AS "pk"
    select_sql, select_params = members.query.sql_with_params()
    SegmentMember.objects.filter(segment=segment).delete()
    table = SegmentMember._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (tenant_id, segment_id, customer_id, added_at) "  # noqa: S608 (our own table)
            f"SELECT %s, %s, matched.pk, %s FROM ({select_sql}) AS matched",
            [segment.tenant_id, segment.pk, now, *select_params],
        )
        inserted = cursor.rowcount
    segment.kind, segment.frozen_at, segment.rules = Segment.Kind.FROZEN, now, rules
    segment.source = segment.source or "rules"
    segment.save(update_fields=["kind", "frozen_at", "rules", "source", "updated_at"])
    return inserted


def freeze_copy(segment: Segment, *, user=None, now: dt.datetime | None = None) -> Segment:
    """Return a new frozen segment holding who is in ``segment`` now (dynamic: its rules; frozen: its list)."""
    now = now or timezone.now()
    copy = Segment.objects.create(
        name=f"{segment.name} — {timezone.localdate(now):%Y-%m-%d}"[:120], description=segment.description,
        kind=Segment.Kind.FROZEN, rules=segment.rules, frozen_at=now, created_by=user,
        source=f"snapshot of “{segment.name}”"[:200],
    )
    if segment.kind == Segment.Kind.FROZEN:
        SegmentMember.objects.bulk_create(
            SegmentMember(tenant_id=segment.tenant_id, segment=copy, customer_id=customer_id, added_at=now)
            for customer_id in SegmentMember.objects.filter(segment=segment).values_list("customer_id", flat=True)
            .iterator(chunk_size=MATCH_CHUNK)
        )
    else:
        write_snapshot(copy, segment.rules, now=now)
    return copy


@dataclass
class UploadReport:
    """What became of an uploaded list: how many lines matched, and which did not (with line numbers)."""

    lines: int = 0
    matched: int = 0
    duplicates: int = 0
    unmatched: list[tuple[int, str]] = field(default_factory=list)
    unmatched_count: int = 0

    @property
    def unmatched_shown(self) -> list[tuple[int, str]]:
        return self.unmatched[:UNMATCHED_SHOWN]


def read_identifiers(raw: bytes) -> list[tuple[int, str]]:
    """Return (line number, identifier) for each non-empty line of an uploaded CSV: its first cell.

    A header line (``email``, ``external_id``…) is skipped. Raises UploadError for a file that is not text
    or is too long.
    """
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:  # pragma: no cover - cp1252 decodes almost anything
        raise UploadError("The file is not a text (CSV) file.")
    if "\x00" in text:
        raise UploadError("The file is not a text (CSV) file.")
    sample = text[:4096]
    delimiter = ";" if sample.count(";") > sample.count(",") else ","
    identifiers = []
    for line_number, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
        cell = next((cell.strip() for cell in row if cell.strip()), "")
        if not cell:
            continue
        if not identifiers and cell.lower() in HEADER_WORDS:
            continue
        identifiers.append((line_number, cell[:254]))
        if len(identifiers) > MAX_UPLOAD_LINES:
            raise UploadError(f"The file has more than {MAX_UPLOAD_LINES:,} lines; split it into smaller files.")
    if not identifiers:
        raise UploadError("The file holds no customer ids or e-mail addresses.")
    return identifiers


def match_identifiers(identifiers: list[tuple[int, str]]) -> tuple[list[int], UploadReport]:
    """Return the matching customer ids (each once, in file order) and the report of what did not match.

    A cell with an @ is an e-mail address (compared normalised, as customers store them), anything else
    an external id (exact). Erased customers never match.
    """
    report = UploadReport(lines=len(identifiers))
    by_email: dict[str, int] = {}
    by_external: dict[str, int] = {}
    emails, externals = set(), set()
    for _, value in identifiers:
        if "@" in value:
            emails.add(_email_key(value))
        else:
            externals.add(value)
    customers = Customer.objects.filter(erased_at__isnull=True)
    for chunk in _chunks(sorted(emails)):
        by_email.update(customers.filter(email__in=chunk).values_list("email", "pk"))
    for chunk in _chunks(sorted(externals)):
        by_external.update(customers.filter(external_id__in=chunk).values_list("external_id", "pk"))
    seen: set[int] = set()
    matched: list[int] = []
    for line_number, value in identifiers:
        customer_id = by_email.get(_email_key(value)) if "@" in value else by_external.get(value)
        if customer_id is None:
            report.unmatched_count += 1
            if len(report.unmatched) < UNMATCHED_SHOWN:
                report.unmatched.append((line_number, value))
        elif customer_id in seen:
            report.duplicates += 1
        else:
            seen.add(customer_id)
            matched.append(customer_id)
    report.matched = len(matched)
    return matched, report


def _email_key(value: str) -> str:
    try:
        return normalize_email(value)
    except InvalidValue:
        return value.strip().lower()


def _chunks(values: list) -> list[list]:
    return [values[start:start + MATCH_CHUNK] for start in range(0, len(values), MATCH_CHUNK)]


def frozen_segment_from_upload(name: str, raw: bytes, *, filename: str = "", description: str = "", user=None,
                               now: dt.datetime | None = None) -> tuple[Segment, UploadReport]:
    """Create a frozen segment from an uploaded list of external ids or e-mails; return it with the match report.

    Raises UploadError when the file cannot be read or nothing in it matches a customer.
    """
    now = now or timezone.now()
    matched, report = match_identifiers(read_identifiers(raw))
    if not matched:
        raise UploadError(
            f"None of the {report.lines:,} lines matched a customer (by external id or e-mail address)."
        )
    segment = Segment.objects.create(
        name=name, description=description, kind=Segment.Kind.FROZEN, frozen_at=now, created_by=user,
        source=f"uploaded file {filename}".strip()[:200], rules={"op": "and", "rules": []},
    )
    SegmentMember.objects.bulk_create(
        [SegmentMember(tenant_id=segment.tenant_id, segment=segment, customer_id=pk, added_at=now) for pk in matched],
        batch_size=MATCH_CHUNK,
    )
    return segment, report
