#!/usr/bin/env bash
# Jasmin (SMPP gateway) for commhub's SMPP tests: Debian's RabbitMQ and Redis plus PyPI
# jasmin==0.11.1 in its own venv, everything on 127.0.0.1, on high ports, with its data under
# one directory. See docs/sms-design.md section 2.
#
#   scripts/jasmin.sh install   apt rabbitmq-server redis-server, .venv-jasmin, listeners.py patch
#   scripts/jasmin.sh start     start RabbitMQ, Redis and jasmind; wait until they accept
#   scripts/jasmin.sh stop      stop all three (and the epmd RabbitMQ leaves behind), by pid
#   scripts/jasmin.sh status    what runs, exit 0 only when all of it runs
#
# Environment: JASMIN_DIR (default /tmp/commhub-jasmin) holds the config, logs, store, pid files
# and an `env` file with the ports for the tests. Ports (defaults): JASMIN_SMPP_PORT 12775,
# JASMIN_JCLI_PORT 18990, JASMIN_ROUTER_PORT 18988, JASMIN_SMPPCM_PORT 18989,
# JASMIN_SMPP_PB_PORT 14001, JASMIN_HTTP_PORT 11401, JASMIN_RABBITMQ_PORT 35672 (Erlang
# distribution on JASMIN_RABBITMQ_PORT+1, epmd on JASMIN_EPMD_PORT 34369), JASMIN_REDIS_PORT
# 36379. PYTHON picks the interpreter for the venv (python3.11). SKIP_APT=1 skips apt.
# Idempotent: each step is skipped when done. The env file also holds the jcli login.
# Runs as root (CI) or as a user with sudo (RabbitMQ runs as the `rabbitmq` user either way).
# Only one jasmind can run per machine: it takes the lock /tmp/jasmind.lock (hard-coded).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
J="${JASMIN_DIR:-/tmp/commhub-jasmin}"
VENV="$REPO/.venv-jasmin"
REQ="$REPO/tests/sms/jasmin-requirements.txt"

SMPP_PORT="${JASMIN_SMPP_PORT:-12775}"
JCLI_PORT="${JASMIN_JCLI_PORT:-18990}"
ROUTER_PORT="${JASMIN_ROUTER_PORT:-18988}"
SMPPCM_PORT="${JASMIN_SMPPCM_PORT:-18989}"
SMPP_PB_PORT="${JASMIN_SMPP_PB_PORT:-14001}"
HTTP_PORT="${JASMIN_HTTP_PORT:-11401}"
AMQP_PORT="${JASMIN_RABBITMQ_PORT:-35672}"
DIST_PORT="$((AMQP_PORT + 1))"
EPMD_PORT="${JASMIN_EPMD_PORT:-34369}"
REDIS_PORT="${JASMIN_REDIS_PORT:-36379}"
RABBIT_NODE="commhub@localhost"

step() { printf '==> [jasmin] %s\n' "$*"; }
die() { printf 'jasmin.sh: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

now_ms() { date +%s%3N; }
secs_since() { local d=$(($(now_ms) - $1)); printf '%d.%02d s' $((d / 1000)) $((d % 1000 / 10)); }

# Whether 127.0.0.1:$1 accepts a TCP connection (bash's /dev/tcp, no extra tool).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port NAME PORT TIMEOUT_S PID: wait until the port accepts; fail early if PID died.
wait_port() {
  local name="$1" port="$2" timeout="$3" pid="${4:-}" t0
  t0="$(now_ms)"
  while ! port_open "$port"; do
    if [ -n "$pid" ] && ! alive "$pid"; then
      die "$name (pid $pid) exited before 127.0.0.1:$port accepted; see $J/*.out and $J/log/"
    fi
    if [ $(($(now_ms) - t0)) -gt $((timeout * 1000)) ]; then
      die "$name: 127.0.0.1:$port did not accept within ${timeout} s; see $J/*.out and $J/log/"
    fi
    sleep 0.05
  done
}

# Whether process $1 runs (a zombie waiting for its parent to reap it counts as gone).
alive() { [ -e "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat" 2>/dev/null; }

# The pid in file $1 when that process is alive, else nothing.
live_pid() {
  local f="$1" pid
  [ -s "$f" ] || return 1
  pid="$(tr -dc '0-9' < "$f")"
  [ -n "$pid" ] && alive "$pid" && echo "$pid"
}

# The pid listening on 127.0.0.1:$1 (or [::1]), from ss; nothing if none.
listener_pid() {
  { ss -Hltnp "sport = :$1" 2>/dev/null || true; } | { grep -o 'pid=[0-9]*' || true; } \
    | head -n1 | cut -d= -f2
}

# Whether any jasmind runs on this machine (ours or not). The pattern's backslash keeps this
# grep from matching its own command line.
jasmind_running() { grep -qs 'jasmind\.py' /proc/[0-9]*/cmdline; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

listeners_file() {
  "$VENV/bin/python" -c 'import jasmin.managers.listeners as m; print(m.__file__)'
}

# ------------------------------------------------------------------------------------- install
cmd_install() {
  local t0 p missing=()
  t0="$(now_ms)"
  if [ "${SKIP_APT:-0}" = "1" ]; then
    step "apt: skipped (SKIP_APT=1)"
  else
    # iproute2 for ss (finding the epmd RabbitMQ leaves behind); minimal images lack it.
    for p in rabbitmq-server redis-server iproute2; do installed "$p" || missing+=("$p"); done
    if [ "${#missing[@]}" -eq 0 ]; then
      step "apt: rabbitmq-server, redis-server and iproute2 already installed"
    else
      step "apt: installing ${missing[*]}"
      $SUDO apt-get update -q
      # Debian starts both services after installing them where it can (systemd); they listen
      # on the default ports and do not disturb ours.
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
  fi

  local py="${PYTHON:-}"
  if [ -z "$py" ]; then
    if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    command -v "$py" >/dev/null 2>&1 || die "$py not found (Jasmin 0.11.1 is tested with Python 3.11)"
    step "venv: creating .venv-jasmin with $("$py" --version 2>&1)"
    if ! "$py" -m venv "$VENV"; then
      # Debian's own python3 needs python3-venv for ensurepip.
      rm -rf "$VENV"
      step "venv: failed; installing python3-venv"
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
      "$py" -m venv "$VENV"
    fi
  fi
  local want stamp
  want="$(sha256sum "$REQ" | cut -d' ' -f1)"
  stamp="$VENV/.commhub-requirements.sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && "$VENV/bin/python" -c 'import jasmin, txamqp' 2>/dev/null; then
    step "venv: tests/sms/jasmin-requirements.txt already installed"
  else
    step "venv: pip install -r tests/sms/jasmin-requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$want" > "$stamp"
  fi

  # Jasmin 0.11.1 (PyPI) drops every delivery receipt: SMPPClientSMListener.submit_sm_resp_event
  # in jasmin/managers/listeners.py builds the DLR from `_pdu.response`, but `_pdu` is the
  # SubmitSM request, which has no `.response` (AttributeError on every submit_sm_resp, so the
  # message-id map is never stored and every receipt ends in DLRMapNotFound). Fixed upstream in
  # a later commit (a3635cc, 2026-04), not released on PyPI. Use the submit_sm_resp wrapper
  # `r.response` instead (3 lines). Python recompiles the .pyc by itself.
  local lf
  lf="$(listeners_file)"
  if grep -q '_pdu\.response\.' "$lf"; then
    step "patch: listeners.py (_pdu.response. -> r.response.)"
    sed -i 's/_pdu\.response\./r.response./g' "$lf"
  else
    step "patch: listeners.py already patched"
  fi
  if grep -q '_pdu\.response\.' "$lf" || ! grep -q 'pdu_type=r\.response\.id' "$lf"; then
    die "the listeners.py patch did not apply to $lf: Jasmin would drop every delivery receipt"
  fi
  step "install done in $(secs_since "$t0")"
}

# -------------------------------------------------------------------------------------- config
write_config() {
  local spec
  spec="$("$VENV/bin/python" -c 'import os, txamqp; print(os.path.join(os.path.dirname(txamqp.__file__), "specs/standard/amqp0-9-1.stripped.xml"))')"
  [ -f "$spec" ] || die "no AMQP spec at $spec"
  cat > "$J/jasmin.cfg" <<EOF
# Written by scripts/jasmin.sh start; rewritten at every start.
[smpp-server]
id = smpps_01
bind = 127.0.0.1
port = $SMPP_PORT
log_privacy = True
log_level = INFO
log_file = $J/log/default-smpps_01.log

[smpp-server-pb]
bind = 127.0.0.1
port = $SMPP_PB_PORT
log_file = $J/log/smpp-server-pb.log

[client-management]
bind = 127.0.0.1
port = $SMPPCM_PORT
store_path = $J/store
log_file = $J/log/smppclient-manager.log

[service-smppclient]
log_file = $J/log/service-smppclient.log

[sm-listener]
log_privacy = True
log_file = $J/log/messages.log

[dlr]
log_privacy = True
# Retry a receipt whose id map is not stored yet after 1 s instead of 10 s (design 2.6).
dlr_lookup_retry_delay = 1
log_file = $J/log/messages.log

[amqp-broker]
host = 127.0.0.1
port = $AMQP_PORT
spec = $spec
log_file = $J/log/amqp-client.log

[redis-client]
host = 127.0.0.1
port = $REDIS_PORT
log_file = $J/log/redis-client.log

[http-api]
bind = 127.0.0.1
port = $HTTP_PORT
log_privacy = True
access_log = $J/log/http-access.log
log_file = $J/log/http-api.log

[router]
bind = 127.0.0.1
port = $ROUTER_PORT
store_path = $J/store
log_file = $J/log/router.log

[deliversm-thrower]
log_file = $J/log/deliversm-thrower.log

[dlr-thrower]
log_file = $J/log/dlr-thrower.log

[jcli]
bind = 127.0.0.1
port = $JCLI_PORT
log_file = $J/log/jcli.log
EOF
  cat > "$J/env" <<EOF
# Written by scripts/jasmin.sh start: where the test Jasmin listens (all on 127.0.0.1).
JASMIN_DIR=$J
JASMIN_SMPP_PORT=$SMPP_PORT
JASMIN_JCLI_PORT=$JCLI_PORT
JASMIN_HTTP_PORT=$HTTP_PORT
JASMIN_ROUTER_PORT=$ROUTER_PORT
JASMIN_SMPPCM_PORT=$SMPPCM_PORT
JASMIN_SMPP_PB_PORT=$SMPP_PB_PORT
JASMIN_JCLI_USER=jcliadmin
JASMIN_JCLI_PASSWORD=jclipwd
JASMIN_RABBITMQ_PORT=$AMQP_PORT
JASMIN_REDIS_PORT=$REDIS_PORT
EOF
}

# --------------------------------------------------------------------------------------- start
start_rabbit() {
  local pid t0
  if pid="$(live_pid "$J/rabbit/rabbit.pid")" && port_open "$AMQP_PORT"; then
    step "rabbitmq: already running (pid $pid, 127.0.0.1:$AMQP_PORT)"
    return
  fi
  port_open "$AMQP_PORT" && die "127.0.0.1:$AMQP_PORT is taken by another process (pid $(listener_pid "$AMQP_PORT"))"
  $SUDO mkdir -p "$J/rabbit"
  $SUDO chown rabbitmq: "$J/rabbit"
  $SUDO rm -f "$J/rabbit/rabbit.pid"
  t0="$(now_ms)"
  # Run the server script directly as `rabbitmq` (Debian's /usr/sbin wrapper does the same
  # through su). Everything on loopback: AMQP, the Erlang distribution port and our own epmd
  # on a high port, so a developer's RabbitMQ or epmd on the default ports is not touched.
  $SUDO env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq LANG=C.UTF-8 \
    RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT="$DIST_PORT" \
    ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$EPMD_PORT" \
    RABBITMQ_MNESIA_BASE="$J/rabbit/mnesia" RABBITMQ_LOG_BASE="$J/rabbit/log" \
    RABBITMQ_PID_FILE="$J/rabbit/rabbit.pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    setsid runuser -u rabbitmq -- /usr/lib/rabbitmq/bin/rabbitmq-server \
    > "$J/rabbit.out" 2>&1 < /dev/null &
  local launcher=$!
  wait_port rabbitmq "$AMQP_PORT" 60 "$launcher"
  if ! pid="$(live_pid "$J/rabbit/rabbit.pid")"; then
    # RabbitMQ writes its pid file itself; fall back to the process listening on the port.
    pid="$(listener_pid "$AMQP_PORT")"
    [ -n "$pid" ] || die "rabbitmq: no pid file and no listener pid for 127.0.0.1:$AMQP_PORT"
    echo "$pid" | $SUDO tee "$J/rabbit/rabbit.pid" >/dev/null
  fi
  step "rabbitmq: 127.0.0.1:$AMQP_PORT accepting after $(secs_since "$t0") (pid $pid)"
}

start_redis() {
  local pid t0
  if pid="$(live_pid "$J/redis.pid")" && port_open "$REDIS_PORT"; then
    step "redis: already running (pid $pid, 127.0.0.1:$REDIS_PORT)"
    return
  fi
  port_open "$REDIS_PORT" && die "127.0.0.1:$REDIS_PORT is taken by another process (pid $(listener_pid "$REDIS_PORT"))"
  mkdir -p "$J/redis"
  t0="$(now_ms)"
  setsid env -i PATH=/usr/bin:/bin redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
    --save '' --appendonly no --dir "$J/redis" --pidfile "$J/redis.pid" \
    > "$J/redis.out" 2>&1 < /dev/null &
  pid=$!
  wait_port redis "$REDIS_PORT" 20 "$pid"
  echo "$pid" > "$J/redis.pid"
  step "redis: 127.0.0.1:$REDIS_PORT accepting after $(secs_since "$t0") (pid $pid)"
}

start_jasmind() {
  local pid t0
  if pid="$(live_pid "$J/jasmind.pid")" && port_open "$SMPP_PORT" && port_open "$JCLI_PORT"; then
    step "jasmind: already running (pid $pid, SMPP 127.0.0.1:$SMPP_PORT, jcli $JCLI_PORT)"
    return
  fi
  [ -n "${pid:-}" ] && die "jasmind (pid $pid) runs but does not accept on $SMPP_PORT/$JCLI_PORT; run scripts/jasmin.sh stop"
  local p
  for p in "$SMPP_PORT" "$JCLI_PORT" "$ROUTER_PORT" "$SMPPCM_PORT" "$SMPP_PB_PORT" "$HTTP_PORT"; do
    port_open "$p" && die "127.0.0.1:$p is taken by another process (pid $(listener_pid "$p"))"
  done
  # jasmind refuses to start while /tmp/jasmind.lock exists (lockfile.FileLock, hard-coded);
  # a jasmind killed with SIGKILL leaves it behind. Remove it only when no jasmind runs at all.
  if [ -e /tmp/jasmind.lock ] && ! jasmind_running; then
    step "jasmind: removing the stale /tmp/jasmind.lock"
    rm -f /tmp/jasmind.lock
  fi
  mkdir -p "$J/log" "$J/store"
  t0="$(now_ms)"
  # env -i: Jasmin reads every option also from an environment variable SECTION_OPTION
  # (upper-cased, dashes as underscores), and a test environment full of SMPP_* variables
  # would reconfigure it (e.g. SMPP_SERVER_PORT).
  setsid env -i PATH=/usr/bin:/bin HOME="$J" LANG=C.UTF-8 LOG_PATH="$J/log" CONFIG_PATH="$J" \
    "$VENV/bin/python" "$VENV/bin/jasmind.py" -c "$J/jasmin.cfg" \
    --enable-dlr-thrower --enable-dlr-lookup --enable-deliver-thrower \
    > "$J/jasmind.out" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$J/jasmind.pid"
  wait_port "jasmind SMPP" "$SMPP_PORT" 30 "$pid"
  wait_port "jasmind jcli" "$JCLI_PORT" 30 "$pid"
  step "jasmind: SMPP 127.0.0.1:$SMPP_PORT and jcli $JCLI_PORT accepting after $(secs_since "$t0") (pid $pid)"
}

cmd_start() {
  local t0
  t0="$(now_ms)"
  [ -x "$VENV/bin/python" ] || die "no .venv-jasmin: run scripts/jasmin.sh install first"
  grep -q '_pdu\.response\.' "$(listeners_file)" \
    && die "listeners.py is not patched: run scripts/jasmin.sh install"
  command -v redis-server >/dev/null 2>&1 || die "redis-server not found: run scripts/jasmin.sh install"
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || die "rabbitmq-server not found: run scripts/jasmin.sh install"
  mkdir -p "$J/log" "$J/store"
  write_config
  start_rabbit
  start_redis
  # Jasmin connects to AMQP once at start and then retries only every 10 s: start it last.
  start_jasmind
  step "ready in $(secs_since "$t0"); ports in $J/env"
}

# ---------------------------------------------------------------------------------------- stop
# stop_pid NAME PID TIMEOUT_S [sudo]: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local name="$1" pid="$2" timeout="$3" s="${4:-}" t0
  t0="$(now_ms)"
  $s kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid"; do
    if [ $(($(now_ms) - t0)) -gt $((timeout * 1000)) ]; then
      step "$name: pid $pid still running after ${timeout} s; SIGKILL"
      $s kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
      break
    fi
    sleep 0.05
  done
  step "$name: stopped (pid $pid) in $(secs_since "$t0")"
}

cmd_stop() {
  local pid
  if pid="$(live_pid "$J/jasmind.pid")"; then
    stop_pid jasmind "$pid" 15
  else
    step "jasmind: not running"
  fi
  rm -f "$J/jasmind.pid"
  if [ -e /tmp/jasmind.lock ] && ! jasmind_running; then
    rm -f /tmp/jasmind.lock
  fi
  if pid="$(live_pid "$J/redis.pid")"; then
    stop_pid redis "$pid" 10
  else
    step "redis: not running"
  fi
  rm -f "$J/redis.pid"
  # RabbitMQ's VM (beam.smp) stops cleanly on SIGTERM.
  if pid="$(live_pid "$J/rabbit/rabbit.pid")"; then
    stop_pid rabbitmq "$pid" 30 "$SUDO"
  else
    step "rabbitmq: not running"
  fi
  $SUDO rm -f "$J/rabbit/rabbit.pid"
  # The epmd that RabbitMQ started on our own port (never the machine's default epmd).
  pid="$(listener_pid "$EPMD_PORT")"
  if [ -n "$pid" ] && grep -q epmd "/proc/$pid/comm" 2>/dev/null; then
    stop_pid epmd "$pid" 5 "$SUDO"
  fi
}

# -------------------------------------------------------------------------------------- status
cmd_status() {
  local ok=0 pid
  if pid="$(live_pid "$J/rabbit/rabbit.pid")" && port_open "$AMQP_PORT"; then
    echo "rabbitmq: running (pid $pid, 127.0.0.1:$AMQP_PORT)"
  else
    echo "rabbitmq: not running"; ok=1
  fi
  if pid="$(live_pid "$J/redis.pid")" && port_open "$REDIS_PORT"; then
    echo "redis:    running (pid $pid, 127.0.0.1:$REDIS_PORT)"
  else
    echo "redis:    not running"; ok=1
  fi
  if pid="$(live_pid "$J/jasmind.pid")" && port_open "$SMPP_PORT" && port_open "$JCLI_PORT"; then
    echo "jasmind:  running (pid $pid, SMPP 127.0.0.1:$SMPP_PORT, jcli $JCLI_PORT, http $HTTP_PORT)"
  else
    echo "jasmind:  not running"; ok=1
  fi
  pid="$(listener_pid "$EPMD_PORT")"
  [ -n "$pid" ] && echo "epmd:     running (pid $pid, port $EPMD_PORT)"
  echo "dir:      $J"
  return "$ok"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  restart) cmd_stop; cmd_start ;;
  *) echo "usage: $0 install|start|stop|status|restart  (JASMIN_DIR=${J})" >&2; exit 2 ;;
esac
