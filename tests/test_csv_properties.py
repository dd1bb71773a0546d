"""Property tests (hypothesis) for the CSV reader and the value normalisers used by the import."""

import csv
import datetime as dt
import io
import re
import tempfile
import zoneinfo
from decimal import Decimal
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from customers import csv_reading
from customers.normalize import (
    InvalidValue,
    escape_formula,
    normalize_datetime,
    normalize_decimal,
    normalize_email,
    normalize_phone,
)

# Text a CSV cell can hold: any character but NUL and lone surrogates (not encodable).
cell_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)
rows_strategy = st.lists(st.lists(cell_text, min_size=1, max_size=6), min_size=1, max_size=15)
DELIMITERS = [",", ";", "\t", "|"]


def _written(rows, delimiter):
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter).writerows(rows)
    return out.getvalue()


def _read_back(data: bytes, encoding: str, delimiter: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.csv"
        path.write_bytes(data)
        with csv_reading.open_text(path, encoding) as text:
            return list(csv_reading.read_records(text, delimiter))


def _is_blank(row):
    return len(row) == 1 and not row[0].strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, delimiter=st.sampled_from(DELIMITERS), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_reading_gives_back_every_written_row_with_the_line_it_starts_on(rows, delimiter, encoding):
    text = _written(rows, delimiter)
    records = _read_back(text.encode(encoding), encoding, delimiter)
    expected = [row for row in rows if not _is_blank(row)]
    assert [record.cells for record in records] == expected
    # A record starts on the physical line after all the line breaks written before it.
    starts, position = [], 0
    for row in rows:
        chunk = _written([row], delimiter)
        if not _is_blank(row):
            starts.append(1 + len(re.findall(r"\r\n|\r|\n", text[:position])))
        position += len(chunk)
    assert [record.line for record in records] == starts


@settings(max_examples=100, deadline=None)
@given(rows=rows_strategy, codec=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "cp1252"]))
def test_the_detected_encoding_decodes_the_text_exactly(rows, codec):
    text = _written(rows, ",")
    if codec in ("utf-16-le", "utf-16-be"):
        data = ("\ufeff" + text).encode(codec)
    else:
        try:
            data = text.encode(codec)
        except UnicodeEncodeError:
            assume(False)
    assume(data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.csv"
        path.write_bytes(data)
        file_format = csv_reading.detect_format(path)
        with csv_reading.open_text(path, file_format.encoding) as stream:
            decoded = stream.read()
    if codec == "cp1252" and file_format.encoding == "utf-8":
        assert decoded == data.decode("utf-8")  # pure ASCII, or cp1252 bytes that happen to be valid UTF-8
    else:
        assert decoded.lstrip("\ufeff") == text.lstrip("\ufeff")
    assert bool(file_format.note) == (file_format.encoding in ("cp1252", "latin-1"))


header_name = st.from_regex(r"[A-Za-z][A-Za-z0-9 _]{0,15}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(header=st.lists(header_name, min_size=2, max_size=8), delimiter=st.sampled_from(DELIMITERS))
def test_the_delimiter_of_a_plain_header_is_found(header, delimiter):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.csv"
        path.write_text(delimiter.join(header) + "\n" + delimiter.join("x" for _ in header) + "\n")
        assert csv_reading.detect_format(path).delimiter == delimiter


# --- E-mail -------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(address=st.emails(), padding=st.sampled_from(["", " ", "\t", "  \n"]))
@example(address="Bob@Example.COM", padding=" ")
def test_valid_addresses_normalise_to_a_lowercase_fixed_point(address, padding):
    try:
        normalized = normalize_email(padding + address + padding)
    except InvalidValue:
        # Hypothesis's RFC 5322 addresses include forms (quoted, odd TLDs) a mail platform rightly refuses.
        return
    assert normalized == normalized.strip().lower()
    assert normalize_email(normalized) == normalized
    assert normalize_email(address.upper()) == normalized
    assert normalized.isascii()


@given(st.text(max_size=80))
def test_any_text_is_an_address_or_a_clear_error(text):
    try:
        result = normalize_email(text)
    except InvalidValue as error:
        assert str(error)
    else:
        assert "@" in result and result == result.lower()


@given(local=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
       label=st.sampled_from(["bücher", "müller", "straße", "café", "日本", "пример"]))
def test_internationalised_domains_become_punycode(local, label):
    normalized = normalize_email(f"{local}@{label}.de")
    assert normalized.startswith(f"{local}@xn--") and normalized.isascii()


# --- Phone --------------------------------------------------------------------------------------------

REGIONS = sorted(r for r in phonenumbers.SUPPORTED_REGIONS if phonenumbers.example_number(r) is not None)


@settings(max_examples=300, deadline=None)
@given(region=st.sampled_from(REGIONS),
       style=st.sampled_from([phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                              phonenumbers.PhoneNumberFormat.E164]))
def test_a_valid_number_in_any_common_format_normalises_to_e164(region, style):
    number = phonenumbers.example_number(region)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    written = phonenumbers.format_number(number, style)
    assert normalize_phone(written, region) == e164
    assert normalize_phone(e164, None) == e164  # E.164 is a fixed point, no default country needed


@given(st.text(max_size=30), st.sampled_from(["", "DE", "US", "FR"]))
def test_any_text_is_a_number_or_a_clear_error(text, region):
    try:
        result = normalize_phone(text, region)
    except InvalidValue as error:
        assert str(error)
    else:
        assert re.fullmatch(r"\+\d{6,16}", result)


# --- Dates --------------------------------------------------------------------------------------------

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
moments = st.datetimes(min_value=dt.datetime(1900, 1, 2), max_value=dt.datetime(2199, 12, 30)).map(
    lambda value: value.replace(microsecond=0)
)


@settings(max_examples=300, deadline=None)
@given(moment=moments, zone=st.sampled_from([dt.UTC, BERLIN, zoneinfo.ZoneInfo("America/New_York")]))
@example(moment=dt.datetime(2000, 3, 26, 2, 0), zone=BERLIN)  # a wall time the spring change skips
def test_iso_dates_with_an_offset_keep_their_instant(moment, zone):
    aware = moment.replace(tzinfo=zone)
    # Compared as UTC instants: Python never calls a wall time in a DST gap equal across zones.
    instant = aware.astimezone(dt.UTC)
    assert normalize_datetime(aware.isoformat(), BERLIN).astimezone(dt.UTC) == instant
    assert normalize_datetime(aware.isoformat(sep=" "), BERLIN).astimezone(dt.UTC) == instant


@settings(max_examples=300, deadline=None)
@given(moment=moments, pattern=st.sampled_from([
    ("%Y-%m-%d %H:%M:%S", True), ("%d/%m/%Y %H:%M:%S", True), ("%m/%d/%Y %H:%M:%S", False),
    ("%d.%m.%Y %H:%M", True), ("%d-%m-%Y", True), ("%Y/%m/%d", True), ("%d %b %Y", True), ("%b %d, %Y", True),
    ("%d %B %Y %H:%M", True), ("%m/%d/%Y %I:%M %p", False),
]))
def test_common_formats_parse_to_the_written_local_time(moment, pattern):
    fmt, day_first = pattern
    written = moment.strftime(fmt)
    parsed = normalize_datetime(written, BERLIN, day_first=day_first)
    assert parsed.tzinfo is BERLIN
    assert parsed.replace(tzinfo=None).strftime(fmt) == written


@given(st.text(max_size=40), st.booleans())
def test_any_text_is_a_date_or_a_clear_error(text, day_first):
    try:
        result = normalize_datetime(text, BERLIN, day_first)
    except InvalidValue as error:
        assert str(error)
    else:
        assert result.tzinfo is not None and 1900 <= result.year <= 2200


# --- Amounts and formulas ---------------------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=Decimal("9999999999.99"), places=2, allow_nan=False, allow_infinity=False)


@given(amount=amounts)
def test_amounts_in_english_and_continental_notation_parse_alike(amount):
    english = f"{amount:,.2f}"
    continental = english.replace(",", " ").replace(".", ",").replace(" ", ".")
    assert normalize_decimal(str(amount)) == amount
    assert normalize_decimal(english) == amount
    assert normalize_decimal(continental) == amount


@given(st.text(max_size=30))
@example("1E100")  # beyond the decimal context's precision: once an InvalidOperation, not a clear error
@example("-1e-9999")
def test_any_text_is_an_amount_or_a_clear_error(text):
    try:
        value = normalize_decimal(text)
    except InvalidValue as error:
        assert str(error)
    else:
        assert value >= 0 and value == value.quantize(Decimal("0.01"))


@given(st.text(max_size=40))
def test_escaped_cells_never_start_a_formula(text):
    escaped = escape_formula(text)
    if escaped.startswith(("=", "+", "-", "@", "\t", "\r")):
        assert re.fullmatch(r"[+-]?\d+([.,]\d+)?", escaped), "only plain numbers may keep a sign"
    assert escaped in (text, "'" + text)


@pytest.mark.parametrize("payload", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"])
def test_known_payloads_are_escaped(payload):
    assert escape_formula(payload) == "'" + payload
