"""Credentials in URLs: masked wherever a URL is shown, sent as a header where it is used.

A camera URL (``rtsp://user:password@host/...``) or a webhook URL may carry credentials, and
neither logs, JSON summaries nor alert events may repeat them. ``redact`` is the one masking
rule; ``request`` builds the HTTP request with a Basic ``Authorization`` header and a URL
without them, so no error message about the request can carry them either.
"""

from __future__ import annotations

import base64
import re
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

_SECRET_KEYS = r"password|passwd|pass|pwd|token|access_token|auth|key|apikey|api_key|secret|signature|sig"
_SECRET_QUERY = re.compile(rf"(?i)(^|&)((?:{_SECRET_KEYS})=)[^&]*")


def redact(url: str) -> str:
    """The URL with ``user:password@`` and secret-looking query values (``token=``...) as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = _SECRET_QUERY.sub(r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def request(url: str, data: bytes | None = None, headers: dict | None = None) -> urllib.request.Request:
    """An HTTP request to ``url`` whose credentials, if any, travel as a Basic Authorization header."""
    parts = urlsplit(url)
    headers = {"User-Agent": "m2s2l-deploy", **(headers or {})}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.request.Request(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), data=data,
                                  headers=headers)
