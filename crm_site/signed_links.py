"""Signed links made cheaply, for the public pages (customers.public_links) and the tracked links of campaigns:
a sender writes five per message (two tracked links, the open pixel, unsubscribe, preferences).

``signed_token`` returns exactly what ``django.core.signing.dumps(value, salt=salt, compress=True)`` returns
(the same JSON, compression rule, timestamp and HMAC-SHA256 over the same bytes), so ``signing.loads`` and
every view that reads these tokens accept them unchanged; only the key derivation (a hash of salt and
secret) runs once per salt instead of once per token. ``absolute_url`` reverses a URL pattern once per
pattern and fixed arguments (the workspace's slug) and then places each token into it, which is what
``reverse()`` gives for a token's characters (URL-safe base64, ``.`` and ``:``, none of them quoted).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
import zlib

from django.conf import settings
from django.core.signing import b62_encode, b64_encode
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils.encoding import force_bytes

_JSON = json.JSONEncoder(separators=(",", ":"))  # django.core.signing.JSONSerializer's form
_TOKEN_MARK = ":T0KEN:"  # URL-safe, and no slug can hold a ':'


@functools.lru_cache(maxsize=32)
def _derived_key(salt: str, secret: str | bytes) -> hmac.HMAC:
    # salted_hmac(salt + "signer", value, secret, algorithm="sha256"), less the per-call key hash.
    key = hashlib.sha256(force_bytes(salt + "signer") + force_bytes(secret)).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def signed_token(value, salt: str) -> str:
    """Return the token ``django.core.signing.dumps(value, salt=salt, compress=True)`` would make now."""
    data = _JSON.encode(value).encode("latin-1")
    compressed = zlib.compress(data)
    if len(compressed) < len(data) - 1:
        payload = "." + b64_encode(compressed).decode()
    else:
        payload = b64_encode(data).decode()
    payload = f"{payload}:{b62_encode(int(time.time()))}"
    mac = _derived_key(salt, settings.SECRET_KEY).copy()
    mac.update(payload.encode())
    return f"{payload}:{b64_encode(mac.digest()).decode()}"


@functools.lru_cache(maxsize=256)
def _around_token(view_name: str, fixed: tuple, script_prefix: str, urlconf: str,
                  site_url: str) -> tuple[str, str]:
    path = reverse(view_name, urlconf=urlconf, kwargs={**dict(fixed), "token": _TOKEN_MARK})
    if path.count(_TOKEN_MARK) != 1:
        raise ValueError(f"{view_name}: its URL does not hold the token exactly once: {path}")
    before, _, after = path.partition(_TOKEN_MARK)
    return site_url + before, after


def absolute_url(view_name: str, token: str, **fixed) -> str:
    """Return ``settings.SITE_URL + reverse(view_name, kwargs={**fixed, "token": token})`` (a signed token)."""
    before, after = _around_token(view_name, tuple(sorted(fixed.items())), get_script_prefix(),
                                  get_urlconf() or settings.ROOT_URLCONF, settings.SITE_URL)
    return f"{before}{token}{after}"
