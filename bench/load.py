"""Request bodies (length mixes x encodings) and the closed-loop generator (wrk + Lua).

Bodies are generated once per phase kind and written to files; wrk's Lua script loads them in
``init`` (each wrk thread), pre-formats every request, and rotates among them. Each request
carries one sequence [1, length, features] and asks for ``output`` only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import orjson

from . import proc

MIXES = ("fixed", "uniform", "longtail")


def lengths_for(mix: str, n: int, fixed: int, rng: np.random.Generator) -> list[int]:
    """Sequence lengths for a mix: ``fixed`` (all ``fixed``), ``uniform`` (10..100) or
    ``longtail`` (log-normal, median ~40 steps, clipped to 5..1500: a few very long ones)."""
    if mix == "fixed":
        return [fixed] * n
    if mix == "uniform":
        return [int(v) for v in rng.integers(10, 101, n)]
    if mix == "longtail":
        return [int(v) for v in np.clip(np.round(rng.lognormal(np.log(40), 1.0, n)), 5, 1500)]
    raise ValueError(f"unknown length mix {mix!r}; choose from {MIXES}")


def make_body(x: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """A KServe v2 request for ``x`` [1, t, f]: (body, JSON header length or 0 for plain JSON)."""
    entry: dict = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    if encoding == "json":
        # float32 values as a client's tolist() writes them (full float64 repr: ~8 KB for 50x8)
        entry["data"] = x.reshape(-1).astype(np.float64).tolist()
        return orjson.dumps({"inputs": [entry], "outputs": [{"name": "output"}]}), 0
    if encoding == "binary":
        raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        header = orjson.dumps(
            {"inputs": [entry], "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}
        )
        return header + raw, len(header)
    raise ValueError(f"unknown encoding {encoding!r}")


def write_bodies(
    directory: Path, mix: str, encoding: str, features: int, *, fixed: int = 50, count: int = 64, seed: int = 0
) -> Path:
    """Write ``count`` request bodies and their header lengths into ``directory``/<mix>-<encoding>."""
    rng = np.random.default_rng(seed)
    out = directory / f"{mix}-{encoding}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    n = 1 if mix == "fixed" else count
    hlens = []
    for i, t in enumerate(lengths_for(mix, n, fixed, rng), 1):
        x = rng.standard_normal((1, t, features)).astype(np.float32)
        body, hlen = make_body(x, encoding)
        (out / f"body{i}.bin").write_bytes(body)
        hlens.append(str(hlen))
    (out / "hlen.txt").write_text("\n".join(hlens) + "\n")
    return out


LUA = r"""
-- lstm-serve bench: POST pre-generated KServe v2 bodies, rotating among them.
local reqs = {}
local n = 0
local idx = 0
function init(args)
  local dir = args[1]
  local i = 0
  for line in io.lines(dir .. "/hlen.txt") do
    i = i + 1
    local f = assert(io.open(dir .. "/body" .. i .. ".bin", "rb"))
    local body = f:read("*a")
    f:close()
    local h = {}
    if tonumber(line) > 0 then
      h["Content-Type"] = "application/octet-stream"
      h["Inference-Header-Content-Length"] = line
    else
      h["Content-Type"] = "application/json"
    end
    reqs[i] = wrk.format("POST", nil, h, body)
  end
  n = i
  idx = math.random(n) - 1
end
function request()
  idx = idx % n + 1
  return reqs[idx]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(url: str, bodies: Path, clients: int, seconds: float, scratch: Path) -> dict:
    """Closed loop: ``clients`` connections, each sending its next request as soon as the last
    is answered. One wrk thread (epoll; plenty for these rates, and it leaves the server more
    of the 2 cores). Returns wrk's summary plus its own CPU time and the figures every benchmark reports (``req_s``, ``p50_ms``,
    ``p99_ms``, ``failed``)."""
    script = scratch / "bench.lua"
    if not script.exists():
        script.write_text(LUA)
    cmd = [wrk_path() or "wrk", "-t1", f"-c{clients}", f"-d{max(seconds, 1):.0f}s", "--timeout", "30s",
           "-s", str(script), url, "--", str(bodies)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.track(p.pid)
    raw = p.stdout.read() if p.stdout else b""
    _, status, usage = os.wait4(p.pid, 0)  # reap it ourselves for its own rusage
    proc.untrack(p.pid)
    p.returncode = os.waitstatus_to_exitcode(status)
    out, err = raw, b""
    m = re.search(r"WRKJSON (\{.*\})", out.decode())
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}): {out.decode()[-2000:]} {err.decode()[-2000:]}")
    res = json.loads(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.decode())
    res["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    res["cpu_s"] = usage.ru_utime + usage.ru_stime
    # What every benchmark reports from it, derived once here.
    res["req_s"] = res["requests"] / (res["duration_us"] / 1e6)
    res["p50_ms"], res["p99_ms"] = res["p50_us"] / 1000, res["p99_us"] / 1000
    res["failed"] = sum(res["errors"].values()) + res["non2xx"]  # socket errors, timeouts, non-2xx
    return res


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception:
        return "absent"

