#!/usr/bin/env python
"""Benchmark the customer list of a large workspace over HTTP, beside the SQL of the same pages run directly.

    .venv/bin/python bench/pages.py --workspace bench --requests 30
    .venv/bin/python bench/pages.py --workspace bench --requests 10 --only "spend" --only "stage"  # some URLs

What is measured
    The web app runs in a subprocess (gunicorn, one sync worker, DEBUG off, on a free port of 127.0.0.1,
    against the same DATABASE_URL). This process signs in a marketer of the workspace (a session made like a
    login makes it) and requests each URL of a set of realistic customer-list URLs (server-side search by
    name, e-mail, phone and external id; the stage, consent, spend and last-order filters; every sort; a
    page far down the list through the keyset "after" token) ``--requests`` times after two warm-up requests,
    one at a time over a kept-alive connection, and reports the 50th and 95th percentile of the time to the
    last byte. Every response must be a 200 with the customer table in it.

    The baseline: for each URL, the SQL that the list ran for that page (captured once from
    ``customers.listing.list_customers`` with the same parameters: the capped count, the planner's estimate
    when the count passes the cap, the page query or queries) run directly on a connection of this process,
    inside the workspace's scope, the same number of times. So the difference between the two columns is
    Django, the template, the session and HTTP; the SQL column is what the database needs for the page.

Loopback only; the request count is bounded (at most 200 per URL). docs/benchmarks.md holds the results.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAX_REQUESTS = 200
WARM_UP = 2
SLOW_MS = 500
BENCH_USER = "bench-pages"


@dataclass
class PageTiming:
    """Timings of one URL, in milliseconds."""

    label: str
    url: str
    page_ms: list[float] = field(default_factory=list)
    sql_ms: list[float] = field(default_factory=list)
    statements: int = 0
    shown: str = ""

    @staticmethod
    def _percentile(values: list[float], share: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]

    @property
    def page_p50(self) -> float:
        return self._percentile(self.page_ms, 0.5)

    @property
    def page_p95(self) -> float:
        return self._percentile(self.page_ms, 0.95)

    @property
    def sql_p50(self) -> float:
        return self._percentile(self.sql_ms, 0.5)

    @property
    def sql_p95(self) -> float:
        return self._percentile(self.sql_ms, 0.95)

    @property
    def ratio(self) -> float:
        """The page's median time over its SQL's median time."""
        return self.page_p50 / max(self.sql_p50, 1e-3)


def list_urls(workspace, as_of=None) -> list[tuple[str, dict]]:
    """Return (label, query parameters) of realistic customer-list URLs for ``workspace``'s data."""
    import datetime as dt

    from crm_site.tenancy import tenant_scope
    from customers.models import Customer

    with tenant_scope(workspace):
        sample = (Customer.objects.exclude(phone="").exclude(last_name="").exclude(first_name="")
                  .order_by("id").values("last_name", "first_name", "email", "phone", "external_id")[:1]).first()
    if sample is None:
        raise SystemExit(f"workspace {workspace.slug} has no customer with a name and phone: load it with bench/generate.py")
    today = as_of or dt.date.today()
    last_name, first_name = sample["last_name"], sample["first_name"]
    return [
        ("first page (newest first)", {}),
        ("search: last name", {"q": last_name}),
        ("search: first + last name", {"q": f"{first_name} {last_name}"}),
        ("search: name prefix (3 letters)", {"q": last_name[:3].lower()}),
        ("search: whole e-mail", {"q": sample["email"]}),
        ("search: phone number", {"q": sample["phone"][:10]}),
        ("search: external id", {"q": sample["external_id"]}),
        ("search: no match", {"q": "zzqx"}),
        ("filter: stage at risk", {"stage": "at_risk"}),
        ("filter: stage active, by spend", {"stage": "active", "sort": "-spend"}),
        ("filter: e-mail + SMS opted in", {"email_consent": "yes", "sms_consent": "yes"}),
        ("filter: spend 500-1000", {"spend_min": "500", "spend_max": "1000"}),
        ("filter: last order in the last 30 days",
         {"last_order_min": (today - dt.timedelta(days=30)).isoformat()}),
        ("filter: last order 1-2 years ago, opted in",
         {"last_order_min": (today - dt.timedelta(days=730)).isoformat(),
          "last_order_max": (today - dt.timedelta(days=365)).isoformat(), "email_consent": "yes"}),
        ("filter: lapsed, spend over 200, by last order",
         {"stage": "lapsed", "spend_min": "200", "sort": "-last_order"}),
        ("sort: name", {"sort": "name"}),
        ("sort: name reversed", {"sort": "-name"}),
        ("sort: spend (highest first)", {"sort": "-spend"}),
        ("sort: spend (lowest first)", {"sort": "spend"}),
        ("sort: last order (latest first)", {"sort": "-last_order"}),
        ("sort: first seen (oldest first)", {"sort": "first_seen"}),
    ]


# --- The server and the session ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """Return the URL of the database this process uses (so the server uses the same one, test databases too)."""
    from django.db import connection

    settings = connection.settings_dict
    credentials = settings["USER"] + (f":{settings['PASSWORD']}" if settings.get("PASSWORD") else "")
    return f"postgres://{credentials}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{settings['NAME']}"


@contextmanager
def web_server(*, env: dict | None = None, timeout: float = 30.0):
    """Run gunicorn (one sync worker) on a free loopback port in a subprocess; yield its base URL."""
    port = _free_port()
    environment = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_DEBUG": "0", **(env or {})}
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "gunicorn"), "crm_site.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--timeout", "120", "--log-level", "warning"],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"gunicorn did not start: {process.stderr.read()[-2000:]}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def signed_in_session(workspace) -> str:
    """Return a session key of the benchmark's marketer in ``workspace`` (created once), as a login makes it."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from crm_site.models import Membership, Role

    user, created = get_user_model().objects.get_or_create(username=BENCH_USER, defaults={"email": "bench@example.com"})
    if created:
        user.set_password(secrets.token_urlsafe(24))
        user.save()
    Membership.objects.get_or_create(workspace=workspace, user=user, defaults={"role": Role.MARKETER})
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session["last_workspace"] = workspace.slug
    session.create()
    return session.session_key


class Browser:
    """One kept-alive HTTP connection carrying the session cookie."""

    def __init__(self, host: str, session_key: str):
        from django.conf import settings

        self.host, self.cookie = host, f"{settings.SESSION_COOKIE_NAME}={session_key}"
        self.connection = http.client.HTTPConnection(host, timeout=120)

    def get(self, url: str) -> tuple[int, str, float]:
        """Return (status, body, milliseconds to the last byte)."""
        started = time.perf_counter()
        self.connection.request("GET", url, headers={"Cookie": self.cookie, "Host": self.host})
        response = self.connection.getresponse()
        body = response.read().decode()
        return response.status, body, (time.perf_counter() - started) * 1000

    def close(self):
        self.connection.close()


# --- The baseline: the page's SQL, run directly -----------------------------------------------------------


def page_statements(workspace, params: dict) -> list[str]:
    """Return the SQL statements the customer list runs for ``params`` (bound, as sent), captured once."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from crm_site.tenancy import tenant_scope
    from customers import listing
    from customers.forms import CustomerListForm

    with tenant_scope(workspace), CaptureQueriesContext(connection) as captured:
        form = CustomerListForm(params or None)
        listing.list_customers(form.values(), after=params.get("after"), before=params.get("before"))
    return [query["sql"] for query in captured.captured_queries if "set_config('app.tenant_id'" not in query["sql"]]


def time_statements(workspace, statements: list[str]) -> float:
    """Run the statements in the workspace's scope (one transaction, as a request), fetching every row; return the
    milliseconds."""
    from django.db import connection

    from crm_site.tenancy import tenant_scope

    started = time.perf_counter()
    with tenant_scope(workspace), connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
            if cursor.description is not None:  # not a SET
                cursor.fetchall()
    return (time.perf_counter() - started) * 1000


# --- The run --------------------------------------------------------------------------------------------

_NEXT_LINK = re.compile(r'rel="next" href="\?([^"]*)"')
_COUNT = re.compile(r'id="customer-count"[^>]*>\s*([^<]*?customers?(?: match)?)[ ,]')


def deep_page_params(browser: Browser, base: str, params: dict, pages: int) -> dict:
    """Follow the "next" link ``pages`` times and return the parameters of the page reached."""
    from html import unescape
    from urllib.parse import parse_qsl

    current = dict(params)
    for _ in range(pages):
        status, body, _ = browser.get(f"{base}?{urlencode(current)}")
        match = _NEXT_LINK.search(body)
        if status != 200 or match is None:
            break
        current = dict(parse_qsl(unescape(match.group(1))))
    return current


def benchmark_pages(*, workspace_slug: str = "bench", requests: int = 30, deep_pages: int = 20,
                    urls: list[tuple[str, dict]] | None = None, echo=print) -> list[PageTiming]:
    """Measure each list URL over HTTP and its SQL directly; print a table and return the timings."""
    from django.conf import settings
    from django.urls import reverse

    from crm_site.models import Workspace

    if not settings.IS_POSTGRES:
        raise SystemExit("bench/pages.py measures PostgreSQL: set DATABASE_URL=postgres://… (README.md)")
    requests = max(1, min(requests, MAX_REQUESTS))
    workspace = Workspace.objects.get(slug=workspace_slug)
    base = reverse("customers:list", args=[workspace.slug])
    urls = list(urls if urls is not None else list_urls(workspace))
    session_key = signed_in_session(workspace)
    timings = []
    with web_server() as host:
        browser = Browser(host, session_key)
        try:
            if deep_pages:
                for label, params in (("page %d (newest first)", {}), ("page %d by name", {"sort": "name"}),
                                      ("page %d by spend", {"sort": "-spend"})):
                    urls.append((label % (deep_pages + 1), deep_page_params(browser, base, params, deep_pages)))
            for label, params in urls:
                url = f"{base}?{urlencode(params)}" if params else base
                timing = PageTiming(label, url)
                for attempt in range(WARM_UP + requests):
                    status, body, elapsed = browser.get(url)
                    if status != 200 or 'id="customer-table"' not in body:
                        raise SystemExit(f"{label}: {url} answered {status}: {body[:500]}")
                    if attempt >= WARM_UP:
                        timing.page_ms.append(elapsed)
                count = _COUNT.search(body)
                timing.shown = count.group(1).strip() if count else ""
                statements = page_statements(workspace, params)
                timing.statements = len(statements)
                for attempt in range(WARM_UP + requests):
                    elapsed = time_statements(workspace, statements)
                    if attempt >= WARM_UP:
                        timing.sql_ms.append(elapsed)
                timings.append(timing)
        finally:
            browser.close()
    _report(timings, workspace, requests, echo)
    return timings


def stale_statistics(workspace, tables=("customers_customer", "lifecycle_customermetrics")) -> list[str]:
    """Return a warning per table whose planner statistics count far fewer rows than the workspace holds (not
    ANALYZEd since a bulk write): the plans, and so the timings, are then not those of a settled database."""
    from django.db import connection

    from crm_site.tenancy import tenant_scope

    warnings = []
    with tenant_scope(workspace), connection.cursor() as cursor:
        for table in tables:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [table])
            row = cursor.fetchone()
            if row is None:
                continue
            cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)} WHERE tenant_id = %s",
                           [workspace.pk])
            rows = cursor.fetchone()[0]
            if rows > 1000 and max(row[0], 0) < rows / 2:
                warnings.append(f"WARNING: the planner believes {table} holds {max(row[0], 0):,} rows, the workspace "
                                f"alone has {rows:,}: run ANALYZE {table} for settled plans")
    return warnings


def _report(timings: list[PageTiming], workspace, requests: int, echo) -> None:
    from crm_site.tenancy import tenant_scope
    from customers.models import Customer

    with tenant_scope(workspace):
        customers = Customer.objects.count()
    echo(f"Customer list of workspace '{workspace.slug}' ({customers:,} customers), {requests} requests per URL "
         f"after {WARM_UP} warm-up; milliseconds")
    for warning in stale_statistics(workspace):
        echo(warning)
    echo(f"{'URL':<46} {'page p50':>9} {'p95':>7} {'SQL p50':>8} {'p95':>7} {'ratio':>6} {'stmts':>5}  matches")
    for timing in timings:
        flag = "  SLOW" if timing.page_p95 > SLOW_MS else ""
        echo(f"{timing.label:<46} {timing.page_p50:9.1f} {timing.page_p95:7.1f} {timing.sql_p50:8.1f} "
             f"{timing.sql_p95:7.1f} {timing.ratio:6.1f} {timing.statements:5d}  {timing.shown}{flag}")
    worst = max(timings, key=lambda timing: timing.page_p95)
    overall = statistics.median(timing.ratio for timing in timings)
    echo(f"Slowest p95: {worst.page_p95:.1f} ms ({worst.label}); median ratio page/SQL: {overall:.1f}; "
         f"{sum(timing.page_p95 > SLOW_MS for timing in timings)} URL(s) above {SLOW_MS} ms at p95")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default="bench")
    parser.add_argument("--requests", type=int, default=30, help=f"Timed requests per URL (at most {MAX_REQUESTS}).")
    parser.add_argument("--deep-pages", type=int, default=20, help="How far the deep-page URLs follow 'next'.")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="Measure only the URLs whose label contains TEXT (repeatable; no deep pages).")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm_site.settings")
    import django

    django.setup()
    urls = None
    if args.only:
        from crm_site.models import Workspace

        urls = [(label, params) for label, params in list_urls(Workspace.objects.get(slug=args.workspace))
                if any(text in label for text in args.only)]
    timings = benchmark_pages(workspace_slug=args.workspace, requests=args.requests,
                              deep_pages=0 if args.only else args.deep_pages, urls=urls)
    return 0 if all(timing.page_p95 <= SLOW_MS for timing in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
