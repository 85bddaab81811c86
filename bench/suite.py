"""The phases of one bench run and what each measures.

One phase = one server setting x one load (closed loop with N clients, or open loop at a rate)
x one encoding x one length mix. Around every phase:

1. wait (bounded) until other processes use < 10 % of a core for 2 s;
2. raw ONNX Runtime at the batch sizes the server can form, in its own process, with the
   server's settings and with ORT's defaults (re-used from the previous phase's "after" when
   that was measured seconds ago with the same settings);
3. the load, after a short unmeasured warm-up; server CPU, metrics and machine CPU are read
   just before and after it;
4. raw ONNX Runtime again. The ceiling is the mean of before and after (min/max recorded).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.testing import ROOT

from . import load, proc
from . import profile as prof
from . import server as srvmod

MODEL = "bench"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
FLAG_OTHERS = 0.10  # cores used by other processes during a phase above which it is flagged


def effective_settings(overrides: dict) -> dict:
    """The server's settings for these overrides (defaults read from app.config)."""
    from app.config import Settings

    settings = Settings(**overrides)
    out = settings.model_dump()
    out.update(overrides)
    out["intra_op_threads"] = settings.ort_threads
    out["max_batches_in_flight"] = settings.batches_in_flight
    return out


def session_config(effective: dict) -> dict:
    """``bench.rawort``'s ``--config`` for the sessions a server with these effective settings
    (:func:`effective_settings`) creates: intra-op threads, spinning, arena, and the largest batch
    its one-thread session runs (``small_batch_max_size``)."""
    return {"intra": int(effective["intra_op_threads"]), "spinning": int(bool(effective["allow_spinning"])),
            "arena": int(bool(effective["cpu_mem_arena"])), "small": int(effective["small_batch_max_size"])}


@dataclass
class Phase:
    name: str
    group: str
    setting: str
    overrides: dict
    encoding: str = "json"
    mix: str = "fixed"
    clients: int | None = None
    rate: float | None = None  # open loop: requests/s; 0 = the generator's own ceiling
    instance: str = ""  # a fresh server per (setting, instance)
    result: dict = field(default_factory=dict)


def _interp(curve: list[dict], b: float, key: str) -> float:
    pts = sorted((c["batch"], c[key]) for c in curve)
    xs = np.log2([p[0] for p in pts])
    return float(np.interp(math.log2(max(b, 1.0)), xs, [p[1] for p in pts]))


class Bench:
    def __init__(self, args, model_path: Path, scratch: Path) -> None:  # type: ignore[no-untyped-def]
        self.args = args
        self.model_path = model_path
        self.repository = model_path.parents[2]
        self.scratch = scratch
        self.logs = scratch / "logs"
        self.server: srvmod.Server | None = None
        self.server_key: tuple[str, str] | None = None
        self.last_raw: tuple[float, str, dict] | None = None
        self.bodies: dict[tuple[str, str], Path] = {}
        self.features = 8
        self.providers = "CUDAExecutionProvider,CPUExecutionProvider" if args.providers == "cuda" else "CPUExecutionProvider"
        self.log = print

    # -- pieces ------------------------------------------------------------------------------
    def bodies_for(self, mix: str, encoding: str) -> Path:
        key = (mix, encoding)
        if key not in self.bodies:
            self.bodies[key] = load.write_bodies(self.scratch / "bodies", mix, encoding, self.features)
        return self.bodies[key]

    def server_for(self, phase: Phase) -> srvmod.Server:
        key = (phase.setting, phase.instance)
        if self.server is not None and self.server_key == key and self.server.proc.poll() is None:
            return self.server
        self.stop_server()
        settings = dict(phase.overrides)
        settings.setdefault("providers", self.args.providers)
        self.server = srvmod.start(self.repository, self.logs, settings)
        self.server_key = key
        self.last_raw = None
        return self.server

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def raw(self, config: dict, cases: list[str], seconds: float) -> dict:
        cmd = [sys.executable, "-m", "bench.rawort", str(self.model_path), "--config", json.dumps(config),
               "--cases", ",".join(cases), "--seconds", str(seconds), "--providers", self.providers]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            raise RuntimeError(f"raw ONNX Runtime run failed: {p.stderr[-2000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    def raw_configs(self, s: dict) -> dict[str, tuple[dict, list[str]]]:
        """The two raw configurations: the server's (threads, spinning, arena, and as many
        callers as batches in flight) and ONNX Runtime's defaults (one caller)."""
        batches = [b for b in BATCHES if b <= max(s["max_batch_size"], 1)][:7]
        k = int(s["max_batches_in_flight"])
        server_cfg = session_config(s)
        cases_srv = [f"{b}x{k}" for b in batches] + (["1x1"] if k > 1 else [])
        return {"server_settings": (server_cfg, cases_srv), "ort_defaults": ({}, [f"{b}x1" for b in batches])}

    def raw_point(self, s: dict, reuse: bool) -> dict:
        """Raw ORT now, both configurations. A phase's "before" re-uses the previous phase's
        "after" when that was measured < 10 s ago with the same settings; an "after" is always
        measured fresh."""
        key = json.dumps(self.raw_configs(s), sort_keys=True)
        if reuse and self.last_raw and self.last_raw[1] == key and time.monotonic() - self.last_raw[0] < 10:
            return self.last_raw[2]
        out = {}
        for name, (cfg, cases) in self.raw_configs(s).items():
            out[name] = self.raw(cfg, cases, self.args.raw_seconds)
        self.last_raw = (time.monotonic(), key, out)
        return out

    # -- one phase ---------------------------------------------------------------------------
    def run_phase(self, ph: Phase) -> dict:
        s = effective_settings(ph.overrides)
        srv = self.server_for(ph)
        idle = proc.wait_idle(self.args.idle_wait)
        before = self.raw_point(s, reuse=True)
        url = f"{srv.url}/v2/models/{MODEL}/infer"
        res: dict = {"name": ph.name, "group": ph.group, "setting": ph.setting, "overrides": ph.overrides,
                     "encoding": ph.encoding, "mix": ph.mix, "clients": ph.clients, "rate": ph.rate,
                     "idle_wait": idle}
        if ph.rate == 0:  # the open-loop generator's own ceiling, against a trivial endpoint
            res.update(self._openloop(srv, f"{srv.url}/v2/health/live", None, 0, closed=32))
            res["kind"] = "generator ceiling"
            return res
        bodies = self.bodies_for(ph.mix, ph.encoding)
        # warm-up (unmeasured): connections open, batches reach their steady size
        if ph.clients:
            load.run_wrk(url, bodies, ph.clients, 1, self.scratch)
        m0, cpu0, win = srv.metrics(), srv.cpu_s(), proc.Window.start()
        if ph.clients:
            w = load.run_wrk(url, bodies, ph.clients, self.args.duration, self.scratch)
            dur = w["duration_us"] / 1e6
            res.update({"kind": "closed", "requests": w["requests"], "seq_s": w["req_s"],
                        "p50_ms": w["p50_ms"], "p90_ms": w["p90_us"] / 1000, "p99_ms": w["p99_ms"],
                        "errors": w["failed"], "generator_cores": w["cpu_s"] / dur})
        else:
            o = self._openloop(srv, url, bodies, ph.rate or 1.0)
            res.update(o)
        win.stop()
        cpu1, m1 = srv.cpu_s(), srv.metrics()
        res.update(srv.memory())
        after = self.raw_point(s, reuse=False)
        reqs = m1.total("lstm_serve_requests_total", model=MODEL) - m0.total("lstm_serve_requests_total", model=MODEL)
        seqs = m1.total("lstm_serve_sequences_total", model=MODEL) - m0.total("lstm_serve_sequences_total", model=MODEL)
        batch = srvmod.histogram_delta(m0, m1, "lstm_serve_batch_size", MODEL)
        pad = srvmod.histogram_delta(m0, m1, "lstm_serve_padding_ratio", MODEL)
        res.update({
            "server_requests": reqs, "server_sequences": seqs,
            "mean_batch": batch["mean"], "batch_hist": {str(k): v for k, v in batch["buckets"].items()},
            "padding_ratio": pad["mean"],
            "server_cpu_ms_per_req": (cpu1 - cpu0) * 1000 / reqs if reqs else float("nan"),
            "server_cores": (cpu1 - cpu0) / win.wall,
            "others_cores": win.others_cores, "own_cores": win.own_cores,
            "raw_before": before, "raw_after": after,
        })
        res.update(self.ratios(res, s))
        return res

    def _openloop(self, srv: srvmod.Server, url: str, bodies: Path | None, rate: float, closed: int = 0) -> dict:
        secs = self.args.duration if not closed else max(2.0, self.args.duration / 2)
        cmd = [sys.executable, "-m", "bench.openloop", url, "--rate", str(rate), "--seconds", str(secs)]
        if bodies is not None:
            cmd += ["--bodies", str(bodies)]
        if closed:
            cmd += ["--closed", str(closed)]
        cpu0, win = srv.cpu_s(), proc.Window.start()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        win.stop()
        cpu1 = srv.cpu_s()
        if p.returncode != 0:
            raise RuntimeError(f"open-loop generator failed: {p.stderr[-2000:]}")
        o = json.loads(p.stdout.strip().splitlines()[-1])
        ok = o["codes"].get("200", 0)
        out = {"kind": "open", "offered_rps": o["offered_rps"], "seq_s": o["achieved_rps"], "requests": o["answered"],
               "p50_ms": o["p50_ms"], "p90_ms": o["p90_ms"], "p99_ms": o["p99_ms"],
               "errors": o["answered"] - ok + o["conn_errors"] + (o["sent"] - o["answered"] if not closed else 0),
               "generator_cores": o["cpu_s"] / o["wall_s"],
               "generator_cpu_ms_per_req": o["cpu_s"] * 1000 / max(o["answered"], 1)}
        if closed:
            out.update({"server_cpu_ms_per_req": (cpu1 - cpu0) * 1000 / max(o["answered"], 1),
                        "others_cores": win.others_cores, "own_cores": win.own_cores})
        return out

    @staticmethod
    def ratios(res: dict, s: dict) -> dict:
        """Throughput and CPU against raw ORT at the mean batch the server formed."""
        b = res["mean_batch"]
        if not (b == b) or res["mix"] != "fixed":  # nan, or lengths differ from the raw runs
            return {}
        ceil: dict[str, dict] = {}
        for cfg in ("server_settings", "ort_defaults"):
            tp = [_interp([c for c in r[cfg]["cases"] if c["callers"] == r[cfg]["cases"][0]["callers"]], b, "seq_s")
                  for r in (res["raw_before"], res["raw_after"])]
            cpu = [_interp([c for c in r[cfg]["cases"] if c["callers"] == r[cfg]["cases"][0]["callers"]], b, "cpu_ms_per_seq")
                   for r in (res["raw_before"], res["raw_after"])]
            b1 = [next(c["p50_ms"] for c in r[cfg]["cases"] if c["batch"] == 1 and c["callers"] == 1)
                  for r in (res["raw_before"], res["raw_after"])]
            ceil[cfg] = {"seq_s_min": min(tp), "seq_s_max": max(tp), "seq_s": float(np.mean(tp)),
                         "cpu_ms_per_seq": float(np.mean(cpu)), "b1_p50_ms": float(np.mean(b1))}
        best = max(ceil.values(), key=lambda c: c["seq_s"])
        cheapest = min(c["cpu_ms_per_seq"] for c in ceil.values())
        out = {"ceiling": ceil, "raw_seq_s": best["seq_s"], "raw_spread": [best["seq_s_min"], best["seq_s_max"]],
               "raw_cpu_ms_per_seq": cheapest,
               "raw_b1_p50_ms": min(c["b1_p50_ms"] for c in ceil.values())}
        if res.get("kind") == "closed":
            out["of_raw"] = res["seq_s"] / best["seq_s"]
            out["of_raw_server_settings"] = res["seq_s"] / ceil["server_settings"]["seq_s"]
        out["cpu_efficiency"] = cheapest / res["server_cpu_ms_per_req"] if res["server_cpu_ms_per_req"] else float("nan")
        return out

    def raw_curve(self, overrides: dict, seconds: float) -> dict:
        """The raw batch curve (batch 1..128), for the plot and the batching on/off argument."""
        s = effective_settings(overrides)
        k = int(s["max_batches_in_flight"])
        srv_cfg = session_config(s)
        curve = {"server settings, 1 caller": self.raw(srv_cfg, [f"{b}x1" for b in BATCHES], seconds)}
        if k > 1:
            curve[f"server settings, {k} callers"] = self.raw(srv_cfg, [f"{b}x{k}" for b in BATCHES], seconds)
        curve["ORT defaults (2 threads, spinning), 1 caller"] = self.raw({}, [f"{b}x1" for b in BATCHES], seconds)
        return curve

    def profile(self, seconds: float, out: Path) -> dict:
        """py-spy on a default server under 32-client v2 JSON load."""
        ph = Phase("profile", "profile", "defaults", {}, clients=32, instance="profile")
        srv = self.server_for(ph)
        bodies = self.bodies_for("fixed", "json")
        url = f"{srv.url}/v2/models/{MODEL}/infer"
        load.run_wrk(url, bodies, 32, 1, self.scratch)
        cmd = [load.wrk_path() or "wrk", "-t1", "-c32", f"-d{seconds + 3:.0f}s", "--timeout", "30s",
               "-s", str(self.scratch / "bench.lua"), url, "--", str(bodies)]
        w = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.track(w.pid)
        time.sleep(1)
        res = prof.record(srv.pid, seconds, out)
        w.wait()
        proc.untrack(w.pid)
        self.stop_server()
        return res
