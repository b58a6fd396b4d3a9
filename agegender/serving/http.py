"""What serve.py bounds below the routes: the HTTP connection (header size, read and idle timeouts, a
connection cap, in uvicorn's httptools protocol) and every request's envelope (request id, access log line,
the rest of an unread body read and discarded before answering, client disconnects as one log line).

The protocol class subclasses uvicorn's (pinned in the requirements): uvicorn itself has no header cap and no
timeout while a request is arriving."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LOG = logging.getLogger("agegender.serve")
ACCESS = logging.getLogger("agegender.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# what a client could use to forge or hide log lines: C0 and C1 controls (newline, CR, ESC...), DEL, the
# Unicode line and paragraph separators, and the invisible direction and width marks
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def printable(text: object) -> str:
    """`text` for a log line: every character a client could forge a line with escaped as \\xNN or \\uNNNN."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                            str(text))


@dataclass(frozen=True)
class Limits:
    """What one client can make the server hold, per connection."""

    max_header_bytes: int = 64 * 1024   # request line + headers (431 above)
    read_timeout: float = 30.0          # a request's headers and body must arrive within this (408 after)
    idle_timeout: float = 15.0          # a connection with no request in progress is closed after this
    max_connections: int = 256          # connections over this get 503 to their request, then close
    drain_bytes: int = 64 * 1024 * 1024  # an early answer (413, 401...) first reads and drops this much body
    drain_seconds: float = 10.0         # ... for at most this long, then answers and closes


def error_bytes(status: int, reason: str, code: str, message: str, rid: str = "") -> bytes:
    """A complete HTTP/1.1 error answer in the service's JSON format that closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"x-request-id: {rid or uuid.uuid4().hex}\r\nconnection: close\r\n\r\n").encode() + body


def protocol_class(limits: Limits) -> type:
    """uvicorn's httptools protocol with `limits` enforced (pass as uvicorn's `http=`)."""

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_bytes, self._in_head, self._in_body, self._timer = 0, False, False, None
            self._over_cap = len(self.connections) > limits.max_connections
            self._arm(limits.idle_timeout, self._idle_expired)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float, callback) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _idle_expired(self) -> None:
            if not self._in_head and not self._in_body and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()

        def _read_expired(self) -> None:
            """The request did not arrive in time: 408 (unless an answer has begun), close, one log line."""
            scope = self.scope or {}
            where = (f"{printable(scope['method'])} {printable(scope['path'])}" if "path" in scope
                     else "(headers incomplete)")
            rid = scope.get("state", {}).get("request_id") or request_id(scope)
            LOG.warning("408 %s:%s %s: the request did not arrive within %.0f s, connection closed (request %s)",
                        *(self.client or ("?", 0)), where, limits.read_timeout, rid)
            if self.cycle is not None and not self.cycle.response_complete:
                self.scope["agegender.timed_out"] = True
                started = self.cycle.response_started
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            else:
                started = False
            if not started and not self.transport.is_closing():
                self.transport.write(error_bytes(408, "Request Timeout", "request_timeout",
                                                 f"the request did not arrive within {limits.read_timeout:g} s", rid))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if not self._in_body:
                self._head_bytes += len(data)
                if not self._in_head:  # the first bytes of a request: its clock starts
                    self._in_head = True
                    self._arm(limits.read_timeout, self._read_expired)
            super().data_received(data)
            if self._in_head and self._head_bytes > limits.max_header_bytes and not self.transport.is_closing():
                LOG.warning("431 %s:%s: request line and headers over %d bytes, connection closed",
                            *(self.client or ("?", 0)), limits.max_header_bytes)
                self.transport.write(error_bytes(431, "Request Header Fields Too Large", "headers_too_large",
                                                 f"the request line and headers are over "
                                                 f"{limits.max_header_bytes} bytes"))
                self.transport.close()

        def send_400_response(self, msg: str) -> None:  # a request that is not HTTP: our format too
            self.transport.write(error_bytes(400, "Bad Request", "bad_http", "the request is not valid HTTP/1.1"))
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._head_size += len(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._head_size += len(name) + len(value) + 4

        def on_headers_complete(self) -> None:
            # a head that arrived in one read is measured here; one arriving in pieces in data_received
            too_large = self._head_size > limits.max_header_bytes
            self._in_head, self._in_body, self._head_bytes = False, True, 0
            self.limit_concurrency = None  # the cap is ours: it answers in our format
            self.app = _busy if self._over_cap else self.config.loaded_app
            if too_large:
                self.app = _headers_too_large(limits.max_header_bytes)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body = False
            self._disarm()  # the work on a complete request is not the client's time
            super().on_message_complete()

    return GuardedProtocol


def _refusal(status: int, code: str, message: str, extra: tuple = ()):
    """An ASGI app that answers every request with this error, its id, and a closed connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()

    async def app(scope, receive, send) -> None:
        rid = request_id(scope)
        client = scope.get("client") or ("?", 0)
        LOG.warning("%d %s:%s %s %s: %s (request %s)", status, client[0], client[1], printable(scope["method"]),
                    printable(scope["path"]), code, rid)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", rid.encode()), (b"connection", b"close"), *extra]})
        await send({"type": "http.response.body", "body": body})
    return app


_busy = _refusal(503, "too_many_connections", "the server holds its maximum of connections; retry shortly",
                 ((b"retry-after", b"1"),))


def _headers_too_large(cap: int):
    return _refusal(431, "headers_too_large", f"the request line and headers are over {cap} bytes")


def _has_body(scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def request_id(scope) -> str:
    """The request's id: the client's X-Request-ID when it is a plain token, a new one otherwise."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


class Front:
    """ASGI middleware around the whole app: X-Request-ID on every answer, one access-log line per request
    (when `access_log`), an unread request body drained (up to `limits`) before an early answer so that
    every client reads it, a client that went away logged as one line, and `default_headers` on every
    answer that does not set them itself (the security headers)."""

    def __init__(self, app, limits: Limits = Limits(), access_log: bool = True,
                 default_headers: tuple[tuple[bytes, bytes], ...] = ()):
        self.app, self.limits, self.access_log, self.default_headers = app, limits, access_log, default_headers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        state = {"status": 0, "sent": 0, "received": 0, "done": not _has_body(scope),
                 "headers": scope.get("headers", [])}

        async def recv():
            state["asked"] = True
            msg = await receive()
            if msg["type"] == "http.request":
                state["received"] += len(msg.get("body", b""))
                state["done"] = state["done"] or not msg.get("more_body", False)
            else:
                state["done"] = True
            return msg

        async def snd(msg):
            if msg["type"] == "http.response.start":
                headers = [h for h in msg.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                given = {h[0].lower() for h in headers}
                headers += [h for h in self.default_headers if h[0] not in given]
                if not state["done"] and not await self._drain(recv, state):
                    headers.append((b"connection", b"close"))
                state["status"] = msg["status"]
                msg = {**msg, "headers": headers}
            elif msg["type"] == "http.response.body":
                state["sent"] += len(msg.get("body", b""))
            await send(msg)

        try:
            await self.app(scope, recv, snd)
        except ClientDisconnect:
            if not scope.get("agegender.timed_out"):
                LOG.info("%s %s: the client went away after sending %d bytes (request %s)",
                         printable(scope["method"]), printable(scope["path"]), state["received"], rid)
            state["status"] = state["status"] or (408 if scope.get("agegender.timed_out") else 499)
        except Exception:  # noqa: BLE001 -- a bug: its traceback in the log, the client a JSON 500
            LOG.exception("500 %s %s (request %s)", printable(scope["method"]), printable(scope["path"]), rid)
            if not state["status"]:
                body = json.dumps({"error": {"code": "internal_error", "message": "the request failed"}}).encode()
                await snd({"type": "http.response.start", "status": 500,
                           "headers": [(b"content-type", b"application/json"),
                                       (b"content-length", str(len(body)).encode())]})
                await snd({"type": "http.response.body", "body": body})
        finally:
            if self.access_log:
                client = scope.get("client") or ("-", 0)
                ACCESS.info("%s:%s %s %s %d %dB %.1fms id=%s", client[0], client[1], printable(scope["method"]),
                            printable(scope["path"]), state["status"], state["sent"],
                            (time.perf_counter() - t0) * 1000, rid)

    async def _drain(self, recv, state) -> bool:
        """Read and drop the rest of the body, within the limits; True when it was all read."""
        deadline = time.perf_counter() + self.limits.drain_seconds
        start = state["received"]
        if not state.get("asked") and (b"expect", b"100-continue") in [(k, v.lower()) for k, v in state["headers"]]:
            return False  # the client waits for "100 Continue" before sending: it never gets it, nothing to drain
        declared = dict(state["headers"]).get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) - start > self.limits.drain_bytes:
            return False  # more than the bound is coming: answer now and close
        while not state["done"]:
            left = deadline - time.perf_counter()
            if left <= 0 or state["received"] - start > self.limits.drain_bytes:
                return False
            try:
                await asyncio.wait_for(recv(), left)
            except asyncio.TimeoutError:
                return False
        return True


__all__ = ["Limits", "Front", "protocol_class", "request_id", "error_bytes", "printable"]
