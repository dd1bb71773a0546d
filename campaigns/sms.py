"""SMS channel backends, pluggable like Django's e-mail backends (setting ``RAPPORT_SMS_BACKEND``).

* ``FileSmsBackend`` writes each text to a file under ``RAPPORT_SMS_FILE_PATH`` (the default: nothing leaves the machine);
* ``ConsoleSmsBackend`` prints them;
* ``LocmemSmsBackend`` keeps them in ``campaigns.sms.outbox`` (tests);
* ``HttpSmsBackend`` posts JSON to a provider's REST endpoint (``RAPPORT_SMS_HTTP_URL`` with a bearer
  ``RAPPORT_SMS_HTTP_TOKEN``) and reads the provider's message id from the answer.

A backend's ``send(message)`` returns the provider's id, raises ``SmsTemporaryError`` for a failure worth
retrying (timeouts, 429, 5xx) and ``SmsPermanentError`` for one that is not (invalid number, 4xx).
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

outbox: list[SmsMessage] = []


@dataclass(frozen=True)
class SmsMessage:
    to: str
    body: str
    sender: str = ""
    reference: str = ""  # our idempotency key (the outbox Message-ID); providers that support one get it


class SmsError(Exception):
    pass


class SmsTemporaryError(SmsError):
    """The provider could not take the message now; retry later."""


class SmsPermanentError(SmsError):
    """The provider refused the message for good (invalid number, blocked content…)."""


class BaseSmsBackend:
    def open(self) -> None:
        """Prepare a connection for a batch (HTTP keep-alive…)."""

    def close(self) -> None:
        """Release what ``open`` prepared."""

    def send(self, message: SmsMessage) -> str:
        """Deliver one text; return the provider's message id."""
        raise NotImplementedError

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class LocmemSmsBackend(BaseSmsBackend):
    def send(self, message: SmsMessage) -> str:
        outbox.append(message)
        return f"locmem-{len(outbox)}"


class ConsoleSmsBackend(BaseSmsBackend):
    _lock = threading.Lock()

    def send(self, message: SmsMessage) -> str:
        with self._lock:
            sys.stdout.write(f"SMS from {message.sender or '-'} to {message.to}:\n{message.body}\n{'-' * 40}\n")
            sys.stdout.flush()
        return f"console-{uuid.uuid4().hex[:12]}"


class FileSmsBackend(BaseSmsBackend):
    def send(self, message: SmsMessage) -> str:
        folder = Path(settings.RAPPORT_SMS_FILE_PATH)
        folder.mkdir(parents=True, exist_ok=True)
        message_id = f"file-{uuid.uuid4().hex[:16]}"
        payload = {"id": message_id, "to": message.to, "from": message.sender, "body": message.body,
                   "reference": message.reference}
        (folder / f"{message_id}.json").write_text(json.dumps(payload, ensure_ascii=False))
        return message_id


class HttpSmsBackend(BaseSmsBackend):
    """POST {"to", "from", "body", "reference"} as JSON; expects 2xx with {"id": "..."} (or {"sid": ...})."""

    timeout = 10

    def __init__(self, url: str | None = None, token: str | None = None):
        self.url = url or settings.RAPPORT_SMS_HTTP_URL
        self.token = token if token is not None else settings.RAPPORT_SMS_HTTP_TOKEN
        self.session = None

    def open(self) -> None:
        import requests

        if not self.url:
            raise SmsPermanentError("RAPPORT_SMS_HTTP_URL is not set")
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def send(self, message: SmsMessage) -> str:
        import requests

        if self.session is None:
            self.open()
        payload = {"to": message.to, "from": message.sender, "body": message.body, "reference": message.reference}
        headers = {"Idempotency-Key": message.reference} if message.reference else {}
        try:
            response = self.session.post(self.url, json=payload, headers=headers, timeout=self.timeout)
        except requests.RequestException as error:
            raise SmsTemporaryError(f"SMS provider unreachable: {error.__class__.__name__}") from error
        if response.status_code == 429 or response.status_code >= 500:
            raise SmsTemporaryError(f"SMS provider answered {response.status_code}")
        if response.status_code >= 400:
            raise SmsPermanentError(f"SMS provider refused the message ({response.status_code}): {response.text[:200]}")
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return str(answer.get("id") or answer.get("sid") or answer.get("message_id") or "")


def get_sms_backend(path: str | None = None) -> BaseSmsBackend:
    """Return an instance of the configured SMS backend (or the one at ``path``)."""
    return import_string(path or settings.RAPPORT_SMS_BACKEND)()
