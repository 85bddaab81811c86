"""``python -m bench.floor --port N``: the HTTP floor the server's overhead is measured against.

The least any Python server on this stack can spend on one inference request: the same
uvicorn + uvloop + httptools, the same body read in full, parsed by orjson and decoded into a
float32 numpy array of the declared shape (as the server's codec does), and a constant small
JSON answer. No model, no batching, no middleware. ``bench.overhead`` runs it in the same run as
the server and raw ONNX Runtime, so (server CPU - raw ORT CPU) / floor CPU compares like with like.

``--bare`` does the same work on a bare httptools protocol without ASGI (:class:`BareProtocol`):
reported beside the floor, the difference is what the ASGI server layer costs a request.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import numpy as np
import orjson

_ANSWER = orjson.dumps({"model_name": "floor", "model_version": "1", "outputs": [
    {"name": "output", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]})
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]
_READY = b'{"ready":true}'


def decode_input(body: bytes) -> np.ndarray:
    """The floor's decode: the first input's data as a float32 array of its declared shape."""
    entry = orjson.loads(body)["inputs"][0]
    x = np.asarray(entry["data"], dtype=np.float32).reshape(entry["shape"])
    if x.size == 0:
        raise ValueError("empty input")
    return x


async def read_input(receive: Any) -> np.ndarray:
    """The whole ASGI request body, then :func:`decode_input`."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return decode_input(b"".join(chunks))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: POST = read the body, decode its first input into an array, answer a constant;
    anything else (the bench's readiness probe) = 200."""
    if scope["type"] != "http":
        return
    body = _READY
    headers = [(b"content-type", b"application/json"), (b"content-length", b"14")]
    if scope["method"] == "POST":
        await read_input(receive)
        body, headers = _ANSWER, _HEADERS
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BareProtocol(asyncio.Protocol):
    """``--bare``: the same work on a bare ``asyncio.Protocol`` over httptools (uvloop), no
    ASGI: no scope, request cycle, task or timer per request, one write per answer, keep-alive
    only. Not a server anyone should run; the distance from it to the floor is what the ASGI
    server layer itself (uvicorn's protocol and cycle) costs a request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.transport: Any = transport
        self.parser = httptools.HttpRequestParser(self)
        self.chunks: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.chunks = []

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = _READY
        if self.parser.get_method() == b"POST":
            decode_input(b"".join(self.chunks))
            body = _ANSWER
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bare", action="store_true", help="the same work without ASGI (BareProtocol)")
    args = ap.parse_args()
    if args.bare:
        import uvloop

        async def serve() -> None:
            server = await asyncio.get_running_loop().create_server(BareProtocol, "127.0.0.1", args.port, backlog=1024)
            await server.serve_forever()

        uvloop.run(serve())
        return
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", server_header=False, lifespan="off")


if __name__ == "__main__":
    main()
