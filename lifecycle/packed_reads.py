"""Reading many rows of one table into numpy on PostgreSQL: packed records, page ranges, several connections.

A refresh reads every order (and every stored metrics row) of a workspace. Two things made that slow:

* one message per row: psycopg hands Python each row of a result or a COPY separately, about a microsecond
  each. Here a statement packs its rows into ONE bytea of fixed-width records (big-endian, as PostgreSQL's
  binary send functions write them: ``int8send(customer_id) || timestamptz_send(placed_at) || …``), which numpy
  reads in place;
* one process: a plain scan runs in one backend, and PostgreSQL parallelises neither these aggregates nor COPY.
  When the planner would read the workspace's rows with a sequential scan anyway (the workspace is a large
  share of the table), the table is read as page ranges (``ctid`` ranges, a TID range scan) on READ_CONNECTIONS
  new connections. Each imports this transaction's snapshot (``pg_export_snapshot``), so together they see
  exactly the rows this transaction sees, each once, whatever is written meanwhile. A small workspace in a big
  table is read in one statement, through its index.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import psycopg
import psycopg.sql
from django.db import connection

from crm_site.tenancy import TENANT_SETTINGS_SQL, tenant_settings

READ_CONNECTIONS = 2  # as many as PostgreSQL gives a parallel GROUP BY by default (max_parallel_workers_per_gather)
PAGES_PER_STATEMENT = 8192  # 64 MB of heap per statement: a few MB of records, a bounded bytea


@contextlib.contextmanager
def packed_parts(query: str, params: dict, record: np.dtype, *, table: str, condition: str = "", when_read=None):
    """Start reading the records packed by ``query`` (a SELECT of one ``string_agg(…, ''::bytea)`` over ``table``
    with a ``{condition}`` slot, which gets ``condition`` and, when read in parallel, the page range) and give an
    iterator of its parts: arrays of records laid out as ``record`` but in this machine's byte order, in the
    order they arrive. Each part can be used while the server still reads the others; the body of the ``with``
    may meanwhile use this connection (the parts are read on other connections, or before the body starts).
    ``when_read()``, if given, is called as soon as the server has sent the last part.

    Must run inside the workspace's tenant scope.
    """
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")  # compiling these plain scans costs more than it saves
    if not can_share_snapshot() or not _planned_as_sequential_scan(query.format(condition=condition), params):
        with psycopg.Cursor(connection.connection) as cursor:
            packed = _fetch_packed(cursor, query.format(condition=condition), params)
        if when_read is not None:
            when_read()
        yield iter([_records([packed], record)])
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_export_snapshot(), pg_relation_size(%s) / current_setting('block_size')::int",
                       [table])
        snapshot, pages = cursor.fetchone()
    ranges = _page_ranges(pages)
    statements = [query.format(condition=f"{condition} AND ctid >= '({start},0)'::tid"
                               + (f" AND ctid < '({end},0)'::tid" if end is not None else ""))
                  for start, end in ranges]
    reader_count = min(READ_CONNECTIONS, len(statements))
    connection_params = connection.get_connection_params()
    received: queue.SimpleQueue = queue.SimpleQueue()

    def arriving():
        for count in range(1, len(statements) + 1):
            index, value = received.get()
            if index is None:
                raise value
            if count == len(statements) and when_read is not None:
                when_read()
            yield _records([value], record)

    with ThreadPoolExecutor(max_workers=reader_count) as pool:
        readers = [pool.submit(_read_into, received, range(reader, len(statements), reader_count),
                               connection_params, snapshot, statements[reader::reader_count], params)
                   for reader in range(reader_count)]
        yield arriving()
        for reader in readers:
            reader.result()


def read_packed(query: str, params: dict, record: np.dtype, *, table: str, condition: str = "") -> np.ndarray:
    """Return all the records of ``query`` (as packed_parts reads them), in this machine's byte order."""
    with packed_parts(query, params, record, table=table, condition=condition) as parts:
        arrived = list(parts)
    return np.concatenate(arrived) if arrived else np.empty(0, dtype=record.newbyteorder("="))


def can_share_snapshot() -> bool:
    """Return True when other connections can be handed this transaction's view of the database: it has
    written nothing (a caller's or a test's writes would be invisible to them) and is not inside a savepoint
    (PostgreSQL exports no snapshot from a subtransaction)."""
    if any(connection.savepoint_ids):
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id_if_assigned() IS NULL")
        return cursor.fetchone()[0]


class DeferredRead:
    """A packed read that sees the database as it is now but runs later, on its own connection in a thread
    (say, while this process computes and the server is idle): the connection imports this transaction's
    snapshot before the constructor returns. ``start()`` runs the statement (call it whatever happens, or the
    thread keeps its connection and snapshot open), ``records()`` waits for its records.
    """

    def __init__(self, statement: str, params: dict, record: np.dtype):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = cursor.fetchone()[0]
        self._record = record
        self._imported, self._go = threading.Event(), threading.Event()
        self._result: Future = Future()
        thread = threading.Thread(target=self._run, args=(connection.get_connection_params(), snapshot, statement,
                                                          params), daemon=True)
        thread.start()
        self._imported.wait()
        if self._result.done():  # the import failed: say so here
            self._result.result()

    def _run(self, connection_params, snapshot, statement, params) -> None:
        try:
            packed = _read_in_snapshot(connection_params, snapshot, [statement], params, self._imported, self._go)
            self._result.set_result(_records(packed, self._record))
        except BaseException as error:
            self._result.set_exception(error)
        finally:
            self._imported.set()

    def start(self) -> None:
        self._go.set()

    def records(self) -> np.ndarray:
        self.start()
        return self._result.result()


def _planned_as_sequential_scan(statement: str, params: dict) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
        plan = cursor.fetchone()[0]
    return '"Seq Scan"' in (plan if isinstance(plan, str) else json.dumps(plan))


def _page_ranges(pages: int) -> list[tuple[int, int | None]]:
    """Return [start, end) page ranges covering the table, the last one open: the rows of the snapshot lie
    below the size read after it was taken."""
    starts = list(range(0, max(pages, 1), PAGES_PER_STATEMENT))
    return [(start, None if start == starts[-1] else start + PAGES_PER_STATEMENT) for start in starts]


def _read_into(received: queue.SimpleQueue, indexes: range, *read) -> None:
    """Run _read_in_snapshot(*read), putting (index, packed value) of each statement on ``received`` as it
    arrives, or (None, the error) if the read fails."""
    try:
        _read_in_snapshot(*read, deliver=lambda position, value: received.put((indexes[position], value)))
    except BaseException as error:
        received.put((None, error))
        raise


def _read_in_snapshot(connection_params: dict, snapshot: str, statements: list[str], params: dict,
                      imported: threading.Event | None = None, go: threading.Event | None = None,
                      deliver=None) -> list:
    """Run the statements on a new connection inside the exported snapshot; return their packed values (or,
    with ``deliver``, hand each to ``deliver(position, value)`` as it arrives).

    With ``imported`` and ``go``: signal once the snapshot is imported, and wait for ``go`` before reading.
    """
    with psycopg.connect(**connection_params) as raw:
        raw.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        raw.read_only = True
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(snapshot)))
            cursor.execute(f"SELECT {TENANT_SETTINGS_SQL}", tenant_settings(params["tenant"]))
            cursor.execute("SET LOCAL jit = off")
            if imported is not None:
                imported.set()
                go.wait()
            packed = []
            for position, statement in enumerate(statements):
                value = _fetch_packed(cursor, statement, params)
                if deliver is None:
                    packed.append(value)
                else:
                    deliver(position, value)
        raw.rollback()
    return packed


def _fetch_packed(cursor: psycopg.Cursor, statement: str, params: dict) -> bytes | None:
    # A server-binding cursor asking for binary results, so bytea arrives as bytes (not as hexadecimal text).
    cursor.execute(statement, params, binary=True)
    return cursor.fetchone()[0]


def _records(packed: list[bytes | None], record: np.dtype) -> np.ndarray:
    """Return the packed values' records in this machine's byte order, converted in one pass."""
    parts = [np.frombuffer(value, dtype=record) for value in packed if value]
    records = np.empty(sum(len(part) for part in parts), dtype=record.newbyteorder("="))
    start = 0
    for part in parts:
        records[start:start + len(part)] = part
        start += len(part)
    return records
