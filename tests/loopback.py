"""Stdlib clients for servers the tests start on 127.0.0.1: JSON over HTTP and a minimal WebSocket (RFC 6455).

The WebSocket carries ComfyUI's progress messages and Chromium's DevTools protocol; both tests run in the pack's own
virtual environment, which has no WebSocket library, and these two uses need only text frames. Every call has a
timeout and every URL is checked to be on the loopback interface.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost")


def _loopback(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"tests only talk to the loopback interface, not {url}")
    return parts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HTTPError(Exception):
    """A non-2xx answer, with its status and decoded body (ComfyUI puts validation errors in the body of a 400)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {str(body)[:3000]}")
        self.status, self.body = status, body


def request_bytes(url: str, data: bytes | None = None, timeout: float = 30) -> bytes:
    """GET (data None) or POST JSON bytes; the answer's body (HTTPError with the decoded body on an error status)."""
    _loopback(url)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = raw.decode(errors="replace")
        raise HTTPError(error.code, decoded) from None


def request_json(url: str, body: Any = None, timeout: float = 30) -> Any:
    """GET (body None) or POST JSON; the decoded answer, {} for an empty one."""
    raw = request_bytes(url, None if body is None else json.dumps(body).encode(), timeout)
    return json.loads(raw) if raw.strip() else {}


class WebSocket:
    """A client WebSocket: text messages in and out, pings answered, binary messages skipped."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        parts = _loopback(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"WebSocket upgrade refused by {url}: {status.decode(errors='replace')}")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("WebSocket closed by the server")
        self._buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)  # a client masks every frame
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, message: Any) -> None:
        self._send_frame(0x1, json.dumps(message).encode())

    def receive(self) -> Any:
        """The next text message, decoded from JSON (blocks up to the socket timeout)."""
        parts, kind = [], None
        while True:
            first, second = self._take(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._take(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._take(8))
            mask = self._take(4) if second & 0x80 else None
            payload = self._take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("WebSocket closed by the server")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode != 0x0:
                kind, parts = opcode, []
            parts.append(payload)
            if first & 0x80:
                if kind == 0x1:
                    return json.loads(b"".join(parts))
                parts, kind = [], None  # a binary message (ComfyUI's previews): not ours to read

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()
