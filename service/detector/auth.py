"""Optional API keys on the detection endpoints: Bearer, X-API-Key or DeepStack's `api_key` field.

Off while config `api_keys` is empty. When on, the endpoints that run a detection
(DETECTION_ENDPOINTS) answer 401 JSON with `WWW-Authenticate` unless the request presents one of
the keys; the page, /status_check, /healthz, /readyz, /version, /metrics and static files stay
open (nginx limits /metrics by address). A key is taken from, in this order:
`Authorization: Bearer KEY`, `X-API-Key: KEY`, or the form field `api_key` (as DeepStack and its
clients send it). Query strings are never read: they end up in access logs.

Keys are compared as SHA-256 digests with hmac.compare_digest against every configured key
(no early exit), so neither which key matched nor a key's length shows in the timing; keys and
presented values are never logged or echoed.

`api_keys_local_exempt`: a request that reached gunicorn on its unix socket directly (no IP
peer address) and carries no proxy header is not asked for a key. nginx sets X-Forwarded-For on
everything it proxies, so every request from the network still needs a key; what is exempt is a
process on the host that can open the socket itself (fab's smoke check over SSH, an operator's
curl), which could already bypass nginx. The deploy gate therefore needs no key and fab never
sees the vault (see README "Integrations").
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from flask import Flask
from flask import request

from .config import Config
from .errors import DRAIN_FACTOR
from .errors import drain_body
from .errors import error_response

# The views that run the model (blueprint.function names).
DETECTION_ENDPOINTS = frozenset({"api.detect", "web.detect_and_draw", "deepstack.detection"})
FORM_FIELD = "api_key"
HEADER = "X-API-Key"
REALM = 'Bearer realm="detector"'
# Headers a proxy adds; their presence means the request did not come from the host directly.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def digest(key: str) -> bytes:
    """Return the SHA-256 digest compared in place of a key (fixed length: no length leak)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def matches(presented: str, digests: tuple[bytes, ...]) -> bool:
    """Say whether `presented` is one of the keys, comparing against every one in constant time."""
    candidate = digest(presented)
    found = False
    for known in digests:
        found |= hmac.compare_digest(candidate, known)
    return found


def presented_key() -> str | None:
    """Return the key the request carries (header first, then the form field), None if none."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    header = request.headers.get(HEADER, "").strip()
    if header:
        return header
    if request.mimetype in _FORM_TYPES:
        value = request.form.get(FORM_FIELD, "").strip()  # parses the body (size-limited)
        if value:
            return value
    return None


def is_local_peer() -> bool:
    """True when the request came on the unix socket itself, not through a proxy."""
    peer = request.environ.get("REMOTE_ADDR") or ""
    try:
        ipaddress.ip_address(peer)
        return False  # a TCP peer, loopback included (nginx or anyone on the network)
    except ValueError:
        pass
    return not any(name in request.headers for name in PROXY_HEADERS)


def register(app: Flask, config: Config) -> None:
    """Install the key check on the app when config.api_keys is set; otherwise do nothing."""
    if not config.api_keys:
        return
    digests = tuple(digest(key) for key in config.api_keys)
    local_exempt = config.api_keys_local_exempt

    @app.before_request
    def _require_key():
        if request.endpoint not in DETECTION_ENDPOINTS or request.method == "OPTIONS":
            return None  # CORS preflights carry no credentials
        if local_exempt and is_local_peer():
            return None
        key = presented_key()
        if key is None:
            message = (
                "an API key is required: send it as `Authorization: Bearer KEY`, "
                f"`{HEADER}: KEY` or the form field `{FORM_FIELD}`"
            )
        elif matches(key, digests):
            return None
        else:
            message = "the API key is not valid; check it against the server's detector_api_keys"
        # An unread body (a raw image posted with the key in a header) would be parsed as the
        # keep-alive client's next request: read and drop it (bounded) before answering.
        drain_body(DRAIN_FACTOR * (app.config.get("MAX_CONTENT_LENGTH") or 0))
        response = error_response(401, message)
        response.headers["WWW-Authenticate"] = REALM
        return response
