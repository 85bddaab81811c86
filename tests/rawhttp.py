"""HTTP/1.1 over a plain socket, for tests that need bytes no client library would send
(undecoded paths, raw non-ASCII, stalled bodies) and want to see exactly what comes back."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int  # 0: the server closed without an answer
    headers: dict[str, str]
    body: bytes
    closed: bool | None  # the server closed the connection after answering (None: not checked)
    elapsed_s: float


def request_bytes(method: str, target: bytes, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    hdrs = dict(headers or {})
    if body and "Content-Length" not in hdrs:
        hdrs["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}".encode() for k, v in hdrs.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def read_response(sock: socket.socket, timeout: float = 10.0, check_close: bool = False) -> RawResponse:
    """Read one response (Content-Length framed); with ``check_close``, then wait up to 0.5 s
    to see whether the server closes the connection."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return RawResponse(0, {}, data, True, time.monotonic() - start)
            data += chunk
    except ConnectionResetError:
        return RawResponse(0, {}, data, True, time.monotonic() - start)
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    elapsed = time.monotonic() - start
    if not check_close:
        return RawResponse(int(status_line.split()[1]), headers, rest[:length], None, elapsed)
    sock.settimeout(0.5)
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    except ConnectionResetError:
        closed = True
    return RawResponse(int(status_line.split()[1]), headers, rest[:length], closed, elapsed)


def exchange(hostport: str, raw: bytes, timeout: float = 10.0, check_close: bool = False) -> RawResponse:
    """Send ``raw`` on a new connection and read the answer."""
    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_response(sock, timeout, check_close)
