"""The test harness every issue reuses: services, tenants and members, an SMTP sink, a Celery worker, a browser.

Tests marked ``postgres`` or ``redis`` need those servers. Without them they skip, unless
RAPPORT_REQUIRE_SERVICES=1 (as in CI), where a missing service fails the test instead.
"""

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
from django.conf import settings
from django.db import connection

from crm_site.models import Role
from tests.factories import PASSWORD, MembershipFactory, UserFactory, WorkspaceFactory

REQUIRE_SERVICES = os.environ.get("RAPPORT_REQUIRE_SERVICES") == "1"
CHROMIUM = "/usr/bin/chromium"


def _missing(reason: str):
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (RAPPORT_REQUIRE_SERVICES=1: required here)")
    pytest.skip(reason)


def pytest_runtest_setup(item):
    if item.get_closest_marker("postgres") and not settings.IS_POSTGRES:
        _missing("needs PostgreSQL: set DATABASE_URL=postgres://…")
    if item.get_closest_marker("redis") and not os.environ.get("RAPPORT_TEST_REDIS_URL"):
        _missing("needs Redis: set RAPPORT_TEST_REDIS_URL=redis://…")
    if item.get_closest_marker("browser") and not os.path.exists(CHROMIUM):
        _missing("needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture(autouse=True)
def _isolated_settings(settings, tmp_path):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.MEDIA_ROOT = tmp_path / "media"
    from django.core.cache import cache

    cache.clear()


# --- Tenants and members -------------------------------------------------------------------------


@pytest.fixture
def workspace(db):
    return WorkspaceFactory(name="Acme Coffee", slug="acme")


@pytest.fixture
def other_workspace(db):
    return WorkspaceFactory(name="Globex Tea", slug="globex")


@pytest.fixture
def member_client(client, workspace):
    """Return a function giving a test client signed in as a member of a workspace with a role."""

    def signed_in(role=Role.MARKETER, ws=None, user=None):
        user = user or UserFactory()
        MembershipFactory(workspace=ws or workspace, user=user, role=role)
        client.force_login(user)
        client.user = user
        return client

    return signed_in


@pytest.fixture
def marketer_client(member_client):
    return member_client(Role.MARKETER)


@pytest.fixture
def is_superuser_db():
    """True when the test database role bypasses row-level security (superuser or BYPASSRLS)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
        return cursor.fetchone()[0]


# --- SMTP sink: a real SMTP server (aiosmtpd) on a free local port -------------------------------


@dataclass
class SmtpSink:
    host: str
    port: int
    messages: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_sink(settings):
    """A real SMTP server; Django's SMTP backend is pointed at it. Received mails are email.message objects."""
    from email import message_from_bytes, policy

    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            message = message_from_bytes(envelope.content, policy=policy.default)
            with sink.lock:
                sink.messages.append(
                    {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "message": message}
                )
            return "250 OK"

    port = _free_port()
    sink = SmtpSink("127.0.0.1", port)
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    try:
        yield sink
    finally:
        controller.stop()


# --- Celery worker against Redis --------------------------------------------------------------------


@contextlib.contextmanager
def _redis_broker():
    """Point Celery at an emptied Redis (RAPPORT_TEST_REDIS_URL) for the block; yields (app, Redis client)."""
    redis_url = os.environ.get("RAPPORT_TEST_REDIS_URL")
    if not redis_url:
        _missing("needs Redis: set RAPPORT_TEST_REDIS_URL=redis://…")
    from crm_site.celery import app

    saved = {key: app.conf.get(key) for key in ("broker_url", "task_always_eager", "broker_transport_options")}
    app.conf.update(broker_url=redis_url, task_always_eager=False, broker_transport_options={"visibility_timeout": 60})
    _reset_broker_pools(app)
    client = app.connection_for_write().default_channel.client
    client.flushdb()
    try:
        yield app, client
    finally:
        app.conf.update(saved)
        _reset_broker_pools(app)


@pytest.fixture
def celery_worker(transactional_db):
    """A real Celery worker thread consuming from Redis (RAPPORT_TEST_REDIS_URL) for the test's duration."""
    from celery.contrib.testing.worker import start_worker

    with _redis_broker() as (app, _client):
        queues = ["default", "lifecycle", "dispatch", "send"]
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING",
                          queues=queues, shutdown_timeout=10):
            yield app


class BrokerQueues:
    """What tasks are waiting in the real Redis broker, read back from its queues (no worker consumes them)."""

    def __init__(self, client):
        self.client = client

    def tasks(self, queue: str) -> list[tuple[str, list]]:
        """Return (task name, positional args) of the messages waiting in ``queue``, oldest first."""
        import base64
        import json

        waiting = []
        for raw in reversed(self.client.lrange(queue, 0, -1)):  # kombu LPUSHes, workers take from the right
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            waiting.append((message["headers"]["task"], args))
        return waiting


@pytest.fixture
def broker_queues():
    """Point Celery at an emptied Redis (RAPPORT_TEST_REDIS_URL) with no worker (a test may start one), and read
    what gets queued."""
    with _redis_broker() as (_app, client):
        yield BrokerQueues(client)
        client.flushdb()


@pytest.fixture
def broker_down():
    """Point Celery at a port where no broker listens, as when Redis is down; publishing fails fast."""
    from crm_site.celery import app

    saved = {key: app.conf.get(key) for key in ("broker_url", "task_always_eager", "task_publish_retry")}
    app.conf.update(broker_url=f"redis://127.0.0.1:{_free_port()}/0", task_always_eager=False,
                    task_publish_retry=False)
    _reset_broker_pools(app)
    yield
    app.conf.update(saved)
    _reset_broker_pools(app)


def _reset_broker_pools(app):
    """Forget pooled broker connections and producers, so the next task goes to the broker now configured."""
    from kombu import pools

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


# --- Browser: Playwright driving Debian's Chromium, never a downloaded browser -----------------------


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        _missing("needs Debian's Chromium at /usr/bin/chromium")
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.console_errors = console_errors
    yield page
    context.close()


@pytest.fixture
def login(page):
    """Sign in through the login form as a user; returns the page."""

    def sign_in(user):
        page.goto("/accounts/login/")
        page.fill("input[name=username]", user.username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        return page

    return sign_in
