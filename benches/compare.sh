#!/usr/bin/env bash
# commhub and Janus (VideoRoom, audio only) under identical load on this machine, one after the
# other, and the ratios. The headline figure is server CPU per forwarded packet. The floor (a null
# forwarder, benches/src/bin/floor.rs: recv + one sendto per destination, no crypto) carries the
# same traffic in the same window, as the cheapest data path to compare both with.
#
#   benches/compare.sh [SCENARIO...]      SCENARIO = ROOMSxPARTICIPANTS, default: 1x10 5x10
#
# Environment (defaults in brackets):
#   DURATION [30] seconds measured per run, WARMUP [3], RAMP [10] participants/s
#   SERVER_CPUS [0] and LOAD_CPUS [1]: taskset CPU lists for the server and the generator, so
#     each has its own core and the generator's CPU never counts as the server's
#   RECORDING [false when the binary has recording]: sets COMMHUB_RECORDING__ENABLED for
#     commhub; false measures pure forwarding, like Janus, which records nothing. `default`
#     leaves the binary's own default.
#   REPEAT [1]: run every scenario this many times (the order of the servers alternates);
#     the summary shows medians and each repetition's CPU ratio
#   FLOOR [1]: also run the floor (`floor`, plain-UDP participants from `load --target floor`);
#     0 leaves its column empty. FLOOR_BIN [floor next to LOAD_BIN]
#   LIGHT [0]: 1 runs the generator with --light for commhub and Janus alike: the same webrtc-rs
#     joins, then every participant's SRTP sent and received on one thread of its own
#     (benches/src/light.rs), so the generator needs a fraction of a core per packet
#   CAPACITY [0]: 1 also runs --find-capacity on CAPACITY_TARGETS [commhub janus] (STEP_ROOMS
#     [2] rooms of the scenario's size per step, STEP_SECS [10], MAX_LOSS_PCT [1], MAX_P99_MS [50])
#   QUIET_PCT [10], QUIET_WAIT [600]: before each run, wait up to QUIET_WAIT seconds for the
#     machine's CPU pressure (PSI some avg10: share of time a task waited for a CPU) to fall
#     under QUIET_PCT %, so other work on a shared machine disturbs the figures less; each
#     report carries the pressure measured during its window
#   JANUS_EVENT_LOOPS [unset]: Janus `event_loops` (static loop threads shared by handles)
#   SERVER_BIN [target/release/commhub] (SERVER_COMMIT: the commit it was built from), LOAD_BIN [target/release/load], SKIP_BUILD [0]
#   (no COMMHUB_* variable is passed to the server but the recording one: commhub reads them
#   all as configuration)
#   OUT [/tmp/commhub-compare-DATE]: JSON reports, PNG plots, server logs, summary.txt
#
# Everything runs in a private network namespace (unshare -n, so root is needed) holding `lo`
# and a veth pair whose only address is 127.0.0.1/32: Janus (libnice) never gathers candidates
# on a loopback-flagged interface, and this gives it one with 127.0.0.1 and nothing else. No
# packet can leave the namespace; every socket of the servers and the generator is on 127.0.0.1.
# Requires: apt-get install -y janus; python3 for the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ -z "${COMPARE_IN_NETNS:-}" ]; then
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        cargo build --release -p commhub -p commhub-benches >&2
    fi
    command -v janus >/dev/null || { echo "janus is not installed: apt-get install -y janus" >&2; exit 1; }
    exec unshare -n env COMPARE_IN_NETNS=1 "$0" "$@"
fi

# Inside the namespace.
ip link set lo up
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true
ip link add cmp0 type veth peer name cmp1
ip addr add 127.0.0.1/32 dev cmp0
ip link set cmp0 up
ip link set cmp1 up
# webrtc-rs opens an mDNS socket per peer connection by default (commhub's server side does):
# give multicast a route that stays in the namespace.
ip route add 224.0.0.0/4 dev cmp0

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(1x10 5x10)
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-3}
RAMP=${RAMP:-10}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
SERVER_BIN=${SERVER_BIN:-$root/target/release/commhub}
RECORDING=${RECORDING:-}
if [ -z "$RECORDING" ] && "$SERVER_BIN" --config /dev/null config 2>/dev/null | grep -q '^\[recording\]'; then
    RECORDING=false
fi
[ "$RECORDING" = default ] && RECORDING=
CAPACITY=${CAPACITY:-0}
LOAD_BIN=${LOAD_BIN:-$root/target/release/load}
FLOOR=${FLOOR:-1}
FLOOR_BIN=${FLOOR_BIN:-$(dirname "$LOAD_BIN")/floor}
LIGHT=${LIGHT:-0}
light_args=()
[ "$LIGHT" = 1 ] && light_args=(--light)
OUT=${OUT:-/tmp/commhub-compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$root" status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
# A server binary from elsewhere: say which commit it was built from with SERVER_COMMIT.
if [ "$SERVER_BIN" != "$root/target/release/commhub" ]; then
    commit="${SERVER_COMMIT:-unknown (SERVER_BIN given)} (generator: $commit"
    dirty="$dirty)"
fi
cat >"$OUT/machine.txt" <<EOF
date: $(date -u +%Y-%m-%dT%H:%M:%SZ)
commit: $commit$dirty
commhub binary: $SERVER_BIN
nproc: $(nproc)
cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
janus: $(janus --version 2>/dev/null | head -1), event loops: ${JANUS_EVENT_LOOPS:-one per handle (default)}
server cpus: $SERVER_CPUS, generator cpus: $LOAD_CPUS
generator: $([ "$LIGHT" = 1 ] && echo "light (webrtc-rs joins, SRTP on one thread)" || echo "webrtc-rs"); floor: $([ "$FLOOR" = 1 ] && echo "$FLOOR_BIN" || echo "not run")
commhub recording: ${RECORDING:-binary default (the binary may have none)}
load average before: $(cut -d' ' -f1-3 /proc/loadavg)
EOF
cat "$OUT/machine.txt" >&2

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
    "$root/benches/janus.sh" stop "$OUT/janus" || true
}
trap stop_server EXIT

wait_quiet() {
    local t=0 p
    while :; do
        p=$(awk '/^some/ { sub("avg10=", "", $2); print int($2) }' /proc/pressure/cpu 2>/dev/null || echo 0)
        [ "${p:-0}" -lt "${QUIET_PCT:-10}" ] && return 0
        [ "$t" -ge "${QUIET_WAIT:-600}" ] && { echo "warning: the machine stays busy (cpu pressure ${p}%)" >&2; return 0; }
        [ "$t" -eq 0 ] && echo "waiting for the machine to quieten (cpu pressure ${p}%)..." >&2
        sleep 5
        t=$((t + 5))
    done
}

# run TARGET NAME LOAD_ARGS...
run() {
    wait_quiet
    local target=$1 name=$2
    shift 2
    local url
    if [ "$target" = commhub ]; then
        local env=(env)
        while IFS='=' read -r k _; do env+=(-u "$k"); done < <(env | grep '^COMMHUB_' || true)
        [ -n "$RECORDING" ] && env+=(COMMHUB_RECORDING__ENABLED="$RECORDING")
        # The load generator joins without tokens; the database goes to the run's directory.
        env+=(COMMHUB_AUTH__ENABLED=false COMMHUB_SIP__LISTEN=127.0.0.1:0 COMMHUB_DATABASE__SQLITE_PATH="$OUT/$name.db"
              COMMHUB_DATABASE__OUTBOX_PATH="$OUT/$name.outbox.jsonl")
        "${env[@]}" taskset -c "$SERVER_CPUS" "$SERVER_BIN" --config /dev/null --listen 127.0.0.1:18080 --media-ports 40000-44999 \
            --log-level warn >"$OUT/$name.server.log" 2>&1 &
        server_pid=$!
        wait_port 18080 || { echo "commhub did not start" >&2; cat "$OUT/$name.server.log" >&2; exit 1; }
        url=ws://127.0.0.1:18080/ws
    elif [ "$target" = floor ]; then
        taskset -c "$SERVER_CPUS" "$FLOOR_BIN" --listen 127.0.0.1:18090 >"$OUT/$name.server.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 100); do
            grep -q listening "$OUT/$name.server.log" 2>/dev/null && break
            sleep 0.1
        done
        grep -q listening "$OUT/$name.server.log" || { echo "floor did not start" >&2; cat "$OUT/$name.server.log" >&2; exit 1; }
        url=udp://127.0.0.1:18090
    else
        JANUS_CPUS=$SERVER_CPUS "$root/benches/janus.sh" start "$OUT/janus" 18188 45000-49999 >/dev/null
        server_pid=$(cat "$OUT/janus/janus.pid")
        url=ws://127.0.0.1:18188
    fi
    echo "== $name ($target) ==" >&2
    local rc=0
    taskset -c "$LOAD_CPUS" "$LOAD_BIN" --target "$target" --url "$url" --server-pid "$server_pid" \
        --ramp "$RAMP" --warmup "$WARMUP" --json "$OUT/$name.json" --plot "$OUT/$name.png" \
        ${light_args[@]+"${light_args[@]}"} "$@" 2>"$OUT/$name.load.log" | tee "$OUT/$name.table.txt" || rc=$?
    if [ "$target" = janus ]; then cp "$OUT/janus/janus.log" "$OUT/$name.server.log" || true; fi
    stop_server
    [ $rc -eq 0 ] || echo "warning: $name: the generator exited with $rc (see $OUT/$name.load.log)" >&2
    sleep 2
}

REPEAT=${REPEAT:-1}
for r in $(seq "$REPEAT"); do
    for s in "${scenarios[@]}"; do
        rooms=${s%x*}
        parts=${s#*x}
        # Alternate which server goes first, so a drift of the machine does not favour one.
        # The floor runs in the same window: last, then first.
        if [ $((r % 2)) -eq 1 ]; then
            order=(commhub janus)
            [ "$FLOOR" = 1 ] && order+=(floor)
        else
            order=(janus commhub)
            [ "$FLOOR" = 1 ] && order=(floor janus commhub)
        fi
        suffix=
        [ "$REPEAT" -gt 1 ] && suffix="-r$r"
        for target in "${order[@]}"; do
            label="recording ${RECORDING:-default}"
            [ "$target" = janus ] && label="videoroom audio-only"
            [ "$target" = floor ] && label="null forwarder"
            run "$target" "$target-$s$suffix" --rooms "$rooms" --participants "$parts" \
                --duration "$DURATION" --label "$label"
        done
    done
done
if [ "$CAPACITY" = 1 ]; then
    s=${scenarios[0]}
    parts=${s#*x}
    for target in ${CAPACITY_TARGETS:-commhub janus}; do
        run "$target" "$target-capacity-x$parts" --find-capacity --rooms "${STEP_ROOMS:-2}" \
            --step-rooms "${STEP_ROOMS:-2}" --participants "$parts" --step-secs "${STEP_SECS:-10}" \
            --max-loss-pct "${MAX_LOSS_PCT:-1}" --max-p99-ms "${MAX_P99_MS:-50}"
    done
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

python3 - "$OUT" "${scenarios[@]}" <<'EOF' | tee "$OUT/summary.txt"
import glob, json, os, statistics, sys
out, scenarios = sys.argv[1], sys.argv[2:]
def reports(target, s):
    files = sorted(glob.glob(os.path.join(out, f"{target}-{s}.json")) +
                   glob.glob(os.path.join(out, f"{target}-{s}-r*.json")))
    return [json.load(open(f)) for f in files]
def get(r, *path):
    for k in path:
        if r is None:
            return None
        r = r.get(k)
    return r
def median(rs, path, scale=1.0):
    v = [get(r, *path) for r in rs]
    v = [x * scale for x in v if x is not None]
    return statistics.median(v) if v else None
# (label, path, digits, better, scale): the ratio is always "times better for commhub".
rows = [
    ("forwarded pkt/s", ("steady", "forwarded_pps"), 0, None, 1),
    ("loss %", ("steady", "loss"), 3, "low", 100),
    ("latency p50 ms", ("steady", "latency_ms", "p50"), 2, "low", 1),
    ("latency p99 ms", ("steady", "latency_ms", "p99"), 2, "low", 1),
    ("latency max ms", ("steady", "latency_ms", "max"), 2, "low", 1),
    ("join p50 ms", ("join_ms", "p50"), 0, "low", 1),
    ("join p99 ms", ("join_ms", "p99"), 0, "low", 1),
    ("server CPU % of a core", ("steady", "server_cpu_pct_of_one_core"), 1, "low", 1),
    ("server us CPU per packet", ("steady", "server_cpu_us_per_forwarded_packet"), 2, "low", 1),
    ("server pkt/s per core", ("steady", "server_pps_per_core"), 0, "high", 1),
    ("server RSS MB", ("server_rss_mb",), 1, "low", 1),
    ("RSS MB per participant", ("server_rss_mb_per_participant",), 2, "low", 1),
    ("generator CPU % of a core", ("steady", "generator_cpu_pct_of_one_core"), 1, None, 1),
    ("generator us CPU per packet", ("steady", "generator_cpu_us_per_forwarded_packet"), 2, None, 1),
    ("machine CPU pressure %", ("steady", "machine_cpu_pressure_pct"), 1, None, 1),
    ("machine CPU steal %", ("steady", "machine_cpu_steal_pct"), 1, None, 1),
]
print(open(os.path.join(out, "machine.txt")).read())
for s in scenarios:
    c, j, fl = reports("commhub", s), reports("janus", s), reports("floor", s)
    if not c or not j:
        print(f"{s}: missing report(s)")
        continue
    n = min(len(c), len(j))
    print(f"{s.replace('x', ' room(s) x ')} participants, 50 pkt/s each, "
          f"{get(c[0], 'steady', 'seconds'):.0f} s measured, {n} run(s) each"
          f"{' (medians)' if n > 1 else ''}; joined commhub {[r['joined'] for r in c]} "
          f"janus {[r['joined'] for r in j]}, failed {[r['failed'] for r in c]} / {[r['failed'] for r in j]}"
          + (f"; floor joined {[r['joined'] for r in fl]}" if fl else ""))
    print(f"  generator: {c[0].get('generator', 'webrtc-rs')}")
    # The floor columns: its value, and commhub's and Janus's as multiples of it.
    print(f"  {'':28} {'commhub':>10} {'janus':>10} {'commhub better by':>18}"
          f" {'floor':>10} {'commhub/floor':>14} {'janus/floor':>12}")
    for label, path, d, better, scale in rows:
        a, b = median(c, path, scale), median(j, path, scale)
        f = median(fl, path, scale) if fl else None
        fa = "-" if a is None else f"{a:.{d}f}"
        fb = "-" if b is None else f"{b:.{d}f}"
        ff = "-" if f is None else f"{f:.{d}f}"
        ratio = ""
        if better and a and b:
            ratio = f"{(b / a if better == 'low' else a / b):.2f}x"
        # No ratio to a floor figure that rounds to 0 (its RSS growth per participant).
        fz = f is None or float(ff) == 0
        rcf = f"{a / f:.2f}x" if better and a and not fz else ""
        rjf = f"{b / f:.2f}x" if better and b and not fz else ""
        print(f"  {label:28} {fa:>10} {fb:>10} {ratio:>18} {ff:>10} {rcf:>14} {rjf:>12}")
    if n > 1:
        per = []
        for rc, rj in zip(c, j):
            uc = get(rc, "steady", "server_cpu_us_per_forwarded_packet")
            uj = get(rj, "steady", "server_cpu_us_per_forwarded_packet")
            if uc and uj:
                per.append(f"{uc:.1f}/{uj:.1f}={uj / uc:.2f}x")
        print(f"  us per packet, commhub/janus, each run: {', '.join(per)}")
        if fl:
            uf = [get(r, "steady", "server_cpu_us_per_forwarded_packet") for r in fl]
            print(f"  us per packet, floor, each run: {', '.join('-' if u is None else f'{u:.2f}' for u in uf)}")
    print()
for t in ("commhub", "janus", "floor"):
    for f in sorted(os.listdir(out)):
        if f.startswith(t + "-capacity") and f.endswith(".json"):
            r = json.load(open(os.path.join(out, f)))
            cap = r.get("capacity") or {}
            print(f"capacity {t}: {cap.get('participants')} participants, "
                  f"{cap.get('forwarded_pps') or 0:.0f} forwarded pkt/s, server CPU "
                  f"{cap.get('server_cpu_pct_of_one_core') or 0:.0f}% (stopped: {r.get('capacity_stop_reason')})")
print(f"reports, plots and logs: {out}")
EOF
