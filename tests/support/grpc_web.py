"""A gRPC-Web client for tests, as a browser library speaks it (binary mode, HTTP/1.1).

Frames are a flag byte and a 4-byte length; a flag with 0x80 set carries the trailers
as HTTP header lines. A refusal before any upstream answers (trailers-only) carries
`grpc-status` in the response headers instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.protobuf.message import Message

CONTENT_TYPE = "application/grpc-web+proto"


@dataclass
class GrpcWebReply:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int | None:
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))


def frame(message: Message) -> bytes:
    data = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


def parse(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    at = 0
    while at < len(body):
        flag, size = body[at], struct.unpack(">I", body[at + 1 : at + 5])[0]
        payload = body[at + 5 : at + 5 + size]
        at += 5 + size
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                name, sep, value = line.partition(":")
                if sep:
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


async def call(
    base_url: str, method: str, request: Message, headers: dict[str, str] | None = None
) -> GrpcWebReply:
    """POST one unary gRPC-Web call to `base_url` + `/pkg.Service/Method`."""
    sent: dict[str, Any] = {"content-type": CONTENT_TYPE, "x-grpc-web": "1", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url}{method}",
            data=frame(request),
            headers=sent,
            timeout=aiohttp.ClientTimeout(10),
        ) as resp,
    ):
        body = await resp.read()
        reply = GrpcWebReply(resp.status, {k.lower(): v for k, v in resp.headers.items()})
    reply.messages, reply.trailers = parse(body)
    return reply
