"""deploy/image-check.sh and its helper deploy/image_check.py, offline: the podman arguments
derived from k8s/base (the run that must look like the cluster's), the in-container probe
judging a root process on a writable root filesystem (it must fail), and the Dockerfile's
Debian/PyPI-CUDA build arguments. The image itself is built and run by the script (CI runs it
after `make test`; docs/image.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from .deploy_lib import DOCKERFILE, K8S, ROOT, dockerfile_args, in_build_context, stage_instructions

SCRIPT = ROOT / "deploy" / "image-check.sh"
HELPER = ROOT / "deploy" / "image_check.py"
DEPLOYMENT = K8S / "base" / "deployment.yaml"


def _k8s_args(deployment=DEPLOYMENT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HELPER), "k8s-args", str(deployment)], capture_output=True, text=True, timeout=60, check=False
    )


def _pairs(args: list[str]) -> list[tuple[str, str]]:
    return [(a, args[i + 1]) for i, a in enumerate(args[:-1]) if a.startswith("--") and not args[i + 1].startswith("--")]


def test_podman_run_reproduces_the_base_security_context() -> None:
    proc = _k8s_args()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    args, expect = out["args"], out["expect"]
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = {**pod["securityContext"], **container["securityContext"]}
    pairs = _pairs(args)

    assert ("--user", f"{sc['runAsUser']}:{sc['runAsGroup']}") in pairs
    assert expect["uid"] == sc["runAsUser"] != 0 and expect["non_root"] is True
    assert sc["readOnlyRootFilesystem"] and "--read-only" in args and "--read-only-tmpfs=false" in args, (
        "podman's --read-only alone adds writable tmpfs on /run, /tmp and /var/tmp that Kubernetes does not"
    )
    assert expect["read_only_root"] is True
    assert ("--cap-drop", "ALL") in pairs and "--cap-add" not in args and expect["no_capabilities"]
    assert ("--security-opt", "no-new-privileges") in pairs and expect["no_new_privs"]
    assert expect["seccomp_filter"]
    # Every emptyDir mount is a tmpfs of its size limit, and the only writable path expected.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    assert mounts and expect["writable"] == mounts
    tmpfs = [v for a, v in pairs if a == "--tmpfs"]
    assert [t.split(":")[0] for t in tmpfs] == mounts
    assert "size=268435456" in tmpfs[0]  # sizeLimit: 256Mi
    assert ("--memory", str(2 * 2**30)) in pairs and expect["memory_limit"] == 2 * 2**30
    # The server settings the pod gets: the ConfigMap generated from lstm-serve.env.
    assert ("--env-file", str(K8S / "base" / "lstm-serve.env")) in pairs
    assert out["grace_s"] == pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c, p: c["securityContext"]["capabilities"].update(add=["NET_BIND_SERVICE"]), None),
        (lambda c, p: c["securityContext"].update(privileged=True), "privileged"),
        (lambda c, p: c["securityContext"].update(procMount="Unmasked"), "procMount"),
        (lambda c, p: c["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile"),
        (lambda c, p: p["volumes"].__setitem__(0, {"name": "tmp", "hostPath": {"path": "/tmp"}}), "emptyDir"),
    ],
)
def test_podman_run_refuses_what_it_cannot_reproduce(tmp_path, edit, message) -> None:
    """A securityContext field the translation does not know must stop the check, never be
    skipped; an added capability is reproduced, and then no longer expected to be absent."""
    docs = list(yaml.safe_load_all(DEPLOYMENT.read_text()))
    (deployment,) = [d for d in docs if d and d.get("kind") == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    edit(pod["containers"][0], pod)
    shutil.copy(K8S / "base" / "kustomization.yaml", tmp_path)
    shutil.copy(K8S / "base" / "lstm-serve.env", tmp_path)
    target = tmp_path / "deployment.yaml"
    target.write_text(yaml.safe_dump_all(docs))
    proc = _k8s_args(target)
    if message is None:
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert ("--cap-add", "NET_BIND_SERVICE") in _pairs(out["args"])
        assert "no_capabilities" not in out["expect"]
    else:
        assert proc.returncode != 0 and message in proc.stderr, proc.stdout + proc.stderr


def _probe(expect: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-", "probe", json.dumps(expect)],
        stdin=HELPER.open(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="shows the probe failing on a root process: run as root (CI is)")
def test_probe_fails_for_root_on_a_writable_root_filesystem() -> None:
    """The probe the script runs in the container, run here on the host, as root, where / is
    writable: with the securityContext's expectations it must fail on exactly those points."""
    expect = json.loads(_k8s_args().stdout)["expect"]
    proc = _probe(expect)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert any(re.match(r"FAIL: pid \d+ .*uid:gid 0:0 .*runs as root", line) for line in fails), fails[:5]
    assert any(line.startswith("FAIL: root filesystem writable") for line in fails), fails
    assert any("want uid:gid 10001:10001" in line for line in fails)
    # The same facts pass where they are what is expected: the probe is not just failing.
    own = _probe({"read_only_root": False, "writable": [str(ROOT)]})
    assert "ok:   root filesystem writable" in own.stdout and f"ok:   {ROOT} writable" in own.stdout, own.stdout


def test_script_is_valid_bash_and_ci_runs_it() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    assert os.access(SCRIPT, os.X_OK)
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "make test" in lines
    assert any(line.startswith("deploy/image-check.sh") for line in lines), "CI must build and run the image"
    text = SCRIPT.read_text()
    for flag in ("--pull=never", "--no-cache", "--format docker"):
        assert flag in text, flag
    assert "127.0.0.1:$PORT:8000" in text, "publish on the loopback interface only"


def test_script_and_helper_stay_out_of_the_image() -> None:
    assert not in_build_context("deploy/image-check.sh") and not in_build_context("deploy/image_check.py")


def test_dockerfile_builds_on_any_debian_family_base() -> None:
    """Nothing but the PYTHON default names Ubuntu's Python: a Debian base passes its own."""
    args = dockerfile_args()
    assert args["PYTHON"] == "python3.12", "the default keeps today's Ubuntu 24.04 / nvidia/cuda builds"
    assert args["ORT_GPU_EXTRAS"] == "", "by default CUDA and cuDNN come from the nvidia/cuda base"
    for stage in ("python", "builder", "runtime"):
        for instruction in stage_instructions(stage):
            if instruction.keyword in {"RUN", "COPY"}:
                assert not re.search(r"python3\.\d+", instruction.args), (stage, instruction.args)
    builder = " ".join(i.args for i in stage_instructions("builder") if i.keyword == "RUN")
    assert '"${PYTHON}-venv"' in builder and '"${PYTHON}" -m venv' in builder
    assert 'onnxruntime-gpu[${ORT_GPU_EXTRAS}]' in builder


def test_gpu_image_checks_its_cuda_provider() -> None:
    runtime = " ".join(i.args for i in stage_instructions("runtime") if i.keyword == "RUN")
    assert "CUDAExecutionProvider" in runtime and "ldd" in runtime and "not found" in runtime
    assert "ldconfig" in runtime, "PyPI's CUDA libraries must be known to the dynamic linker"


def test_onnxruntime_telemetry_is_off() -> None:
    env = " ".join(i.args for i in stage_instructions("runtime") if i.keyword == "ENV")
    assert "ORT_DISABLE_TELEMETRY=1" in env
    assert DOCKERFILE.read_text().count("ORT_DISABLE_TELEMETRY") >= 1
