"""results.md, the README summary and the PNG plots, from one run's results.json."""

from __future__ import annotations

import math
from pathlib import Path

TARGETS = {  # the targets (not asserted anywhere; reported)
    "of_raw_json_32": 0.60,
    "of_raw_binary_32": 0.70,
    "cpu_eff_32": 0.75,
    "lone_p50_over_raw_ms": 0.5,
}


def f(v, nd: int = 2) -> str:  # type: ignore[no-untyped-def]
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def flags(r: dict) -> str:
    out = []
    if r.get("others_cores", 0) > 0.10:
        out.append(f"others {r['others_cores']:.2f} cores")
    if r.get("idle_wait") and not r["idle_wait"].get("idle", True):
        out.append("not idle before")
    if r.get("errors"):
        out.append(f"{r['errors']} errors")
    lo_hi = r.get("raw_spread")
    if lo_hi and lo_hi[0] > 0 and lo_hi[1] / lo_hi[0] > 1.25:
        out.append(f"raw spread {lo_hi[0]:.0f}-{lo_hi[1]:.0f}")
    return "; ".join(out)


def one_line(r: dict) -> str:
    return (f"{f(r.get('seq_s'), 0)} seq/s  p50 {f(r.get('p50_ms'))} p99 {f(r.get('p99_ms'))} ms  "
            f"batch {f(r.get('mean_batch'), 1)}  cpu/req {f(r.get('server_cpu_ms_per_req'), 3)} ms  "
            f"of raw {f(r.get('of_raw'))}  cpu eff {f(r.get('cpu_efficiency'))}  {flags(r)}")


def find(results: dict, **match) -> dict | None:  # type: ignore[no-untyped-def]
    for r in results["phases"]:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


HEAD = ("| phase | seq/s | p50 ms | p90 ms | p99 ms | mean batch | padding | server CPU-ms/req | "
        "peak RSS MiB | raw seq/s at batch (min-max) | of raw | CPU eff. | others (cores) | flags |")
SEP = "|" + "---|" * 14


def row(r: dict) -> str:
    spread = r.get("raw_spread")
    raw = f"{f(r.get('raw_seq_s'), 0)} ({spread[0]:.0f}-{spread[1]:.0f})" if spread else "—"
    return (f"| {r['name']} | {f(r.get('seq_s'), 0)} | {f(r.get('p50_ms'))} | {f(r.get('p90_ms'))} | "
            f"{f(r.get('p99_ms'))} | {f(r.get('mean_batch'), 1)} | {f(r.get('padding_ratio'))} | "
            f"{f(r.get('server_cpu_ms_per_req'), 3)} | {f(r.get('peak_rss_mib'), 0)} | {raw} | "
            f"{f(r.get('of_raw'))} | {f(r.get('cpu_efficiency'))} | {f(r.get('others_cores'))} | {flags(r)} |")


def targets(results: dict) -> list[tuple[str, str, str, str]]:
    """(target, bar, measured, verdict) rows."""
    out = []
    j32 = find(results, group="main", encoding="json", clients=32)
    b32 = find(results, group="main", encoding="binary", clients=32)
    j1 = find(results, group="main", encoding="json", clients=1)
    off32 = find(results, group="off", encoding="json", clients=32)
    offb = find(results, group="off", encoding="binary", clients=32)
    lt = find(results, group="mix", mix="longtail", setting="defaults")

    def verdict(v, bar, higher=True):  # type: ignore[no-untyped-def]
        if v is None or not math.isfinite(v):
            return "not measured"
        ok = v >= bar if higher else v <= bar
        return "reached" if ok else f"missed by {abs(v - bar):.2f}"

    if j32:
        v = j32.get("of_raw")
        out.append(("32 clients, v2 JSON: throughput / raw at the batch formed", ">= 0.60", f(v), verdict(v, 0.60)))
        v = j32.get("cpu_efficiency")
        out.append(("32 clients, v2 JSON: CPU efficiency", ">= 0.75", f(v), verdict(v, 0.75)))
    if b32:
        v = b32.get("of_raw")
        out.append(("32 clients, binary: throughput / raw at the batch formed", ">= 0.70", f(v), verdict(v, 0.70)))
        v = b32.get("cpu_efficiency")
        out.append(("32 clients, binary: CPU efficiency", ">= 0.75", f(v), verdict(v, 0.75)))
    if j1 and j1.get("raw_b1_p50_ms"):
        over = j1["p50_ms"] - j1["raw_b1_p50_ms"]
        out.append(("1 client, defaults: p50 - raw batch-1 p50 (best raw config)", "<= 0.5 ms",
                    f"{j1['p50_ms']:.2f} - {j1['raw_b1_p50_ms']:.2f} = {over:.2f} ms", verdict(over, 0.5, higher=False)))
        srv_b1 = j1["ceiling"]["server_settings"]["b1_p50_ms"]
        out.append(("1 client, defaults: p50 - raw batch-1 p50 (server's thread settings)", "<= 0.5 ms",
                    f"{j1['p50_ms']:.2f} - {srv_b1:.2f} = {j1['p50_ms'] - srv_b1:.2f} ms",
                    verdict(j1["p50_ms"] - srv_b1, 0.5, higher=False)))
    if j32 and off32:
        out.append(("batching on / off, 32 clients, v2 JSON", "report", f"{j32['seq_s'] / off32['seq_s']:.2f}x", "reported"))
    if b32 and offb:
        out.append(("batching on / off, 32 clients, binary", "report", f"{b32['seq_s'] / offb['seq_s']:.2f}x", "reported"))
    if lt:
        out.append(("peak RSS, long-tailed lengths (5-1500 steps)", "bounded", f"{f(lt.get('peak_rss_mib'), 0)} MiB", "reported"))
    return out


def write_all(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(results))
    (out / "summary.md").write_text(summary(results))
    try:
        plots(results, out)
    except Exception as exc:  # plots must never lose the tables
        (out / "plots-error.txt").write_text(repr(exc))


def summary(results: dict) -> str:
    """The short table for the README."""
    lines = ["| load (defaults) | seq/s | p50 ms | p99 ms | mean batch | of raw | CPU eff. | target |", "|---|---|---|---|---|---|---|---|"]
    want = [("main", "json", 1, "p50 <= raw b1 + 0.5 ms"), ("main", "json", 32, "of raw >= 0.6, CPU eff >= 0.75"),
            ("main", "binary", 32, "of raw >= 0.7"), ("main", "json", 128, ""), ("off", "json", 32, "batching off")]
    for g, enc, c, t in want:
        r = find(results, group=g, encoding=enc, clients=c)
        if r:
            name = f"{'batching off, ' if g == 'off' else ''}{enc}, {c} client{'s' if c > 1 else ''}"
            lines.append(f"| {name} | {f(r.get('seq_s'), 0)} | {f(r.get('p50_ms'))} | {f(r.get('p99_ms'))} | "
                         f"{f(r.get('mean_batch'), 1)} | {f(r.get('of_raw'))} | {f(r.get('cpu_efficiency'))} | {t} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    m = results["machine"]
    L = ["# lstm-serve benchmark results", "",
         f"Command: `{m['command']}` (started {m['started']}, {results.get('elapsed_s', '?')} s).", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}. Python {m['python']}, "
         f"onnxruntime {m['onnxruntime']} ({', '.join(m['providers_available'])}), numpy {m['numpy']}, "
         f"uvicorn {m['uvicorn']} (uvloop {m.get('uvloop')}, httptools {m.get('httptools')}), fastapi {m.get('fastapi')}, "
         f"orjson {m.get('orjson')}, {m['wrk']}.", "",
         f"Model `{m['model']}`: {m['model_spec']}; each request one sequence (50 steps unless the mix says "
         f"otherwise), output `output` only. Phases of {m['duration_s']} s after a 1 s warm-up; raw ORT "
         f"{m['raw_seconds']} s per batch size, before and after each phase.", "",
         f"Server defaults: `{m['defaults']}`.", ""]
    t = targets(results)
    if t:
        L += ["## Targets", "", "| target | bar | measured | verdict |", "|---|---|---|---|"]
        L += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in t]
        L.append("")
    groups = [("main", "Defaults, closed loop (wrk)"), ("open", "Open loop (Poisson arrivals; latency from the scheduled send)"),
              ("mix", "Length mixes (RSS bound)"), ("off", "Batching off (max_batch_size=1)"),
              ("tuning", "Tuning grid (v2 JSON)")]
    for g, title in groups:
        rows = [r for r in results["phases"] if r["group"] == g]
        if not rows:
            continue
        L += [f"## {title}", "", HEAD, SEP] + [row(r) for r in rows] + [""]
        if g == "open":
            for r in rows:
                if r.get("kind") == "generator ceiling":
                    L.append(f"Open-loop generator's own ceiling (32 in flight, GET /v2/health/live, server on the same "
                             f"2 cores): {r['seq_s']:.0f} req/s, generator {r['generator_cpu_ms_per_req']:.3f} CPU-ms "
                             f"per request (so at most ~{1000 / r['generator_cpu_ms_per_req']:.0f} req/s on one core). "
                             "Open-loop rates above are kept below it.")
            L += ["", "`seq/s` here is the achieved rate; `errors` counts requests not answered 200 "
                  "(sent but unanswered at the end included).", ""]
    if results.get("phases"):
        gen = [r.get("generator_cores") for r in results["phases"] if r.get("kind") == "closed" and r.get("generator_cores")]
        if gen:
            L += [f"wrk (one thread) used {min(gen):.2f}-{max(gen):.2f} cores during the closed-loop phases "
                  "(it shares the 2 cores with the server).", ""]
    curve = results.get("curve")
    if curve:
        names = list(curve)
        batches = [c["batch"] for c in curve[names[0]]["cases"]]
        L += ["## Raw ONNX Runtime batch curve (seq/s; CPU-ms per sequence; p50 ms per call)", "",
              "| batch | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for i, b in enumerate(batches):
            cells = []
            for n in names:
                c = curve[n]["cases"][i]
                cells.append(f"{c['seq_s']:.0f}; {c['cpu_ms_per_seq']:.3f}; {c['p50_ms']:.2f}")
            L.append(f"| {b} | " + " | ".join(cells) + " |")
        L.append("")
    p = results.get("profile")
    if p:
        L += ["## Where the server's CPU goes (py-spy, defaults, 32 clients, v2 JSON)", ""]
        if "error" in p:
            L.append(p["error"])
        else:
            L += [f"{p['samples']} CPU samples ({p.get('idle_samples_left_out', 0)} blocked-wait samples left out); threads: " + ", ".join(f"{k} {v}%" for k, v in p["thread_share_pct"].items()), "",
                  "| cost centre | share of CPU samples |", "|---|---|"]
            L += [f"| {k} | {v}% |" for k, v in p["share_pct"].items()]
        L.append("")
    if results.get("failures"):
        L += ["## Failed phases", ""] + [f"- {x['phase']}: {x['error']}" for x in results["failures"]] + [""]
    L += ["## How to read it", "",
          "- `raw seq/s at batch`: raw `InferenceSession.run` (own process) at the server's mean batch, "
          "interpolated on the batch curve measured just before and just after the phase, in the better of "
          "two configurations: the server's settings (its intra-op threads, spinning and arena, driven from "
          "as many threads as batches in flight, and a batch of at most `small_batch_max_size` sequences on "
          "the one-thread session the server runs it on) and ORT's defaults; the mean of before/after, (min-max).",
          "- `of raw` = server seq/s / that raw figure. `CPU eff.` = raw CPU-ms per sequence at that batch "
          "(the cheaper configuration) / server CPU-ms per request (the server process and its children, "
          "from /proc; one sequence per request).",
          "- `others`: CPU used by every process not ours during the phase (/proc/stat busy, steal included, "
          "less the bench, wrk, the server and raw runs); flagged above 0.10 cores.",
          "- Mean batch and padding from the server's own histograms (deltas over the phase).", ""]
    return "\n".join(L)


def plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ph = results["phases"]
    # 1. latency against throughput per setting
    fig, ax = plt.subplots(figsize=(8, 5.5))
    series = {}
    for r in ph:
        if r.get("kind") not in ("closed", "open") or r["mix"] != "fixed" or not r.get("seq_s"):
            continue
        if r["group"] == "main":
            key = f"defaults, {r['encoding']} (closed)"
        elif r["group"] == "off":
            key = f"batching off, {r['encoding']} (closed)"
        elif r["group"] == "open":
            key = "defaults, json (open loop)"
        else:
            continue
        series.setdefault(key, []).append(r)
    for key, rs in series.items():
        rs = sorted(rs, key=lambda r: r["seq_s"])
        xs = [r["seq_s"] for r in rs]
        line, = ax.plot(xs, [r["p50_ms"] for r in rs], "o-", label=f"{key} p50")
        ax.plot(xs, [r["p99_ms"] for r in rs], "x--", color=line.get_color(), label=f"{key} p99")
        for r in rs:
            tag = f"c={r['clients']}" if r.get("clients") else f"{r.get('offered_rps')}/s"
            ax.annotate(tag, (r["seq_s"], r["p50_ms"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("sequences / s")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency against throughput (3x128 LSTM, 50 steps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_vs_throughput.png", dpi=110)
    plt.close(fig)

    # 2. batch size distribution (share of batches per histogram bucket)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rs = [r for r in ph if r["group"] == "main" and r["encoding"] == "json" and r.get("batch_hist")]
    if rs:
        les = sorted({float(k) for r in rs for k in r["batch_hist"] if k != "inf"})
        width = 0.8 / len(rs)
        for i, r in enumerate(rs):
            tot = sum(r["batch_hist"].values()) or 1
            ys = [r["batch_hist"].get(str(le), 0) / tot for le in les]
            ax.bar([j + i * width for j in range(len(les))], ys, width, label=f"c={r['clients']} (mean {r['mean_batch']:.1f})")
        labels, prev = [], 0.0
        for le in les:
            labels.append(f"{int(prev) + 1}-{int(le)}" if le - prev > 1 else f"{int(le)}")
            prev = le
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(les))], labels)
        ax.set_xlabel("sequences per ONNX Runtime call (histogram bucket)")
        ax.set_ylabel("share of batches")
        ax.set_title("Batch size distribution, defaults, v2 JSON")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "batch_size_distribution.png", dpi=110)
    plt.close(fig)

    # 3. raw batch curve with the server's points
    curve = results.get("curve")
    if curve:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name, data in curve.items():
            cs = data["cases"]
            ax.plot([c["batch"] for c in cs], [c["seq_s"] for c in cs], "o-", label=f"raw ORT, {name}")
        for r in ph:
            if r["group"] in ("main", "off") and r.get("kind") == "closed" and r["mix"] == "fixed":
                mk = "s" if r["group"] == "main" else "^"
                ax.plot([r["mean_batch"]], [r["seq_s"]], mk, color="k" if r["encoding"] == "json" else "tab:red", ms=5)
                ax.annotate(f"{'off ' if r['group'] == 'off' else ''}{r['encoding']} c={r['clients']}",
                            (r["mean_batch"], r["seq_s"]), fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("sequences / s")
        ax.set_title("Raw ONNX Runtime batch curve and the server's points (at their mean batch)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "raw_batch_curve.png", dpi=110)
        plt.close(fig)
