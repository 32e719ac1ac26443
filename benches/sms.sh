#!/usr/bin/env bash
# SMS throughput through SMPP: commhub (release, SMS_MODE=SMPP, window 10) against the simulated
# SMSC (tests/sms/smsc.js, receipts 20 ms after each submit), driven open-loop by sms_load on
# POST /functions/v1/sms-send. Prints one JSON line per run: accepted rate, sms-send latency
# (p50/p99/max, from when each request was due), and how long after the load every message
# was `delivered` (receipts applied). Also commhub's CPU over the run.
#
#   benches/sms.sh [RATE] [SECONDS] [PARTS]     # default 500/s for 30 s, single-part
#   DB=postgres benches/sms.sh 500 30           # on PostgreSQL (COMMHUB_TEST_DATABASE_URL's server)
#   WINDOW=1 benches/sms.sh 500 10              # another SMPP window
#
# Needs node with tests/sms's npm packages (scripts/setup-test-deps.sh). The generator, the
# simulator and commhub share the machine's cores: compare runs made the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-500}
SECS=${2:-30}
PARTS=${3:-1}
cargo build -q --release -p commhub -p commhub-benches --bin commhub --bin sms_load

work=$(mktemp -d -t commhub-sms.XXXXXX)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SMPP_PORT=$(free_port); CTL_PORT=$(free_port); HTTP_PORT=$(free_port)
node tests/sms/smsc.js "$SMPP_PORT" "$CTL_PORT" >"$work/smsc.log" 2>&1 &
smsc=$!
trap 'kill $smsc ${pid:-} 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do grep -q ready "$work/smsc.log" 2>/dev/null && break; sleep 0.1; done
curl -s -X POST -H 'Content-Type: application/json' -d '{"receipt_delay_ms": 20}' "http://127.0.0.1:$CTL_PORT/mode" >/dev/null

db_args=()
if [ "${DB:-sqlite}" = postgres ]; then
  admin=${COMMHUB_TEST_DATABASE_URL:-postgres://commhub:commhub@127.0.0.1:5432/postgres}
  name="commhub_bench_$RANDOM$RANDOM"
  psql "$admin" -qc "CREATE DATABASE $name" >/dev/null
  db_args=(COMMHUB_DATABASE__URL="${admin%/*}/$name")
fi
env_args=(env)
while IFS='=' read -r k _; do env_args+=(-u "$k"); done < <(env | grep -E '^(COMMHUB_|SMS_|SMPP_|DATABASE_URL)' || true)
KEY=bench-key-0123456789
"${env_args[@]}" "${db_args[@]}" COMMHUB_RECORDING__ENABLED=false COMMHUB_AUTH__API_KEYS="[\"$KEY\"]" \
    COMMHUB_DATABASE__SQLITE_PATH="$work/commhub.db" COMMHUB_DATABASE__OUTBOX_PATH="$work/outbox.jsonl" \
    COMMHUB_SIP__ENABLED=false SMS_MODE=smpp SMPP_HOST=127.0.0.1 SMPP_PORT="$SMPP_PORT" \
    SMPP_SYSTEM_ID=bench SMPP_PASSWORD=bench COMMHUB_SMS__SMPP__WINDOW="${WINDOW:-10}" \
    COMMHUB_API__MAX_PAGE_SIZE=500 \
    target/release/commhub --config /dev/null --listen "127.0.0.1:$HTTP_PORT" --log-level warn \
    >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null | grep -q '^commhub_sms_bind_state_tx 2' && break
  sleep 0.1
done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks); s0=$(date +%s.%N)
target/release/sms_load --url "http://127.0.0.1:$HTTP_PORT" --key "$KEY" --rate "$RATE" \
    --seconds "$SECS" --parts "$PARTS" > "$work/result.json"
t1=$(ticks); s1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
cpu=$(python3 -c "print(round(($t1-$t0)/$hz/($s1-$s0), 2))")
python3 - "$work/result.json" "$cpu" "${DB:-sqlite}" "${WINDOW:-10}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["commhub_cpu_cores"] = float(sys.argv[2]); r["db"] = sys.argv[3]; r["window"] = int(sys.argv[4])
print(json.dumps(r))
PY
echo "server log (warnings and errors): $(grep -c . "$work/server.log") lines" >&2
head -5 "$work/server.log" >&2
