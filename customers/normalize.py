"""Normalisers for values that arrive as text (CSV cells, API fields): e-mail, phone, dates, amounts, flags.

Each ``normalize_*`` function returns the canonical value or raises ``InvalidValue`` with a message a
person can act on ("'bob@' is not a valid e-mail address"). They are pure functions, so the import, the
JSON API and forms can share them.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime

import idna
import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator


class InvalidValue(ValueError):
    """A text value that cannot be turned into the expected type; ``str()`` is the message for the user."""


# --- E-mail ---------------------------------------------------------------------------------------

_email_validator = EmailValidator()
EMAIL_MAX_LENGTH = 254


def normalize_email(raw: str) -> str:
    """Return the address trimmed, lower-cased, with an internationalised domain in IDNA (punycode) form.

    Raises InvalidValue when the result is not a deliverable-looking address.
    """
    text = raw.strip().lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise InvalidValue(f"{_quote(raw)} is not a valid e-mail address")
    try:
        # UTS 46 maps full-width dots and other look-alikes the way browsers do.
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise InvalidValue(f"{_quote(raw)} has a domain that is not a valid (internationalised) domain name")
    address = f"{local}@{ascii_domain}"
    if len(address) > EMAIL_MAX_LENGTH:
        raise InvalidValue(f"{_quote(raw)} is longer than {EMAIL_MAX_LENGTH} characters")
    try:
        _email_validator(address)
    except ValidationError:
        raise InvalidValue(f"{_quote(raw)} is not a valid e-mail address")
    return address


# --- Phone ----------------------------------------------------------------------------------------


def normalize_phone(raw: str, default_region: str | None = None) -> str:
    """Return the number in E.164 form (``+4930123456``); national numbers are read in ``default_region``.

    Raises InvalidValue for text that is not a valid number of a known numbering plan.
    """
    text = raw.strip()
    region = (default_region or "").upper() or None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        if region is None and not text.startswith(("+", "00")):
            raise InvalidValue(f"{_quote(raw)} has no country code and no default country was chosen")
        raise InvalidValue(f"{_quote(raw)} is not a phone number")
    if not phonenumbers.is_valid_number(number):
        raise InvalidValue(f"{_quote(raw)} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- Dates ----------------------------------------------------------------------------------------

_MONTHS = {
    name: number
    for number, names in enumerate(
        [("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",),
         ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"),
         ("oct", "october"), ("nov", "november"), ("dec", "december")],
        start=1,
    )
    for name in names
}
_TIME = r"(?:[ T](?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,6}))?)?\s*(?P<ampm>[ap]\.?m\.?)?)?"
_NUMERIC_DATE = re.compile(rf"(?P<a>\d{{1,4}})[/.\-](?P<b>\d{{1,2}})[/.\-](?P<c>\d{{1,4}}){_TIME}\s*$", re.I)
_NAMED_DAY_FIRST = re.compile(rf"(?P<d>\d{{1,2}})[ \-](?P<mon>[a-z]{{3,9}})\.?[ \-,]+(?P<y>\d{{4}}){_TIME}\s*$", re.I)
_NAMED_MONTH_FIRST = re.compile(rf"(?P<mon>[a-z]{{3,9}})\.? (?P<d>\d{{1,2}}),? (?P<y>\d{{4}}){_TIME}\s*$", re.I)

DATE_FORMATS_HELP = "2024-01-31, 2024-01-31T14:05:00+01:00, 31/01/2024 14:05, 31.01.2024, 31 Jan 2024, Jan 31, 2024"


def normalize_datetime(raw: str, time_zone: dt.tzinfo, day_first: bool = True) -> dt.datetime:
    """Return an aware datetime for a date or date-time written in a common format.

    Accepted: ISO 8601 (with or without time and offset), numeric dates with ``/ . -`` in day-first or
    month-first order (``day_first`` decides when both would be valid), ``31 Jan 2024``, ``Jan 31, 2024``,
    RFC 2822 and Unix timestamps. Values without an offset are read in ``time_zone``.
    """
    text = raw.strip()
    if not text:
        raise InvalidValue("the date is empty")
    parsed = _parse_datetime(text, day_first)
    if parsed is None:
        raise InvalidValue(f"{_quote(raw)} is not a date (use e.g. {DATE_FORMATS_HELP})")
    if not 1900 <= parsed.year <= 2200:
        raise InvalidValue(f"{_quote(raw)} is a date outside the years 1900 to 2200")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=time_zone)
    return parsed


def _parse_datetime(text: str, day_first: bool) -> dt.datetime | None:
    try:
        # The fast path: most machine exports are ISO 8601.
        value = dt.datetime.fromisoformat(text)
        return value
    except ValueError:
        pass
    match = _NUMERIC_DATE.match(text)
    if match:
        a, b, c = (int(match[k]) for k in "abc")
        if len(match["a"]) == 4:
            year, month, day = a, b, c
        elif len(match["c"]) == 4:
            year = c
            if a > 12 and b <= 12:
                day, month = a, b
            elif b > 12 and a <= 12:
                month, day = a, b
            else:
                day, month = (a, b) if day_first else (b, a)
        else:
            return None  # two-digit years are too ambiguous to guess
        return _build(year, month, day, match)
    for pattern in (_NAMED_DAY_FIRST, _NAMED_MONTH_FIRST):
        match = pattern.match(text)
        if match:
            month = _MONTHS.get(match["mon"].lower())
            if month is None:
                return None
            return _build(int(match["y"]), month, int(match["d"]), match)
    if text.isdigit() and len(text) in (10, 13):
        seconds = int(text) / (1000 if len(text) == 13 else 1)
        try:
            return dt.datetime.fromtimestamp(seconds, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None


def _build(year: int, month: int, day: int, match: re.Match) -> dt.datetime | None:
    hour = int(match["H"] or 0)
    ampm = (match["ampm"] or "").lower().replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    try:
        return dt.datetime(
            year, month, day, hour, int(match["M"] or 0), int(match["S"] or 0),
            int((match["f"] or "0").ljust(6, "0")),
        )
    except ValueError:
        return None


# --- Numbers, flags and short texts ---------------------------------------------------------------

_DECIMAL_COMMA = re.compile(r"^-?\d+,\d{1,2}$")


def normalize_decimal(raw: str, *, places: int = 2, max_digits: int = 12, allow_negative: bool = False) -> Decimal:
    """Return an amount as a Decimal rounded to ``places`` decimals.

    Accepts ``1234.5``, ``1,234.50``, ``1.234,50``, ``12,50`` (decimal comma) and a leading currency sign.
    """
    text = raw.strip().replace("\u00a0", "").replace(" ", "").lstrip("€$£¥")
    if "," in text and "." in text:
        # The separator that comes last is the decimal one; the other groups thousands.
        thousands = "," if text.rfind(",") < text.rfind(".") else "."
        text = text.replace(thousands, "")
        text = text.replace(",", ".")
    elif "," in text:
        if not _DECIMAL_COMMA.match(text):
            raise InvalidValue(f"{_quote(raw)} is not an amount (write 1234.50)")
        text = text.replace(",", ".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidValue(f"{_quote(raw)} is not a number")
    if not value.is_finite():
        raise InvalidValue(f"{_quote(raw)} is not a number")
    if value < 0 and not allow_negative:
        raise InvalidValue(f"{_quote(raw)} is negative")
    # Checked before rounding: quantize() fails on numbers beyond the context's precision (1E100).
    if abs(value) >= Decimal(10) ** (max_digits - places):
        raise InvalidValue(f"{_quote(raw)} is too large")
    return value.quantize(Decimal(1).scaleb(-places))


def normalize_integer(raw: str, *, minimum: int = 0, maximum: int = 2_000_000_000) -> int:
    """Return a whole number between ``minimum`` and ``maximum`` (``3.0`` is accepted as 3)."""
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise InvalidValue(f"{_quote(raw)} is not a whole number")
        if not number.is_finite() or number != number.to_integral_value():
            raise InvalidValue(f"{_quote(raw)} is not a whole number")
        value = int(number)
    if not minimum <= value <= maximum:
        raise InvalidValue(f"{_quote(raw)} is not between {minimum} and {maximum}")
    return value


_TRUE = {"1", "y", "yes", "true", "t", "on", "x", "grant", "granted", "opt-in", "optin", "opted in",
         "subscribed", "subscribe", "ja", "oui", "si"}
_FALSE = {"0", "n", "no", "false", "f", "off", "withdraw", "withdrawn", "opt-out", "optout", "opted out",
          "unsubscribed", "unsubscribe", "revoked", "nein", "non"}


def normalize_flag(raw: str) -> bool:
    """Return True for yes/true/1/subscribed/grant…, False for no/false/0/unsubscribed/withdraw…"""
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidValue(f"{_quote(raw)} is neither yes nor no")


def normalize_time_zone(raw: str) -> str:
    """Return an IANA time zone name (``Europe/Berlin``), checked against the zone database."""
    text = raw.strip()
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidValue(f"{_quote(raw)} is not a time zone name such as Europe/Berlin")
    return text


def normalize_currency(raw: str) -> str:
    """Return a three-letter ISO 4217 code in capitals."""
    text = raw.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", text):
        raise InvalidValue(f"{_quote(raw)} is not a three-letter currency code such as EUR")
    return text


def _quote(raw: str, limit: int = 60) -> str:
    """Quote a user's value for a message, shortened so a huge cell does not flood the report."""
    text = raw if len(raw) <= limit else raw[: limit - 1] + "…"
    return "'" + text.replace("\n", "\\n").replace("\r", "\\r") + "'"


# --- Spreadsheet safety ----------------------------------------------------------------------------

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?\d+(?:[.,]\d+)?$")


def escape_formula(value: str) -> str:
    """Return a cell value that a spreadsheet will show as text, never evaluate.

    Cells starting with ``= + - @``, a tab or a carriage return get a leading single quote (the OWASP
    CSV-injection advice); plain numbers such as ``-12.50`` or ``+4930123456`` are left as they are.
    """
    if value.startswith(_FORMULA_PREFIXES) and not _PLAIN_NUMBER.match(value):
        return "'" + value
    return value
