"""GET /metrics after real traffic: the exposition's fixed shape, exact counts, promtool's lint,
and a real Prometheus scraping the server and answering the p99 query.

The server here is this module's own (max_batch_size=48), so every count is exact: the shared
session server is used by other tests.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import FAMILIES, GPU_FAMILIES
from tests.conftest import Server, free_port, start_server

MAX_BATCH = 48
CPU = "CPUExecutionProvider"
MODELS = ("uni", "bi", "demo")  # demo gets no traffic: its series must exist at zero
P99 = "histogram_quantile(0.99, sum by (le) (rate(lstm_serve_request_duration_seconds_bucket[1m])))"
BOGUS_MODEL = "no-such-model-7f3a"  # a client-made name: must never become a label value


def body(x: np.ndarray, lengths: list[int] | None = None) -> dict:
    inputs = [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    if lengths is not None:
        inputs.append({"name": "sequence_lens", "datatype": "INT32", "shape": [len(lengths)], "data": lengths})
    return {"inputs": inputs, "outputs": [{"name": "output"}]}


@dataclass
class Sent:
    """What the traffic fixture sent and saw: the ground truth the exposition must match."""

    codes: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (model, code)
    sequences: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ok: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    inflight_while_held: float = 0.0
    text: str = ""  # the exposition once idle


@pytest.fixture(scope="module")
def metrics_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(model_repo, tmp_path_factory.mktemp("metrics-logs"), max_batch_size=MAX_BATCH, providers="cpu")
    yield srv
    srv.stop()


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(text: str, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


@pytest.fixture(scope="module")
def sent(metrics_server: Server) -> Sent:
    """Real traffic with known counts, then the exposition captured once the server is idle."""
    url = metrics_server.url
    out = Sent()
    rng = np.random.default_rng(11)
    with httpx.Client(base_url=url, timeout=30) as client:
        # Sequential, ragged rows inside each request: padding > 0 even at batch 1.
        for _ in range(4):
            x = rng.standard_normal((3, 9, 3)).astype(np.float32)
            r = client.post("/v2/models/uni/infer", json=body(x, [9, 1, 5]))
            assert r.status_code == 200, r.text
            out.codes["uni", "200"] += 1
            out.sequences["uni"] += 3
            out.ok["uni"] += 1
        # Errors: a 400 on a known model, 404s for an unknown model and an unknown version.
        for _ in range(2):
            r = client.post("/v2/models/uni/infer", json=body(np.zeros((1, 2, 4), np.float32)))
            assert r.status_code == 400, r.text
            out.codes["uni", "400"] += 1
        for path in (f"/v2/models/{BOGUS_MODEL}/infer", "/v2/models/uni/versions/7/infer"):
            r = client.post(path, json=body(np.zeros((1, 2, 3), np.float32)))
            assert r.status_code == 404, r.text
            out.codes["", "404"] += 1
        # Requests that are not inference must not be counted.
        for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/uni", "/v2"):
            assert client.get(path).status_code == 200

    # 96 one-sequence requests from 64 concurrent clients: batches > 1 can only come from the
    # batcher merging requests.
    jobs = []
    for i in range(96):
        model = "bi" if i % 2 else "uni"
        jobs.append((model, rng.standard_normal((1, int(rng.integers(1, 30)), 3)).astype(np.float32)))

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as ac:
            sem = asyncio.Semaphore(64)

            async def one(model: str, x: np.ndarray) -> httpx.Response:
                async with sem:
                    return await ac.post(f"/v2/models/{model}/infer", json=body(x))

            return await asyncio.gather(*(one(*j) for j in jobs))

    for (model, x), r in zip(jobs, asyncio.run(burst())):
        assert r.status_code == 200, r.text
        out.codes[model, "200"] += 1
        out.sequences[model] += 1
        out.ok[model] += 1

    # Two requests whose bodies are held back are in flight (the gauge counts from the headers
    # on) until the rest of their bodies arrives.
    payload = json.dumps(body(np.ones((1, 4, 3), np.float32))).encode()
    head = (
        f"POST /v2/models/uni/infer HTTP/1.1\r\nHost: {metrics_server.hostport}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    socks = [socket.create_connection(("127.0.0.1", metrics_server.port), timeout=30) for _ in range(2)]
    try:
        for sock in socks:
            sock.sendall(head + payload[:10])
        deadline = time.monotonic() + 5
        while out.inflight_while_held < 2 and time.monotonic() < deadline:
            out.inflight_while_held = _value(metrics_server.metrics(), "lstm_serve_inflight_requests") or 0.0
            time.sleep(0.02)
        for sock in socks:
            sock.sendall(payload[10:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            out.codes["uni", "200"] += 1
            out.sequences["uni"] += 1
            out.ok["uni"] += 1
    finally:
        for sock in socks:
            sock.close()

    # Idle: nothing queued, nothing in flight (the middleware settles just after the response).
    deadline = time.monotonic() + 5
    while True:
        text = metrics_server.metrics()
        busy = [_value(text, "lstm_serve_inflight_requests")] + [
            _value(text, "lstm_serve_queue_depth", model=m, version="1") for m in MODELS
        ]
        if all(v == 0 for v in busy) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    out.text = text
    return out


def _samples(fam, suffix: str = "") -> dict[tuple, float]:
    """Samples of one family named ``<family><suffix>``, keyed by sorted labels (``le`` kept)."""
    return {
        tuple(sorted(s.labels.items())): s.value for s in fam.samples if s.name == fam.name + suffix
    }


def _hist(fam, **labels: str) -> tuple[list[tuple[float, float]], float, float]:
    """(sorted [(le, cumulative count)], sum, count) of one histogram series."""
    buckets, total, count = [], None, None
    for s in fam.samples:
        rest = {k: v for k, v in s.labels.items() if k != "le"}
        if rest != labels:
            continue
        if s.name.endswith("_bucket"):
            buckets.append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_sum"):
            total = s.value
        elif s.name.endswith("_count"):
            count = s.value
    assert buckets and total is not None and count is not None, f"no series {fam.name}{labels}"
    return sorted(buckets), total, count


def _family_name(name: str, kind: str) -> str:
    # The parser names a counter family without its ``_total`` sample suffix.
    return name.removesuffix("_total") if kind == "counter" else name


def test_every_family_has_its_fixed_type_and_labels_and_nothing_else(sent: Sent) -> None:
    fams = _families(sent.text)
    expected = {_family_name(n, k): (k, set(labels)) for n, (k, labels) in FAMILIES.items()}
    for name, (kind, labels) in expected.items():
        if name in GPU_FAMILIES:
            assert name not in fams, f"{name} exposed by a CPU-only server"
            continue
        assert name in fams, f"{name} missing from /metrics"
        fam = fams[name]
        assert fam.type == kind, f"{name} is a {fam.type}, not a {kind}"
        assert fam.samples, f"{name} has no samples"
        for s in fam.samples:
            assert set(s.labels) - {"le"} == labels, f"{s.name} has labels {sorted(s.labels)}, want {sorted(labels)}"
    # Nothing else: only the fixed families and prometheus_client's ``_created`` companions.
    extra = {n for n in fams if n not in expected and n.removesuffix("_created") not in expected}
    assert not extra, f"unexpected families: {sorted(extra)}"
    # Bounded labels: model values come from the repository, never from the client's URL.
    assert BOGUS_MODEL not in sent.text
    models = {s.labels["model"] for f in fams.values() for s in f.samples if "model" in s.labels}
    assert models <= {*MODELS, ""}, models
    codes = {s.labels["code"] for f in fams.values() for s in f.samples if "code" in s.labels}
    assert codes == {"200", "400", "404"}, codes
    protocols = {s.labels["protocol"] for f in fams.values() for s in f.samples if "protocol" in s.labels}
    assert protocols == {"http"}, protocols  # the transport that carried the request (gRPC: "grpc")


def test_request_counts_match_the_requests_sent(sent: Sent) -> None:
    fams = _families(sent.text)
    counted = {
        (dict(k)["model"], dict(k)["code"]): v for k, v in _samples(fams["lstm_serve_requests"], "_total").items()
    }
    assert counted == dict(sent.codes), "requests_total differs from what was sent (health/metadata must not count)"
    assert counted["", "404"] == 2 and counted["uni", "400"] == 2
    durations = fams["lstm_serve_request_duration_seconds"]
    for (model, code), n in sent.codes.items():
        buckets, total, count = _hist(durations, model=model, code=code, protocol="http")
        assert count == n, f"request_duration count {count} != requests_total {n} for {model}/{code}"
        assert buckets[-1] == (math.inf, n)
        assert 0 < total / count < 10, f"mean request duration {total / count} s is not sane"


def test_sequences_batches_and_queue_match_the_traffic(sent: Sent) -> None:
    fams = _families(sent.text)
    sequences = {dict(k)["model"]: v for k, v in _samples(fams["lstm_serve_sequences"], "_total").items()}
    assert sequences == {"uni": sent.sequences["uni"], "bi": sent.sequences["bi"], "demo": 0}
    for model in MODELS:
        _, bsum, batches = _hist(fams["lstm_serve_batch_size"], model=model, version="1")
        assert bsum == sequences[model], f"{model}: batch_size sum {bsum} != sequences {sequences[model]}"
        _, _, inferences = _hist(fams["lstm_serve_inference_duration_seconds"], model=model, version="1")
        _, _, paddings = _hist(fams["lstm_serve_padding_ratio"], model=model, version="1")
        assert inferences == batches == paddings, f"{model}: one observation per batch in each histogram"
        _, qsum, queued = _hist(fams["lstm_serve_queue_duration_seconds"], model=model, version="1")
        assert queued == sent.ok.get(model, 0), f"{model}: queue_duration count {queued} != successful requests"
        assert qsum >= 0
    # bi only ever got one-sequence requests: a batch > 1 means the batcher merged requests.
    buckets, _, batches = _hist(fams["lstm_serve_batch_size"], model="bi", version="1")
    le1 = dict(buckets)[1.0]
    assert le1 < batches, f"every one of {batches} bi batches had one sequence under 64 concurrent clients"
    assert batches < sent.ok["bi"]
    _, isum, icount = _hist(fams["lstm_serve_inference_duration_seconds"], model="uni", version="1")
    assert icount > 0 and 0 < isum / icount < 10


def test_padding_ratio_is_a_fraction_and_seen_for_ragged_rows(sent: Sent) -> None:
    fam = _families(sent.text)["lstm_serve_padding_ratio"]
    for model in ("uni", "bi"):
        buckets, total, count = _hist(fam, model=model, version="1")
        assert count > 0
        assert dict(buckets)[1.0] == count, f"{model}: a padding ratio above 1"
        assert 0 <= total <= count
    buckets, total, count = _hist(fam, model="uni", version="1")
    # Four single-request batches of lengths [9, 1, 5] alone already waste 12/27 of the steps.
    assert dict(buckets)[0.0] < count and total > 0, "ragged rows were sent but no padding was recorded"


def test_gauges_idle_at_zero_and_moved_under_load(sent: Sent) -> None:
    fams = _families(sent.text)
    depth = {dict(k)["model"]: v for k, v in _samples(fams["lstm_serve_queue_depth"]).items()}
    assert depth == {m: 0 for m in MODELS}
    assert _samples(fams["lstm_serve_inflight_requests"]) == {(): 0}
    assert sent.inflight_while_held == 2, f"in-flight gauge read {sent.inflight_while_held} with 2 requests held open"


def test_model_info_names_each_loaded_version_and_provider(sent: Sent) -> None:
    info = _samples(_families(sent.text)["lstm_serve_model_info"])
    want = {(("model", m), ("provider", CPU), ("version", "1")): 1.0 for m in MODELS}
    assert info == want


def test_buckets_span_100us_to_10s_and_powers_of_two_to_max_batch(sent: Sent) -> None:
    fams = _families(sent.text)
    for name in (
        "lstm_serve_request_duration_seconds",
        "lstm_serve_queue_duration_seconds",
        "lstm_serve_inference_duration_seconds",
    ):
        labels = {"model": "uni", "code": "200", "protocol": "http"} if name.startswith("lstm_serve_request") else {"model": "uni", "version": "1"}
        les = [le for le, _ in _hist(fams[name], **labels)[0]]
        assert les[-1] == math.inf
        finite = les[:-1]
        assert finite[0] == 0.0001 and finite[-1] == 10.0, f"{name} buckets {finite}"
        assert finite == sorted(set(finite)) and len(finite) >= 8
    les = [le for le, _ in _hist(fams["lstm_serve_batch_size"], model="uni", version="1")[0]]
    assert les == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, float(MAX_BATCH), math.inf]


def test_histograms_are_cumulative(sent: Sent) -> None:
    for fam in _families(sent.text).values():
        if fam.type != "histogram":
            continue
        series = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) for s in fam.samples}
        for labels in series:
            buckets, _, count = _hist(fam, **dict(labels))
            counts = [c for _, c in buckets]
            assert counts == sorted(counts) and counts[-1] == count, f"{fam.name}{dict(labels)}"


def test_promtool_check_metrics_passes(sent: Sent) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; .ci/run installs it)")
    res = subprocess.run([promtool, "check", "metrics"], input=sent.text.encode(), capture_output=True, timeout=30)
    assert res.returncode == 0 and not res.stdout.strip(), (res.stdout + res.stderr).decode()


def test_metrics_endpoint_serves_the_prometheus_text_format(metrics_server: Server, sent: Sent) -> None:
    resp = httpx.get(f"{metrics_server.url}/metrics", timeout=10)
    assert resp.status_code == 200
    ctype = resp.headers["content-type"]
    assert ctype.startswith("text/plain; version="), ctype  # the text format, not OpenMetrics
    assert "# TYPE lstm_serve_request_duration_seconds histogram" in resp.text


def _query(client: httpx.Client, expr: str) -> list[dict]:
    r = client.get("/api/v1/query", params={"query": expr})
    r.raise_for_status()
    doc = r.json()
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def test_real_prometheus_scrapes_and_answers_the_p99_query(metrics_server: Server, sent: Sent, tmp_path: Path) -> None:
    # Depends on ``sent`` so the exact-count traffic is captured before this test adds more.
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; .ci/run installs it)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: lstm-serve\n    static_configs:\n"
        f"      - targets: ['{metrics_server.hostport}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    errors: list[str] = []

    def traffic() -> None:
        x = np.ones((1, 6, 3), np.float32)
        with httpx.Client(base_url=metrics_server.url, timeout=10) as c:
            while not stop.is_set():
                r = c.post("/v2/models/uni/infer", json=body(x))
                if r.status_code != 200:
                    errors.append(r.text)
                stop.wait(0.02)

    driver = threading.Thread(target=traffic, daemon=True)
    driver.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as prom:
            deadline = time.monotonic() + 40
            value = math.nan
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    result = _query(prom, P99)
                except (httpx.TransportError, httpx.HTTPStatusError):
                    result = []  # not listening yet, or 503 while its TSDB opens
                if result:
                    value = float(result[0]["value"][1])
                    if math.isfinite(value):
                        break
                time.sleep(0.5)
            assert math.isfinite(value), (
                f"no numeric p99 from Prometheus within 40 s (last {value}); log:\n"
                + (tmp_path / "prometheus.log").read_text()[-2000:]
            )
            assert len(result) == 1 and 0 < value < 10, result
            up = _query(prom, 'up{job="lstm-serve"}')
            assert [float(s["value"][1]) for s in up] == [1.0], up
            info = _query(prom, "lstm_serve_model_info")
            assert {s["metric"]["model"] for s in info} == set(MODELS)
        assert not errors, errors[:3]
    finally:
        stop.set()
        driver.join(10)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_a_scrape_skips_a_metrics_file_another_process_is_still_creating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prometheus_client creates a worker's file empty, then grows it; a scrape in between once
    answered 500 (struct.error) in the image check. The empty file is skipped, the others read."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from app.metrics import MULTIPROC_ENV, Metrics

    written = MmapedDict(str(tmp_path / "counter_101.db"))
    written.write_value(mmap_key("lstm_serve_requests_total", "lstm_serve_requests_total",
                                 ["model", "code", "protocol"], ["demo", "200", "http"], "Requests."), 7.0, 0.0)
    written.close()
    (tmp_path / "counter_102.db").touch()  # opened by another process, not yet grown
    (tmp_path / "histogram_102.db").write_bytes(b"\x00\x00")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    text = Metrics(8).exposition().decode()
    assert 'lstm_serve_requests_total{code="200",model="demo",protocol="http"} 7.0' in text


def _every_sample(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_tally_writes_what_observe_and_inc_write_at_the_end_of_the_turn() -> None:
    """``Tally`` (request and queue metrics, summed per loop turn) against prometheus-client's
    own ``observe``/``inc`` one update at a time: the same exposition, bucket by bucket,
    including values on a bucket's bound, beyond the last, zero, and a NaN (sum only). Written
    at the end of the turn the updates were made in, or when a scrape asks first."""
    from app.metrics import DURATION_BUCKETS, Metrics

    values = [0.0, 0.0001, 0.00011, 0.003, 0.003, 0.0099, 0.01, 0.7, 10.0, 12.5, float("nan"), 0.003]
    direct, tallied = Metrics(8), Metrics(8)
    for v in values:
        direct.request_duration.labels("m", "200", "http").observe(v)
        direct.requests.labels("m", "200", "http").inc()
    direct.inflight.inc(3)
    direct.inflight.dec(1)

    async def turn() -> tuple[str, str]:
        for v in values:
            tallied.observe_request("m", 200, v)
        for n in (1, 1, 1, -1):
            tallied.inflight_add(n)
        before = generate_latest(tallied.registry).decode()  # the registry read as is: nothing yet
        await asyncio.sleep(0)  # the end of this turn
        return before, generate_latest(tallied.registry).decode()

    before, after = asyncio.run(turn())
    assert _every_sample(before)[("lstm_serve_requests_total", (("code", "200"), ("model", "m"), ("protocol", "http")))] == 0
    want, got = _every_sample(generate_latest(direct.registry).decode()), _every_sample(after)
    nan_sum = ("lstm_serve_request_duration_seconds_sum", (("code", "200"), ("model", "m"), ("protocol", "http")))
    assert math.isnan(want.pop(nan_sum)) and math.isnan(got.pop(nan_sum))
    assert got == want
    assert got[("lstm_serve_inflight_requests", ())] == 2
    assert len(DURATION_BUCKETS) + 1 == sum(1 for k in got if k[0] == "lstm_serve_request_duration_seconds_bucket")

    async def scraped_in_the_same_turn() -> str:
        tallied.observe_request("m", 200, 0.5)
        return tallied.exposition().decode()  # /metrics: what is pending is written first

    count = ("lstm_serve_request_duration_seconds_count", (("code", "200"), ("model", "m"), ("protocol", "http")))
    # one more than before; the NaN was counted in no bucket, so not in the count either
    assert _every_sample(asyncio.run(scraped_in_the_same_turn()))[count] == len(values) - 1 + 1
