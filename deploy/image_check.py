"""Helpers of deploy/image-check.sh (the image, built and run for real with podman).

Subcommands:
  k8s-args DEPLOYMENT    podman run arguments reproducing the Deployment's container (security
                         context, emptyDir mounts as tmpfs, memory limit, envFrom of the
                         kustomize-generated ConfigMap) and what the probe must then find; JSON.
                         Fails on a field it cannot reproduce, so the check never skips one.
  probe EXPECT_JSON      run INSIDE the container (stdlib only, the image's python, fed on stdin):
                         reads /proc and the filesystem and judges the facts against EXPECT_JSON.
  predict URL            the README's demo prediction, /metrics, exact answer.
  drain URL NAME GRACE   load with in-flight requests, SIGTERM to container NAME, 0 failures, exit 0.

The host side needs python3 (and PyYAML for k8s-args only); the probe needs nothing but the
image's interpreter. Every check prints `ok: ...` or `FAIL: ...`; any FAIL exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import time

# ---------------------------------------------------------------------------------------------
# Kubernetes Deployment -> podman run


def _quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for unit, factor in units.items():
        if q.endswith(unit):
            return int(float(q[: -len(unit)]) * factor)
    return int(q)


def k8s_args(deployment_path: str) -> dict:
    import pathlib

    import yaml  # host side only

    path = pathlib.Path(deployment_path)
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (deployment,) = [d for d in docs if d.get("kind") == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args: list[str] = []
    expect: dict = {}

    # Pod-level then container-level securityContext (the container's fields win, as in k8s).
    sc = dict(pod.get("securityContext") or {})
    sc.update(container.get("securityContext") or {})
    handled = set()

    def take(key):
        handled.add(key)
        return sc.get(key)

    uid, gid = take("runAsUser"), take("runAsGroup")
    if uid is not None:
        args += ["--user", f"{uid}:{gid if gid is not None else uid}"]
        expect["uid"] = int(uid)
        expect["gid"] = int(gid if gid is not None else uid)
    if take("runAsNonRoot"):
        expect["non_root"] = True  # podman does not refuse root: the probe does
    if (fs_group := take("fsGroup")) is not None:
        args += ["--group-add", str(fs_group)]
        expect["groups_include"] = int(fs_group)
    if take("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
        expect["no_new_privs"] = True
    if take("readOnlyRootFilesystem"):
        # podman's --read-only also mounts tmpfs on /run, /tmp, /var/tmp; Kubernetes does not.
        args += ["--read-only", "--read-only-tmpfs=false"]
        expect["read_only_root"] = True
    if take("privileged"):
        raise SystemExit("k8s-args: privileged containers are not reproduced")
    caps = take("capabilities") or {}
    if set(caps) - {"drop", "add"}:
        raise SystemExit(f"k8s-args: capabilities fields {sorted(caps)}")
    for cap in caps.get("drop") or []:
        args += ["--cap-drop", cap]
    for cap in caps.get("add") or []:
        args += ["--cap-add", cap]
    if [c.upper() for c in caps.get("drop") or []] == ["ALL"] and not caps.get("add"):
        expect["no_capabilities"] = True
    seccomp = take("seccompProfile")
    if seccomp is not None:
        if seccomp.get("type") != "RuntimeDefault":
            raise SystemExit(f"k8s-args: seccompProfile {seccomp}")
        expect["seccomp_filter"] = True  # podman's default profile, like the runtime's default
    unknown = set(sc) - handled
    if unknown:
        raise SystemExit(f"k8s-args: securityContext fields not reproduced: {sorted(unknown)}")

    # Volumes: emptyDir -> tmpfs (the only writable places under a read-only root).
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    writable = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume:
            raise SystemExit(f"k8s-args: volume {mount['name']} is not an emptyDir")
        opts = "rw,mode=1777"
        if size := (volume["emptyDir"] or {}).get("sizeLimit"):
            opts += f",size={_quantity_bytes(size)}"
        args += ["--tmpfs", f"{mount['mountPath']}:{opts}"]
        writable.append(mount["mountPath"])
    expect["writable"] = writable

    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        args += ["--memory", str(_quantity_bytes(limits["memory"]))]
        expect["memory_limit"] = _quantity_bytes(limits["memory"])
    if "cpu" in limits:
        args += ["--cpus", str(limits["cpu"])]

    # envFrom a ConfigMap generated by kustomize from env files next to the Deployment.
    generators = {}
    kustomization = path.parent / "kustomization.yaml"
    if kustomization.exists():
        for gen in (yaml.safe_load(kustomization.read_text()) or {}).get("configMapGenerator") or []:
            generators[gen["name"]] = [str(path.parent / f) for f in gen.get("envs") or []]
    for source in container.get("envFrom") or []:
        name = (source.get("configMapRef") or {}).get("name")
        if name not in generators:
            raise SystemExit(f"k8s-args: envFrom {source} is not a configMapGenerator of {kustomization}")
        for env_file in generators[name]:
            args += ["--env-file", env_file]
    for env in container.get("env") or []:
        if "value" not in env:
            raise SystemExit(f"k8s-args: env {env['name']} without a plain value")
        args += ["--env", f"{env['name']}={env['value']}"]

    return {"args": args, "expect": expect, "grace_s": pod.get("terminationGracePeriodSeconds", 30)}


# ---------------------------------------------------------------------------------------------
# Inside the container


def _status(pid: str) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _listen_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                inodes.add(cols[9])
    return inodes


def _socket_inodes(pid: str) -> set[str]:
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(target[8:-1])
    except OSError:
        pass
    return found


def _maps_onnxruntime(pid: str) -> bool:
    try:
        return "onnxruntime" in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


def probe(expect: dict) -> int:
    failures = 0

    def check(ok: bool, what: str) -> None:
        nonlocal failures
        print(("ok:   " if ok else "FAIL: ") + what)
        failures += not ok

    me = str(os.getpid())
    procs = {}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        if pid == me:
            continue
        try:
            st = _status(pid)
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if st.get("PPid") == "0" and pid != "1":
            continue  # another `podman exec`, not the server
        procs[pid] = {"status": st, "cmdline": cmdline}

    # Users, capabilities, no_new_privs, seccomp: every process of the server, one line each.
    for pid, p in procs.items():
        st = p["status"]
        uid, euid = (int(x) for x in st["Uid"].split()[:2])
        gid = int(st["Gid"].split()[0])
        groups = {int(g) for g in st.get("Groups", "").split()}
        problems = []
        if uid == 0 or euid == 0:
            problems.append("runs as root")
        if "uid" in expect and (uid, gid) != (expect["uid"], expect["gid"]):
            problems.append(f"want uid:gid {expect['uid']}:{expect['gid']}")
        if "groups_include" in expect and expect["groups_include"] not in groups | {gid}:
            problems.append(f"fsGroup {expect['groups_include']} missing")
        if int(st["CapEff"], 16) or int(st["CapPrm"], 16):
            problems.append("has capabilities")
        if expect.get("no_capabilities") and int(st["CapBnd"], 16):
            problems.append("bounding set not empty (want drop ALL)")
        if expect.get("no_new_privs") and st.get("NoNewPrivs") != "1":
            problems.append("no_new_privs not set")
        if expect.get("seccomp_filter") and st.get("Seccomp") != "2":
            problems.append("no seccomp filter")
        facts = (
            f"uid:gid {uid}:{gid} groups {sorted(groups)} CapEff {st['CapEff']} CapPrm {st['CapPrm']} "
            f"CapBnd {st['CapBnd']} NoNewPrivs {st.get('NoNewPrivs')} Seccomp {st.get('Seccomp')}"
        )
        check(not problems, f"pid {pid} {p['cmdline'][:48]!r}: {facts}" + (f": {', '.join(problems)}" if problems else ""))

    # The root filesystem: read-only where the manifest says so (and writable in the plain run,
    # which shows this probe can tell the two apart).
    probe_file = "/.image-check-probe"
    try:
        with open(probe_file, "w"):
            pass
        os.unlink(probe_file)
        root_writable, why = True, "a file was created at /"
    except OSError as e:
        root_writable, why = e.errno != 30, os.strerror(e.errno)  # 30 = EROFS
    root_opts = next((line.split()[3] for line in open("/proc/mounts") if line.split()[1] == "/"), "")
    read_only = not root_writable and "ro" in root_opts.split(",")
    want_ro = bool(expect.get("read_only_root"))
    check(read_only == want_ro, f"root filesystem {'read-only' if read_only else 'writable'} (mount {root_opts.split(',')[0]}, write: {why}), want {'read-only' if want_ro else 'writable'}")
    for d in expect.get("writable", []):
        try:
            with open(os.path.join(d, ".image-check-probe"), "w") as f:
                f.write("x")
            os.unlink(os.path.join(d, ".image-check-probe"))
            check(True, f"{d} writable")
        except OSError as e:
            check(False, f"{d} writable: {e}")

    if "memory_limit" in expect:
        limit = None
        for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
            try:
                limit = int(open(f).read().strip())
                break
            except (OSError, ValueError):
                continue
        check(limit == expect["memory_limit"], f"memory limit {limit} bytes, want {expect['memory_limit']}")

    # Processes: PID 1 the server (supervisor), accepting on the listening socket and handing each
    # connection to an HTTP worker (app/processes/handoff.py), the workers (named lstm-serve-http),
    # one engine process (the only one with ONNX Runtime mapped).
    pid1 = procs.get("1", {}).get("cmdline", "")
    check("lstm-serve" in pid1, f"PID 1 is the server: {pid1!r}")
    listen = _listen_inodes(expect.get("port", 8000))
    check(bool(_socket_inodes("1") & listen), f"PID 1 holds the listening socket of :{expect.get('port', 8000)}")
    # Descendants of PID 1 (multiprocessing's forkserver sits between it and its children).
    parent = {pid: p["status"].get("PPid") for pid, p in procs.items()}

    def descends(pid: str) -> bool:
        while pid in parent and pid != "1":
            pid = parent[pid]
        return pid == "1"

    children = [pid for pid in procs if pid != "1" and descends(pid)]
    engines = [pid for pid in children if _maps_onnxruntime(pid)]
    workers = [pid for pid in children if pid not in engines and procs[pid]["status"].get("Name") == "lstm-serve-http"]
    others = [pid for pid in children if pid not in engines and pid not in workers]
    want_workers = expect.get("workers", 2)
    check(len(workers) == want_workers, f"{len(workers)} HTTP workers (pids {workers}) on :{expect.get('port', 8000)}, want {want_workers}")
    check(len(engines) == 1, f"{len(engines)} engine process (pids {engines}, ONNX Runtime mapped), want 1")
    check(not _maps_onnxruntime("1") and not any(_maps_onnxruntime(w) for w in workers), "no ONNX Runtime in the supervisor or the HTTP workers")
    if others:
        print(f"note: other processes under PID 1: {[(o, procs[o]['cmdline'][:70]) for o in others]}")
    _grpc(int(os.environ.get("LSTM_SERVE_GRPC_PORT", "8001")), check)
    return 1 if failures else 0


def _grpc(port: int, check) -> None:
    """gRPC beside HTTP, from inside (the image's own grpcio and generated modules): health
    SERVING overall and for the demo, and the demo prediction over ModelInfer, exact."""
    try:
        import struct

        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from app.grpc.generated import grpc_service_pb2 as pb
        from app.grpc.generated import grpc_service_pb2_grpc as pb_grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "demo"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                check(status == health_pb2.HealthCheckResponse.SERVING,
                      f"gRPC health {service or '(server)'!r} on :{port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
            data = DEMO_REQUEST["inputs"][0]["data"]
            request = pb.ModelInferRequest(model_name="demo", inputs=[pb.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=[1, 3, 4])], raw_input_contents=[struct.pack(f"<{len(data)}f", *data)])
            answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            got = struct.unpack("<f", answer.raw_output_contents[0][:4])[0]
            want = struct.unpack("<f", struct.pack("<f", DEMO_ANSWER["data"][0]))[0]
            check(answer.outputs[0].name == "output" and abs(got - want) <= 1e-6,
                  f"gRPC ModelInfer demo on :{port}: {got!r} (want {want!r})")
    except Exception as exc:  # any failure to reach or use it is a failed check, not a crash
        check(False, f"gRPC on :{port}: {exc!r}")


# ---------------------------------------------------------------------------------------------
# Host side: requests


DEMO_REQUEST = {
    "inputs": [
        {
            "name": "input",
            "datatype": "FP32",
            "shape": [1, 3, 4],
            "data": [0, 12.8, 5.0, 4.7, 0.8, 11.7, 7.2, 2.3, 0, 10.6, 2.8, 4.5],
        }
    ],
    "outputs": [{"name": "output"}],
}
# The demo model's answer to the README's request (models/demo/1, float32, as served in JSON).
DEMO_ANSWER = {"name": "output", "datatype": "FP32", "shape": [1, 1], "data": [10.350984]}


def _post(url: str, body: dict, timeout: float = 30):
    import urllib.request

    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def predict(base: str) -> int:
    import urllib.request

    failures = 0

    def check(ok: bool, what: str) -> None:
        nonlocal failures
        print(("ok:   " if ok else "FAIL: ") + what)
        failures += not ok

    status, answer = _post(f"{base}/v2/models/demo/infer", DEMO_REQUEST)
    outputs = answer.get("outputs")
    check(status == 200 and outputs == [DEMO_ANSWER], f"demo prediction {outputs} (want exactly {[DEMO_ANSWER]})")
    # The answer can reach us before the worker has counted it: ask /metrics for up to 5 s.
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            text = r.read().decode()
            ctype = r.headers.get("content-type", "")
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("lstm_serve_requests_total{") and 'model="demo"' in line
        )
        if served >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    check(r.status == 200 and ctype.startswith("text/plain"), f"/metrics {r.status} {ctype}")
    check(served >= 1, f"/metrics counts the prediction: lstm_serve_requests_total{{model=\"demo\"}} = {served:g}")
    return 1 if failures else 0


def drain(base: str, container: str, grace_s: float, podman: str = "podman") -> int:
    """Closed-loop load (6 clients, 16 x 1000-step sequences a request, ~30 ms each on 2 cores),
    then SIGTERM to the container's PID 1 (from the host, as the runtime does). As behind a
    Service whose endpoint was removed, the clients send nothing new once the signal is on its
    way; every request already sent must be answered 200, and the container must exit 0 within
    the grace period."""
    import http.client
    import random
    import signal
    import subprocess
    import threading
    import urllib.parse

    rng = random.Random(23)
    shape = [16, 1000, 4]
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": [round(rng.uniform(0, 20), 1) for _ in range(16 * 1000 * 4)]}]}
    ).encode()
    host = urllib.parse.urlsplit(base)
    stop = threading.Event()
    lock = threading.Lock()
    results = []  # (start, end, ok, detail)

    def client() -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=grace_s)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v2/models/demo/infer", body, {"content-type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                ok, detail = resp.status == 200 and len(json.loads(data)["outputs"][0]["data"]) == 16, resp.status
            except Exception as e:  # noqa: BLE001 - every failure counts
                ok, detail = False, repr(e)
                conn.close()
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=grace_s)
            with lock:
                results.append((t0, time.monotonic(), ok, detail))
        conn.close()

    # The container's PID 1 as the host sees it: the signal lands at once (`podman kill` takes
    # longer than a request, so every request in flight would be over before it arrived).
    host_pid = int(subprocess.run([podman, "inspect", "--format", "{{.State.Pid}}", container], check=True, capture_output=True, text=True).stdout)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    t_sig = time.monotonic()
    os.kill(host_pid, signal.SIGTERM)
    t_sent = time.monotonic()
    for t in threads:
        t.join(grace_s)
    waited = subprocess.run([podman, "wait", container], capture_output=True, text=True, timeout=grace_s + 10)
    t_exit = time.monotonic()
    code = waited.stdout.strip()

    failed = [r for r in results if not r[2]]
    in_flight = [r for r in results if r[0] < t_sig and r[1] > t_sent]
    print(
        f"drain: {len(results)} requests in 2 s of load, {len(in_flight)} in flight at SIGTERM, {len(failed)} failed; "
        f"exit code {code} {t_exit - t_sig:.2f} s after SIGTERM"
    )
    ok = True
    for cond, what in (
        (len(results) >= 10, f"load ran ({len(results)} requests)"),
        (len(in_flight) >= 1, f"requests in flight at SIGTERM ({len(in_flight)})"),
        (not failed, f"0 failed requests ({len(failed)}: {[r[3] for r in failed][:5]})"),
        (code == "0", f"exit code {code!r} after SIGTERM (want 0)"),
        (t_exit - t_sig < grace_s, f"exited within the grace period ({t_exit - t_sig:.2f} s < {grace_s} s)"),
    ):
        print(("ok:   " if cond else "FAIL: ") + what)
        ok &= cond
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    cmd, *rest = argv
    if cmd == "k8s-args":
        print(json.dumps(k8s_args(rest[0])))
        return 0
    if cmd == "probe":
        return probe(json.loads(rest[0]))
    if cmd == "predict":
        return predict(rest[0])
    if cmd == "drain":
        return drain(rest[0], rest[1], float(rest[2]), *rest[3:])
    raise SystemExit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
