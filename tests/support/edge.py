"""A client of the edge for tests: HTTP (REST/JSON) and grpcurl, through Envoy's listener."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from typing import Any

from mesh.tools import grpcurl_binary


class EdgeClient:
    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON body or text) of one request."""
        req = urllib.request.Request(
            f"http://{self.address}{path}", data=body, method=method, headers=headers or {}
        )
        if body is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode()

    def json(
        self, method: str, path: str, doc: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        body = json.dumps(doc).encode() if doc is not None else None
        return self.http(method, path, body, headers)

    def grpcurl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`grpcurl -plaintext <args>`; put the edge address where grpcurl expects it."""
        return subprocess.run(
            [grpcurl_binary(), "-plaintext", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def call(self, method: str, request: Any, *headers: str) -> subprocess.CompletedProcess[str]:
        """grpcurl a JSON request to `pkg.Service/Method` through the edge."""
        hdr_args = [a for h in headers for a in ("-H", h)]
        return self.grpcurl(*hdr_args, "-d", json.dumps(request), self.address, method)
