"""Reading CSV files people upload: encoding, delimiter, limits, and records with their line numbers.

Files come from spreadsheets and shop exports, so they may carry a byte-order mark, be UTF-16, be
Windows-1252, use ``;`` as delimiter, contain newlines inside quoted cells, or be something else
entirely. Everything here streams: a file is never read into memory whole.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# csv's limit is process-wide; a cell longer than this is an error, not a memory hazard.
MAX_FIELD_CHARS = 100_000
MAX_COLUMNS = 200
csv.field_size_limit(MAX_FIELD_CHARS)

_CHUNK = 1 << 20
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


class CsvFileError(ValueError):
    """The file as a whole cannot be read as CSV; ``str()`` says why, for the person who uploaded it."""


@dataclass(frozen=True)
class FileFormat:
    """How to read a file: its text encoding, delimiter, and a note for the user when we had to guess."""

    encoding: str
    delimiter: str
    note: str = ""
    line_count: int = 0  # physical lines, for a progress estimate


@dataclass(frozen=True)
class Record:
    """One CSV record: the physical line it starts on (the header is line 1) and its cells."""

    line: int
    cells: list[str]


def detect_format(path: Path) -> FileFormat:
    """Return the encoding and delimiter of a CSV file, scanning it once in chunks.

    A byte-order mark decides the encoding. Otherwise the whole file must be valid UTF-8; if it is not,
    it is read as Windows-1252 (else Latin-1) and ``note`` says so. Raises CsvFileError for an empty
    file or a binary one.
    """
    size = path.stat().st_size
    if size == 0:
        raise CsvFileError("The file is empty.")
    with path.open("rb") as stream:
        head = stream.read(4)
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), None)
    note = ""
    lines = 0
    if encoding is None:
        encoding, note, lines = _scan_undeclared(path)
    else:
        lines = _count_lines(path, encoding)
    delimiter = _sniff_delimiter(path, encoding)
    return FileFormat(encoding=encoding, delimiter=delimiter, note=note, line_count=lines)


def _scan_undeclared(path: Path) -> tuple[str, str, int]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    cp1252 = codecs.getincrementaldecoder("cp1252")()
    utf8_ok, cp1252_ok = True, True
    first_bad = None
    lines = 0
    offset = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            if b"\x00" in chunk:
                raise CsvFileError(
                    "The file contains NUL bytes: it is not a text CSV file (or it is UTF-16 without a "
                    "byte-order mark; save it as “CSV UTF-8”)."
                )
            if utf8_ok:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    utf8_ok = False
                    first_bad = (offset + error.start, lines + chunk.count(b"\n", 0, error.start) + 1)
            if not utf8_ok and cp1252_ok:
                try:
                    cp1252.decode(chunk)
                except UnicodeDecodeError:
                    cp1252_ok = False
            lines += chunk.count(b"\n")
            offset += len(chunk)
        if utf8_ok:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8_ok = False
                first_bad = (offset, lines + 1)
    if utf8_ok:
        return "utf-8", "", lines
    name = "cp1252" if cp1252_ok else "latin-1"
    label = "Windows-1252" if cp1252_ok else "Latin-1"
    note = (
        f"The file is not valid UTF-8 (first at byte {first_bad[0]}, line {first_bad[1]}), so it was read "
        f"as {label}. Check accented letters in the preview; save the file as “CSV UTF-8” to be sure."
    )
    return name, note, lines


def _count_lines(path: Path, encoding: str) -> int:
    newline = "\n".encode(encoding.replace("-sig", ""))
    if encoding in ("utf-16", "utf-32"):
        with path.open("rb") as stream:
            bom = stream.read(4)
        suffix = "-le" if bom.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF32_LE)) else "-be"
        newline = "\n".encode(encoding + suffix)
    lines = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            lines += chunk.count(newline)
    return lines


def _sniff_delimiter(path: Path, encoding: str) -> str:
    with open_text(path, encoding) as text:
        sample = text.read(64 * 1024)
    first_line = sample.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(first_line or sample, delimiters=",;\t|").delimiter
    except csv.Error:
        # One column, or nothing to go on: count candidates in the header.
        counts = {d: first_line.count(d) for d in ",;\t|"}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    """Open a file as text in ``encoding`` without newline translation (csv needs ``newline=''``)."""
    return io.TextIOWrapper(path.open("rb"), encoding=encoding, errors="strict", newline="")


def read_records(text: io.TextIOBase, delimiter: str) -> Iterator[Record]:
    """Yield the records of a CSV text stream with the physical line each starts on; blank lines are skipped.

    Raises CsvFileError with the line number when a cell is longer than MAX_FIELD_CHARS (often a
    quote left open), a record has more than MAX_COLUMNS cells, or the text cannot be decoded.
    """
    reader = csv.reader(text, delimiter=delimiter, strict=False)
    line = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            if "field larger than field limit" in str(error):
                raise CsvFileError(
                    f"Line {line}: a cell is longer than {MAX_FIELD_CHARS:,} characters. "
                    "Is a quote (\") left open? Nothing was imported."
                ) from None
            raise CsvFileError(f"Line {line}: the CSV cannot be read ({error}). Nothing was imported.") from None
        except UnicodeDecodeError as error:
            raise CsvFileError(f"Near line {line}: the text cannot be decoded ({error.reason}).") from None
        start, line = line, reader.line_num + 1
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) > MAX_COLUMNS:
            raise CsvFileError(f"Line {start}: {len(cells)} columns; at most {MAX_COLUMNS} are supported.")
        yield Record(start, cells)


def read_header(records: Iterator[Record]) -> list[str]:
    """Return the header names (trimmed; blank or repeated names made unique) from the first record.

    Raises CsvFileError when there is no header.
    """
    first = next(records, None)
    if first is None:
        raise CsvFileError("The file has no header row.")
    names: list[str] = []
    for position, raw in enumerate(first.cells, start=1):
        name = raw.strip().lstrip("\ufeff") or f"Column {position}"
        if "\x00" in name:
            raise CsvFileError("The header contains NUL characters: this is not a text CSV file.")
        base, suffix = name, 2
        while name in names:
            name, suffix = f"{base} ({suffix})", suffix + 1
        names.append(name[:200])
    return names


def preview(path: Path, file_format: FileFormat, rows: int = 10) -> tuple[list[str], list[Record]]:
    """Return the header and the first ``rows`` records of a file, reading no further."""
    with open_text(path, file_format.encoding) as text:
        records = read_records(text, file_format.delimiter)
        header = read_header(records)
        first_rows = []
        for record in records:
            first_rows.append(record)
            if len(first_rows) >= rows:
                break
    return header, first_rows
