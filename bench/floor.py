"""``python -m bench.floor --port N``: the HTTP floor the server's overhead is measured against.

The least any Python server on this stack can spend on one inference request: the same
uvicorn + uvloop + httptools, the same body read in full, parsed by orjson and decoded into a
float32 numpy array of the declared shape (as the server's codec does), and a constant small
JSON answer. No model, no batching, no middleware. ``bench.overhead`` runs it in the same run as
the server and raw ONNX Runtime, so (server CPU - raw ORT CPU) / floor CPU compares like with like.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import orjson

_ANSWER = orjson.dumps({"model_name": "floor", "model_version": "1", "outputs": [
    {"name": "output", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]})
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]
_READY = b'{"ready":true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: POST = read the body, decode its first input into an array, answer a constant;
    anything else (the bench's readiness probe) = 200."""
    if scope["type"] != "http":
        return
    body = _READY
    headers = [(b"content-type", b"application/json"), (b"content-length", b"14")]
    if scope["method"] == "POST":
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        doc = orjson.loads(b"".join(chunks))
        entry = doc["inputs"][0]
        x = np.asarray(entry["data"], dtype=np.float32).reshape(entry["shape"])
        if x.size == 0:
            raise ValueError("empty input")
        body, headers = _ANSWER, _HEADERS
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", server_header=False, lifespan="off")


if __name__ == "__main__":
    main()
