#!/usr/bin/env bash
# Install everything commhub's tests need besides the Rust toolchain:
#   - Debian packages (chromium for the browser test, sox/ffmpeg/gstreamer for media tools,
#     flac for the recorder's tests (flac -t, metaflac), pkg-config/libssl-dev for pip's
#     source-build fallback of the Python clients' packages; e2fsprogs/util-linux/mount for the
#     burst test's throttled loop-device disk). Building commhub itself needs none of them, and
#     no cmake: see tests/build_deps.rs,
#   - a Python venv at .venv with tests/clients/requirements.txt (aiortc clients),
#   - tests/browser's npm packages (playwright-core; it drives Debian's /usr/bin/chromium) and
#     tests/sms's (the npm `smpp` SMSC simulator),
#   - PostgreSQL: the machine's cluster is started (or the server installed and a cluster
#     created) with a `commhub` role that may create databases, for the store tests
#     (COMMHUB_TEST_DATABASE_URL, set by scripts/test.sh); coturn for the TURN test,
#   - Jasmin for the SMPP tests: scripts/jasmin.sh install (RabbitMQ, Redis, .venv-jasmin, the
#     listeners.py patch) and scripts/jasmin.sh start (127.0.0.1, ports in
#     /tmp/commhub-jasmin/env; stop it with scripts/jasmin.sh stop).
# Idempotent and quick when everything is already there. Used by .ci/run; developers can run
# it directly. Environment: SKIP_APT=1 skips the Debian part, PYTHON picks the interpreter,
# SKIP_POSTGRES=1 and SKIP_JASMIN=1 skip those services.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

step() { printf '\n==> [setup-test-deps] %s\n' "$*"; }

APT_PACKAGES=(
  pkg-config libssl-dev
  chromium sox ffmpeg flac
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-nice
  postgresql coturn curl openssl
  e2fsprogs util-linux mount
  sip-tester baresip-core
  rabbitmq-server redis-server iproute2
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ---------------------------------------------------------------- Debian packages
if [ "${SKIP_APT:-0}" = "1" ]; then
  step "apt: skipped (SKIP_APT=1)"
else
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    step "apt: all ${#APT_PACKAGES[@]} packages already installed"
  else
    step "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
fi

# ---------------------------------------------------------------- UDP socket buffers
# The media engine carries every connection of a worker on one UDP socket and asks for 4 MB
# buffers; the kernel caps the request at net.core.{r,w}mem_max (about 200 kB by default), and
# a small buffer drops datagrams whenever the worker is off CPU for a few ms (engine_rooms).
for k in net.core.rmem_max net.core.wmem_max; do
  if [ "$(sysctl -n "$k" 2>/dev/null || echo 0)" -lt 4194304 ]; then
    step "sysctl: $k=4194304"
    $SUDO sysctl -qw "$k=4194304" || echo "could not raise $k (engine tests may drop under load)"
  fi
done

# ---------------------------------------------------------------- Python venv
REQ="$REPO/tests/clients/requirements.txt"
VENV="$REPO/.venv"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  step "python: creating $VENV with $($PY --version 2>&1)"
  if ! "$PY" -m venv "$VENV"; then
    # Debian's own python3 needs python3-venv for ensurepip.
    rm -rf "$VENV"
    step "python: venv failed; installing python3-venv"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    "$PY" -m venv "$VENV"
  fi
fi
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
stamp="$VENV/.commhub-requirements.sha256"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$VENV/bin/python" -c 'import aiortc, aioice, numpy, websockets' 2>/dev/null; then
  step "python: requirements already installed in .venv"
else
  step "python: pip install -r tests/clients/requirements.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" - <<'PY'
import aiortc, aioice.ice, numpy, websockets
assert hasattr(aioice.ice, "get_host_addresses"), "aioice changed: update tests/clients/rtc_common.py"
print(f"    aiortc {aiortc.__version__}, numpy {numpy.__version__}, websockets {websockets.__version__}")
PY

# ---------------------------------------------------------------- npm (browser test, SMSC simulator)
# npm_deps DIR: npm ci (npm install without a lockfile) in DIR when its package files changed.
npm_deps() {
  local dir="$1" rel want stamp
  rel="${1#"$REPO"/}"
  if [ ! -f "$dir/package.json" ]; then
    step "npm: no $rel/package.json; skipped"
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup-test-deps: npm not found (node 20 expected)" >&2
    exit 1
  fi
  want="$(cat "$dir/package.json" "$dir/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1)"
  stamp="$dir/node_modules/.commhub-deps.sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    step "npm: $rel dependencies already installed"
  else
    if [ -f "$dir/package-lock.json" ]; then
      step "npm: npm ci in $rel"
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    else
      step "npm: npm install in $rel"
      (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
    fi
    echo "$want" > "$stamp"
  fi
}
npm_deps "$REPO/tests/browser"
npm_deps "$REPO/tests/sms"

# ---------------------------------------------------------------- PostgreSQL
# The store tests create one database per test through a role that may create databases.
if [ "${SKIP_POSTGRES:-0}" = "1" ]; then
  step "postgres: skipped (SKIP_POSTGRES=1)"
else
  ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n1 || true)"
  if [ -z "$ver" ]; then
    echo "setup-test-deps: no PostgreSQL server under /usr/lib/postgresql" >&2
    exit 1
  fi
  if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
    step "postgres: creating cluster $ver/main"
    $SUDO pg_createcluster "$ver" main
  fi
  cluster="$(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}')"
  if pg_lsclusters -h | awk 'NR==1 {print $4}' | grep -q online; then
    step "postgres: cluster $cluster already running"
  else
    step "postgres: starting cluster $cluster"
    # shellcheck disable=SC2086
    $SUDO pg_ctlcluster $cluster start
  fi
  port="$(pg_lsclusters -h | awk 'NR==1 {print $3}')"
  psql_pg() { $SUDO runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -tAq "$@"; }
  if [ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = 'commhub'")" != "1" ]; then
    step "postgres: creating role commhub"
    psql_pg -c "CREATE ROLE commhub LOGIN CREATEDB PASSWORD 'commhub'"
  fi
  # Databases left by earlier test runs.
  for db in $(psql_pg -c "SELECT datname FROM pg_database WHERE datname LIKE 'commhub_test_%'"); do
    psql_pg -c "DROP DATABASE IF EXISTS $db" >/dev/null || true
  done
  echo "    PostgreSQL $ver on port $port; tests use postgres://commhub:commhub@127.0.0.1:$port/postgres"
fi

# ---------------------------------------------------------------- Jasmin (SMPP tests)
# Started after PostgreSQL, like it: one Jasmin stack for the whole test run (docs/sms-design.md
# 2.6). Its apt packages are in APT_PACKAGES above, so `install` only checks them here.
if [ "${SKIP_JASMIN:-0}" = "1" ]; then
  step "jasmin: skipped (SKIP_JASMIN=1)"
else
  step "jasmin: scripts/jasmin.sh install"
  bash "$REPO/scripts/jasmin.sh" install
  step "jasmin: scripts/jasmin.sh start"
  bash "$REPO/scripts/jasmin.sh" start
fi

step "done"
