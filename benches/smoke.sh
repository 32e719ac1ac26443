#!/usr/bin/env bash
# CI smoke run of the load generator: builds (debug) and starts commhub on a free loopback port,
# runs `load --smoke` against it (1 room x 3 participants for a few seconds, every packet
# stamped and checked) and exits non-zero when nothing was forwarded or the server failed.
#
#   benches/smoke.sh            # from anywhere; prints the generator's table
#
# The server gets no configuration file and no COMMHUB_* variable from the environment, with
# recording off when the binary has it (the smoke run checks forwarding only).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p commhub -p commhub-benches --bin commhub --bin load
bin=target/debug/commhub
log=$(mktemp -t commhub-smoke.XXXXXX)

env_args=(env)
while IFS='=' read -r k _; do env_args+=(-u "$k"); done < <(env | grep '^COMMHUB_' || true)
if "$bin" --config /dev/null config 2>/dev/null | grep -q '^\[recording\]'; then
    env_args+=(COMMHUB_RECORDING__ENABLED=false)
fi
# The load generator joins without tokens; the database goes to a temporary directory.
dbdir=$(mktemp -d -t commhub-smoke-db.XXXXXX)
env_args+=(COMMHUB_AUTH__ENABLED=false COMMHUB_SIP__LISTEN=127.0.0.1:0 COMMHUB_DATABASE__SQLITE_PATH="$dbdir/commhub.db"
           COMMHUB_DATABASE__OUTBOX_PATH="$dbdir/outbox.jsonl")
# A media port range of its own, away from other runs on the machine.
lo=$((20000 + (RANDOM % 300) * 100))
"${env_args[@]}" "$bin" --config /dev/null --listen 127.0.0.1:0 --media-ports "$lo-$((lo + 99))" \
    --log-level warn >"$log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
    rm -rf "$dbdir"
}
trap cleanup EXIT

url=
for _ in $(seq 100); do
    url=$(grep -o 'ws://127\.0\.0\.1:[0-9]*/ws' "$log" | head -1 || true)
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$url" ]; then
    echo "smoke: commhub did not start:" >&2
    cat "$log" >&2
    exit 1
fi

rc=0
cargo run -q -p commhub-benches --bin load -- --smoke --url "$url" --server-pid "$pid" || rc=$?
if ! kill -0 "$pid" 2>/dev/null; then
    echo "smoke: commhub died during the run:" >&2
    cat "$log" >&2
    exit 1
fi
if [ $rc -ne 0 ]; then
    echo "smoke: the load generator failed ($rc); server log:" >&2
    cat "$log" >&2
    exit "$rc"
fi
echo "smoke: ok"
