"""Least privilege, checked offline (issue 15, item 7): the server loads ONNX and nothing that
can execute code (no pickle), the image runs non-root with no package manager or compiler, the
pods run with a read-only root filesystem, and the optional token comes from a read-only Secret.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from .deploy_lib import (
    KSERVE,
    OVERLAYS,
    ROOT,
    dockerfile_args,
    dockerfile_instructions,
    one,
    predictor_pod_spec,
    render,
    server_container,
    settings_configmap,
    stage_instructions,
)

# Modules that deserialise by running code: none of them may be imported by the server.
UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch"}


def _server_modules() -> list[Path]:
    return sorted((ROOT / "app").rglob("*.py"))


def test_server_code_never_unpickles() -> None:
    for path in _server_modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.module or "").split(".")[0]]
            else:
                mods = []
            assert not set(mods) & UNPICKLERS, f"{path.name}:{node.lineno} imports {mods}"
            if isinstance(node, ast.keyword):
                assert node.arg != "allow_pickle", f"{path.name}:{node.lineno} passes allow_pickle"
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads"):
                base = node.value
                assert not (isinstance(base, ast.Name) and base.id in ("np", "numpy", "pickle")), (
                    f"{path.name}:{node.lineno}: {base.id}.{node.attr} can unpickle"
                )


def test_the_server_loads_only_onnx_artifacts() -> None:
    from app.engine import repository

    assert repository.ARTIFACT.endswith(".onnx")
    sessions = [p.name for p in _server_modules() if "InferenceSession(" in p.read_text()]
    assert sessions == ["runtime.py"] or sessions == ["model.py"], sessions


def test_runtime_image_has_no_package_manager_or_compiler() -> None:
    runtime = stage_instructions("runtime")
    text = "\n".join(f"{i.keyword} {i.args}" for i in runtime)
    removal = [i.args for i in runtime if i.keyword == "RUN" and "rm -rf" in i.args]
    assert removal, "the runtime stage must remove apt and dpkg"
    for program in ("/usr/bin/apt ", "/usr/bin/apt-*", "/usr/bin/dpkg ", "/usr/bin/dpkg-*", "/etc/apt"):
        assert program in removal[0] + " ", f"runtime stage keeps {program.strip()}"
    assert "/var/lib/dpkg" not in removal[0], "keep dpkg's database for image scanners"
    for forbidden in ("apt-get install", "pip install", "gcc", "g++", "clang", "build-essential", "make "):
        assert forbidden not in text, f"runtime stage runs {forbidden!r}"
    # what the runtime stage is built on: the `python` stage (only the base's Python installed:
    # the PYTHON build argument, python3.12 by default) on a CUDA *runtime* base, never a devel
    # image with nvcc and headers.
    assert [i.args for i in runtime if i.keyword == "FROM"] == ["python AS runtime"]
    installs = [i.args for i in stage_instructions("python") if i.keyword == "RUN"]
    assert len(installs) == 1 and 'install -y --no-install-recommends "${PYTHON}" ' in installs[0] + " "
    assert re.fullmatch(r"python3\.\d+", dockerfile_args()["PYTHON"]), dockerfile_args()["PYTHON"]
    cuda = dockerfile_args()["CUDA_IMAGE"]
    assert "-runtime-" in cuda and "devel" not in cuda, cuda
    # the builder's pip does not travel: it is uninstalled from the venv that is copied
    builder = " ".join(i.args for i in stage_instructions("builder") if i.keyword == "RUN")
    assert "pip uninstall --yes pip" in builder


def test_image_runs_as_a_numeric_non_root_user() -> None:
    users = [i.args for i in dockerfile_instructions() if i.keyword == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0


@pytest.mark.parametrize("directory", [*OVERLAYS, KSERVE])
def test_pods_run_read_only_and_unprivileged(directory: str) -> None:
    pod = predictor_pod_spec(render(directory))
    container = server_container(pod)
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["runAsNonRoot"] is True and ctx["capabilities"]["drop"] == ["ALL"]
    assert pod.get("automountServiceAccountToken") is False, "the server needs no Kubernetes API token"
    writable = [m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")]
    assert writable == ["/tmp"], f"only /tmp may be writable, got {writable}"


@pytest.fixture
def overlay_with_auth(request: pytest.FixtureRequest, tmp_path: Path) -> list[dict]:
    overlay = request.param
    k8s = ROOT / "k8s"
    (tmp_path / "kustomization.yaml").write_text(
        "resources:\n"
        f"  - {os.path.relpath(k8s / overlay, tmp_path)}\n"
        "components:\n"
        f"  - {os.path.relpath(k8s / 'components' / 'api-key', tmp_path)}\n"
        f"  - {os.path.relpath(k8s / 'monitoring', tmp_path)}\n"  # the ServiceMonitor must scrape without one
    )
    return render(str(tmp_path))


@pytest.mark.parametrize("overlay_with_auth", OVERLAYS, indirect=True)
def test_api_key_component_mounts_the_secret_read_only(overlay_with_auth: list[dict]) -> None:
    import kubernetes_validate

    from app.config import Settings

    pod = predictor_pod_spec(overlay_with_auth)
    container = server_container(pod)
    settings = settings_configmap(overlay_with_auth)
    assert "LSTM_SERVE_API_KEY" not in settings, "the token itself never goes into a ConfigMap"
    path = Path(settings["LSTM_SERVE_API_KEY_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "api-key"]
    assert mount["readOnly"] is True and path.parent == Path(mount["mountPath"])
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-key"]
    secret = volume["secret"]
    assert secret["secretName"] == "lstm-serve-api-key" and not secret.get("optional")
    assert [i["path"] for i in secret["items"]] == [path.name]
    assert secret["defaultMode"] & 0o007 == 0, "the token file is not world-readable"
    # the probes stay on open paths, the ServiceMonitor on /metrics (both without credentials)
    from app.http.auth import protects

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert not protects(container[probe]["httpGet"]["path"]), probe
    monitor = one(overlay_with_auth, "ServiceMonitor")
    assert all(not protects(e.get("path", "/metrics")) for e in monitor["spec"]["endpoints"])
    kubernetes_validate.validate(one(overlay_with_auth, "Deployment"), "1.29.0", strict=True)
    Settings(api_key_file=path)  # a valid setting for the server
