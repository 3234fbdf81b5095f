"""One HTTP/1.1 request exactly as written (path bytes untouched), from a chosen source.

`urllib` would tidy a path or refuse odd headers; edge hardening tests need to
send `//api`, `%2e%2e`, `x_header` and huge headers as an attacker would, and
to come from another loopback address (`source="127.0.0.2"`) to be a second
client for per-address limits.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    source: str = "127.0.0.1",
    timeout: float = 10.0,
) -> RawResponse:
    """Send one request to 127.0.0.1:`port` from `source` and read the whole answer."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0)
    )
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("content-type", "application/json")
            all_headers["content-length"] = str(len(body))
        for name, value in all_headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
