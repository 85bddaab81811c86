#!/usr/bin/env bash
# The image, built and run for real (issue 23; docs/image.md). On a Debian/Ubuntu machine, as
# root, without Docker or any registry:
#   1. installs podman, runc and mmdebstrap when missing (apt-get);
#   2. makes a slimmed Debian base with mmdebstrap and imports it (`podman import`); cached in
#      podman's storage under a tag naming its recipe, remade when older than a week;
#   3. builds the CPU image from it: --pull=never --no-cache --format docker (the build host's
#      extra CA certificates, if any, mounted read-only into the RUN steps);
#   4. runs it (a) plainly and (b) as k8s/base's Deployment runs it (securityContext, emptyDir
#      as tmpfs, memory limit, its ConfigMap env) and checks: ready, the demo prediction exact,
#      /metrics, non-root and no capabilities in every process, the root filesystem (read-only
#      in b, writable in a), the supervisor + two HTTP workers + one engine, and SIGTERM under
#      load: 0 failed requests, exit code 0.
# Exits non-zero on any failed check, and when podman cannot run containers here: it never
# reports success without having run the image.
#
# Settings (environment):
#   IMAGE_CHECK_SUITE=trixie  IMAGE_CHECK_PYTHON=python3.13   the Debian release and its Python
#   IMAGE_CHECK_MIRROR=http://deb.debian.org/debian           (…-security is derived from it)
#   IMAGE_CHECK_BASE_MAX_AGE_DAYS=7   remake the base when older (security updates)
#   IMAGE_CHECK_FRESH_BASE=1          remake the base now
#   IMAGE_CHECK_KEEP=1                keep the containers (stopped) for inspection
#   IMAGE_CHECK_BREAK=root|rw-root    run (b) as root / with a writable root filesystem, to see
#                                     the check fail (docs/image.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SUITE=${IMAGE_CHECK_SUITE:-trixie}
PY=${IMAGE_CHECK_PYTHON:-python3.13}
MIRROR=${IMAGE_CHECK_MIRROR:-http://deb.debian.org/debian}
MAX_AGE_DAYS=${IMAGE_CHECK_BASE_MAX_AGE_DAYS:-7}
IMAGE=localhost/lstm-serve:check-cpu
NAME=lstm-image-check-$$
T0=$(date +%s.%N)

since() { awk -v now="$(date +%s.%N)" -v t="$1" 'BEGIN { printf "%.1f", now - t }'; }
say() { printf '[%6ss] %s\n' "$(since "$T0")" "$*"; }
die() { echo "image-check: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (podman and mmdebstrap in root mode)"

# 1. Tools ------------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v curl >/dev/null || missing+=(curl)
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
if [ ${#missing[@]} -gt 0 ]; then
    T=$(date +%s.%N)
    echo "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "could not install ${missing[*]}"
    say "installed ${missing[*]} in $(since "$T") s"
fi
say "$(podman --version), runc $(runc --version | awk 'NR==1 {print $3}'), mmdebstrap $(mmdebstrap --version | awk '{print $2}')"

# podman's defaults do not work here: crun 1.8 refuses this kernel's hybrid cgroup layout, the
# default ulimits need CAP_SYS_RESOURCE above the hard limit, and there is no systemd (PID 1).
WORK=$(mktemp -d /tmp/lstm-image-check.XXXXXX)
export CONTAINERS_CONF=$WORK/containers.conf
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

started=()
cleanup() {
    local rc=$?
    for c in "${started[@]}"; do
        if [ "${IMAGE_CHECK_KEEP:-}" = 1 ]; then podman stop -t 5 "$c" >/dev/null 2>&1 || true
        else podman rm -f "$c" >/dev/null 2>&1 || true; fi
    done
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

# 2. The base ---------------------------------------------------------------------------------
# Debian's official images carry these: no apt caches or .deb files kept after an install, no
# translations, compressed indexes, no docs/man pages/locales (copyright files stay).
cat >"$WORK/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
base_args=(
    --variant=minbase --mode=root --format=tar
    --aptopt='Acquire::Languages "none"'
    --aptopt='Acquire::GzipIndexes "true"'
    --aptopt='APT::AutoRemove::SuggestsImportant "false"'
    --aptopt='APT::Install-Recommends "false"'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/groff/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/linda/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --customize-hook="cp $WORK/docker-clean \"\$1\"/etc/apt/apt.conf.d/docker-clean"
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt/* "$1"/var/log/*.log "$1"/var/cache/ldconfig/aux-cache'
    "$SUITE" "$WORK/base.tar"
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb ${MIRROR%/debian}/debian-security $SUITE-security main"
)
# The tag names the recipe (the arguments above, minus the temporary paths, and this file's
# clean-up config): a changed recipe never reuses an old base.
recipe=$( (printf '%s\n' "${base_args[@]}" | sed "s#$WORK#WORK#g"; cat "$WORK/docker-clean") | sha256sum | cut -c1-12)
BASE=localhost/lstm-serve-base:$SUITE-$recipe
reuse=0
if [ "${IMAGE_CHECK_FRESH_BASE:-}" != 1 ] && podman image exists "$BASE"; then
    created=$(podman image inspect --format '{{.Created.Unix}}' "$BASE")
    age_days=$(( ($(date +%s) - created) / 86400 ))
    [ "$age_days" -lt "$MAX_AGE_DAYS" ] && reuse=1
fi
if [ $reuse = 1 ]; then
    say "base $BASE: cached, $age_days day(s) old (IMAGE_CHECK_FRESH_BASE=1 remakes it)"
else
    T=$(date +%s.%N)
    mmdebstrap --quiet "${base_args[@]}" || die "mmdebstrap $SUITE failed"
    T_DEBOOTSTRAP=$(since "$T")
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' "$WORK/base.tar" "$BASE" >/dev/null
    rm -f "$WORK/base.tar"
    say "base $BASE: made in $(since "$T") s (mmdebstrap $T_DEBOOTSTRAP s), $(podman image inspect --format '{{.Size}}' "$BASE" | numfmt --to=si)B"
fi
podman tag "$BASE" "localhost/lstm-serve-base:$SUITE"

# podman must really run containers here; otherwise stop now, loudly.
podman run --rm --pull=never --network none "$BASE" true \
    || die "podman cannot run a container on this machine (runtime runc, $CONTAINERS_CONF); see docs/image.md"

# 3. Build ------------------------------------------------------------------------------------
ca_mount=()
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    # A TLS-intercepting proxy in front of PyPI: the builder's ca-certificates adds these.
    ca_mount=(--volume /usr/local/share/ca-certificates:/usr/local/share/ca-certificates:ro)
fi
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
T=$(date +%s.%N)
podman build --pull=never --no-cache --format docker --layers=false "${ca_mount[@]}" \
    --build-arg VARIANT=cpu --build-arg CPU_IMAGE="$BASE" --build-arg PYTHON="$PY" \
    --tag "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "podman build failed"; }
T_BUILD=$(since "$T")
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE in $T_BUILD s (cold: --no-cache): $(numfmt --to=si "$SIZE")B ($SIZE bytes; base $(podman image inspect --format '{{.Size}}' "$BASE" | numfmt --to=si)B)"

# The image's own configuration: what `docker run IMAGE` does.
failures=0
ok() { echo "ok:   $*"; }
bad() { echo "FAIL: $*"; failures=$((failures + 1)); }
checked() {  # label, command...: its output prefixed; each FAIL line (or a bare error) counts
    local label=$1 out rc=0 n; shift
    out=$("$@" 2>&1) || rc=$?
    printf '%s\n' "$out" | sed "s/^/($label) /"
    n=$(printf '%s\n' "$out" | grep -c '^FAIL' || true)
    if [ $rc != 0 ] && [ "$n" = 0 ]; then n=1; fi
    failures=$((failures + n))
}
expect_eq() { if [ "$1" = "$2" ]; then ok "$3: $1"; else bad "$3: $1 (want $2)"; fi; }
config=$(podman image inspect "$IMAGE")
cfg() { python3 -c "import json,sys; i=json.loads(sys.argv[1])[0]; c=i['Config']; print(eval(sys.argv[2]))" "$config" "$1"; }
expect_eq "$(cfg 'c["Entrypoint"]')" "['/opt/venv/bin/lstm-serve']" "image entrypoint"
expect_eq "$(cfg 'c.get("Cmd")')" "None" "image cmd"
expect_eq "$(cfg 'c["User"]')" "10001:10001" "image user"
expect_eq "$(cfg '[e for e in c["Env"] if e.startswith("LSTM_SERVE_WORKERS=")]')" "['LSTM_SERVE_WORKERS=2']" "image env workers"
expect_eq "$(cfg '[e for e in c["Env"] if e.startswith("LSTM_SERVE_ENGINE=")] or "engine unset: shared"')" "engine unset: shared" "image env engine"
expect_eq "$(cfg '"ORT_DISABLE_TELEMETRY=1" in c["Env"]')" "True" "telemetry off"
expect_eq "$(cfg '(i.get("Healthcheck") or {}).get("Test", [""])[0]')" "CMD" "HEALTHCHECK kept (--format docker)"
health_cmd=$(cfg 'json.dumps((i.get("Healthcheck") or {}).get("Test", ["", "true"])[1:])')

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT

# 4. Runs -------------------------------------------------------------------------------------
k8s=$(python3 deploy/image_check.py k8s-args k8s/base/deployment.yaml)
mapfile -t k8s_run_args < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])["args"]))' "$k8s")
GRACE=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["grace_s"])' "$k8s")

run_one() {  # label, expectations (JSON), podman run arguments...
    local label=$1 expect=$2; shift 2
    local name=$NAME-$label before=$failures
    echo
    say "run ($label): podman run $* $IMAGE"
    local T; T=$(date +%s.%N)
    started+=("$name")
    podman run -d --name "$name" --pull=never --no-healthcheck -p "127.0.0.1:$PORT:8000" "$@" "$IMAGE" >/dev/null \
        || { bad "($label) podman run failed"; return; }
    local ready=0
    for _ in $(seq 600); do
        if curl -sf -m 2 "$URL/v2/health/ready" >/dev/null 2>&1; then ready=1; break; fi
        [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || break
        sleep 0.1
    done
    if [ $ready = 0 ]; then
        bad "($label) never ready"; podman logs "$name" 2>&1 | tail -20; return
    fi
    ok "($label) ready $(since "$T") s after podman run"
    checked "$label" python3 deploy/image_check.py predict "$URL"
    # The image's HEALTHCHECK command, run as podman/docker would.
    if podman exec "$name" "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[0])' "$health_cmd")" \
            -c "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[2])' "$health_cmd")"; then
        ok "($label) HEALTHCHECK command exits 0"
    else bad "($label) HEALTHCHECK command failed"; fi
    # Facts from inside: the probe runs on the image's own python, fed on stdin.
    checked "$label" podman exec -i "$name" /opt/venv/bin/python - probe "$expect" <deploy/image_check.py
    if podman logs "$name" 2>&1 | grep -qi telemetry; then bad "($label) telemetry message in the log"; else ok "($label) no telemetry message in the log"; fi
    # SIGTERM under load.
    checked "$label" python3 deploy/image_check.py drain "$URL" "$name" "$GRACE"
    if podman logs "$name" 2>&1 | grep -E '"level":"(error|critical)"' | head -5 | grep .; then
        bad "($label) errors in the server log (above)"
    fi
    say "run ($label): $([ $failures = "$before" ] && echo passed || echo "$((failures - before)) failed check(s)")"
}

plain_expect='{"uid": 10001, "gid": 10001, "read_only_root": false, "writable": ["/tmp"], "workers": 2}'
k8s_expect=$(python3 -c 'import json,sys; e = json.loads(sys.argv[1])["expect"]; e["workers"] = 2; print(json.dumps(e))' "$k8s")
case "${IMAGE_CHECK_BREAK:-}" in
    "") ;;
    root) echo "IMAGE_CHECK_BREAK=root: run (b) as root (the check must fail)"; k8s_run_args+=(--user 0:0) ;;
    rw-root) echo "IMAGE_CHECK_BREAK=rw-root: run (b) with a writable root (the check must fail)"; k8s_run_args+=(--read-only=false) ;;
    *) die "IMAGE_CHECK_BREAK=${IMAGE_CHECK_BREAK}: root or rw-root" ;;
esac

run_one plain "$plain_expect"
podman rm -f "$NAME-plain" >/dev/null 2>&1 || true
run_one k8s "$k8s_expect" "${k8s_run_args[@]}"

echo
say "image $IMAGE: $(numfmt --to=si "$SIZE")B, built in $T_BUILD s; $failures failed check(s)"
[ "$failures" = 0 ] || die "$failures check(s) failed"
echo "image-check: all checks passed"
