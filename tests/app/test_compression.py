"""Compression both ways: tritonclient's request and response compression against the real
server, the body limit applied after decompression (a zip bomb is 413), unknown encodings 415,
and gzip answers only above the threshold."""

from __future__ import annotations

import gzip
import zlib

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from app.http.compression import decode_body
from app.v2.errors import InvalidInput, PayloadTooLarge, UnsupportedEncoding
from tests.conftest import Reference, Server

TOL = 1e-5


def json_body(x: np.ndarray, outputs: tuple[str, ...] = ("output",)) -> bytes:
    return orjson.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
        "outputs": [{"name": o} for o in outputs],
    })


@pytest.mark.parametrize("request_algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("response_algorithm", ["gzip", "deflate", None])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_compression_options(
    server: Server, reference: Reference, request_algorithm: str, response_algorithm: str | None, binary: bool
) -> None:
    x = np.random.default_rng(1).standard_normal((3, 40, 3)).astype(np.float32)  # many-to-many: a large answer
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = triton.InferenceServerClient(server.hostport).infer(
        "bi", [inp], outputs=[triton.InferRequestedOutput("output", binary_data=binary)],
        request_compression_algorithm=request_algorithm, response_compression_algorithm=response_algorithm,
    )
    want = np.stack([reference.run("bi", s)["output"][0] for s in x])
    np.testing.assert_allclose(result.as_numpy("output"), want, atol=TOL)


def test_gzip_answers_above_the_threshold_only(server: Server) -> None:
    big = json_body(np.ones((3, 40, 3), np.float32))  # "bi" answers 3*40*2 floats: over 1 KiB
    small = json_body(np.ones((1, 2, 3), np.float32))
    url = f"{server.url}/v2/models/bi/infer"
    with httpx.Client(headers={"accept-encoding": "gzip"}) as client:
        resp = client.post(url, content=big, headers={"content-type": "application/json"})
        assert resp.status_code == 200 and resp.headers["content-encoding"] == "gzip"
        assert len(resp.json()["outputs"][0]["data"]) == 240  # httpx inflated it
        resp = client.post(url, content=small)
        assert resp.status_code == 200 and "content-encoding" not in resp.headers
    with httpx.Client(headers={"accept-encoding": "identity"}) as client:
        assert "content-encoding" not in client.post(url, content=big).headers


def test_a_zip_bomb_is_refused_by_its_decompressed_size(server: Server) -> None:
    limit = 16 * 1024 * 1024  # max_request_bytes' default
    bomb = gzip.compress(b"{" + b" " * (limit + 1024) + b"}", compresslevel=9)
    assert len(bomb) < 64 * 1024
    resp = httpx.post(f"{server.url}/v2/models/uni/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert resp.status_code == 413
    assert "inflates past the limit of 16777216 bytes" in resp.json()["error"]


def test_other_encodings_are_415_and_broken_data_is_400(server: Server) -> None:
    body = json_body(np.ones((1, 2, 3), np.float32))
    url = f"{server.url}/v2/models/uni/infer"
    resp = httpx.post(url, content=body, headers={"content-encoding": "br"})
    assert resp.status_code == 415 and "Content-Encoding 'br' is not supported" in resp.json()["error"]
    resp = httpx.post(url, content=body, headers={"content-encoding": "gzip"})  # says gzip, is not
    assert resp.status_code == 400 and "not valid gzip data" in resp.json()["error"]
    resp = httpx.post(url, content=body, headers={"content-encoding": "identity"})
    assert resp.status_code == 200


def test_decode_body_handles_every_deflate_form_and_stacked_encodings() -> None:
    raw = b'{"inputs": []}' * 100
    assert decode_body(raw, None, 10_000) == raw
    assert decode_body(zlib.compress(raw), "deflate", 10_000) == raw
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_body(raw_deflate.compress(raw) + raw_deflate.flush(), "deflate", 10_000) == raw
    assert decode_body(gzip.compress(zlib.compress(raw)), "deflate, gzip", 10_000) == raw
    assert decode_body(raw, "identity", 10_000) == raw
    with pytest.raises(PayloadTooLarge):
        decode_body(gzip.compress(raw), "gzip", len(raw) - 1)
    assert decode_body(gzip.compress(raw), "gzip", len(raw)) == raw
    with pytest.raises(InvalidInput, match="truncated"):
        decode_body(gzip.compress(raw)[:-12], "gzip", 10_000)
    with pytest.raises(UnsupportedEncoding, match="'zstd'"):
        decode_body(raw, "zstd", 10_000)
