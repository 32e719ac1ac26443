#!/usr/bin/env bash
# Where the server's CPU per forwarded packet goes: runs the load generator against commhub or
# Janus (same network namespace setup as compare.sh, server and generator on their own cores),
# samples the server with `perf record` in the steady state, counts its syscalls, and prints
# the inclusive share of a few code paths with their microseconds per forwarded packet.
#
#   benches/profile.sh [commhub|janus] [ROOMSxPARTICIPANTS] [SECONDS]   # default: commhub 2x10 8
#
# Environment: SERVER_BIN, LOAD_BIN, SERVER_CPUS [0], LOAD_CPUS [1], OUT [/tmp/commhub-profile-DATE].
# Needs perf (linux-perf), root (unshare -n) and, for janus, the janus package. The perf data
# stays in OUT for `perf report -i OUT/perf.data`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${PROFILE_IN_NETNS:-}" ]; then
    command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
    exec unshare -n env PROFILE_IN_NETNS=1 "$0" "$@"
fi
target=${1:-commhub}
scenario=${2:-2x10}
secs=${3:-8}
SERVER_BIN=${SERVER_BIN:-$root/target/release/commhub}
LOAD_BIN=${LOAD_BIN:-$root/target/release/load}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
OUT=${OUT:-/tmp/commhub-profile-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

ip link set lo up
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true
ip link add prf0 type veth peer name prf1
ip addr add 127.0.0.1/32 dev prf0
ip link set prf0 up
ip link set prf1 up
ip route add 224.0.0.0/4 dev prf0

if [ "$target" = commhub ]; then
    env_args=(env)
    while IFS='=' read -r k _; do env_args+=(-u "$k"); done < <(env | grep '^COMMHUB_' || true)
    if "$SERVER_BIN" --config /dev/null config 2>/dev/null | grep -q '^\[recording\]'; then
        env_args+=(COMMHUB_RECORDING__ENABLED=false)
    fi
    # The load generator joins without tokens; the database goes to the run's directory.
    env_args+=(COMMHUB_AUTH__ENABLED=false COMMHUB_SIP__LISTEN=127.0.0.1:0 COMMHUB_DATABASE__SQLITE_PATH="$OUT/commhub.db"
               COMMHUB_DATABASE__OUTBOX_PATH="$OUT/outbox.jsonl")
    "${env_args[@]}" taskset -c "$SERVER_CPUS" "$SERVER_BIN" --config /dev/null \
        --listen 127.0.0.1:18080 --media-ports 40000-44999 --log-level warn >"$OUT/server.log" 2>&1 &
    pid=$!
    url=ws://127.0.0.1:18080/ws
    callgraph=(--call-graph dwarf,8192)
    sleep 1
else
    JANUS_CPUS=$SERVER_CPUS "$root/benches/janus.sh" start "$OUT/janus" 18188 45000-49999 >/dev/null
    pid=$(cat "$OUT/janus/janus.pid")
    url=ws://127.0.0.1:18188
    callgraph=(--call-graph fp)
fi
trap 'kill $pid 2>/dev/null || true; "$root/benches/janus.sh" stop "$OUT/janus" 2>/dev/null || true' EXIT

rooms=${scenario%x*}
parts=${scenario#*x}
ramp_secs=$(( rooms * parts / 10 + 4 ))
taskset -c "$LOAD_CPUS" "$LOAD_BIN" --target "$target" --url "$url" --server-pid "$pid" \
    --rooms "$rooms" --participants "$parts" --ramp 10 --warmup 2 \
    --duration $(( secs * 2 + 6 )) --json "$OUT/load.json" >"$OUT/load.txt" 2>"$OUT/load.log" &
lpid=$!
sleep "$ramp_secs"
perf record -F 1999 -g "${callgraph[@]}" -o "$OUT/perf.data" -p "$pid" -- sleep "$secs" 2>"$OUT/perf-record.log"
events=$(for s in sendto sendmsg sendmmsg recvfrom recvmsg recvmmsg poll epoll_wait futex read write; do
    printf 'syscalls:sys_enter_%s,' "$s"; done)
perf stat -x, -e "${events%,}" -p "$pid" -- sleep "$secs" 2>"$OUT/syscalls.csv"
wait "$lpid" || true
cat "$OUT/load.txt"
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none 2>/dev/null | grep '%' >"$OUT/children.txt" || true
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' >"$OUT/dso.txt" || true

python3 - "$OUT" "$target" "$secs" <<'EOF'
import json, re, sys
out, target, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
load = json.load(open(f"{out}/load.json"))
st = load["steady"]
us = st.get("server_cpu_us_per_forwarded_packet") or 0.0
fwd = st.get("forwarded_pps") or 0.0
print(f"\n{target}: {fwd:.0f} forwarded pkt/s, {us:.2f} us of server CPU per forwarded packet "
      f"(measured while perf was sampling part of the time)")
inclusive = {}
for line in open(f"{out}/children.txt"):
    m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+\[(.)\]\s+(.*)", line)
    if m:
        sym = m.group(4).strip()
        inclusive[sym] = max(inclusive.get(sym, 0.0), float(m.group(1)))
paths = {
    "commhub": [
        ("UDP send syscalls (sendmsg; on loopback it includes delivery to the receiver)", r"^__libc_sendmsg$|^__send$|^sendmsg$"),
        ("UDP receive syscalls (recvmmsg)", r"^__recvmmsg$|recvmmsg_syscall"),
        ("epoll_wait (tokio parking)", r"^epoll_wait$"),
        ("webrtc-rs write path: RTCPeerConnection::flush_writes (interceptors, SRTP, marshal)", r"RTCPeerConnection>::flush_writes$"),
        ("  of which the interceptor chain", r"^<rtc_interceptor::chain::Chain as sansio::Protocol"),
        ("  of which SRTP encryption", r"rtc_srtp::context::Context>::encrypt_rtp$"),
        ("webrtc-rs read path: PeerConnectionDriver::handle_read", r"PeerConnectionDriver<A>::handle_read"),
        ("  of which SRTP decryption", r"rtc_srtp::context::Context>::decrypt_rtp"),
        ("commhub subscriber writer task (route, rewrite, write_rtp hand-off)", r"^media::sfu::writer_task::\{\{closure\}\}$"),
        ("commhub publisher read loop (fan_out)", r"^media::sfu::read_loop::\{\{closure\}\}$"),
        ("memmove/memcpy (self)", r"^__memmove_avx_unaligned_erms$|^__memcpy"),
    ],
    "janus": [
        ("UDP send syscalls (sendmsg via libnice)", r"^__libc_sendmsg$|^sendmsg$|^__sendmsg"),
        ("UDP receive syscalls (recvmsg)", r"^__libc_recvmsg$|^recvmsg$|^__recvmsg"),
        ("poll (glib main loops, one per handle)", r"^__poll$|^poll$"),
        ("SRTP encryption (libsrtp srtp_protect)", r"^srtp_protect"),
        ("SRTP decryption (libsrtp srtp_unprotect)", r"^srtp_unprotect"),
    ],
}[target]
print(f"\n{'inclusive share of server CPU':88} {'%':>6} {'us/pkt':>7}")
for label, pat in paths:
    pct = max([v for k, v in inclusive.items() if re.search(pat, k)] or [0.0])
    print(f"{label:88} {pct:6.1f} {pct / 100 * us:7.2f}")
print("\nself time by binary/library:")
for line in open(f"{out}/dso.txt"):
    m = re.match(r"\s*([\d.]+)%\s+(.*)", line)
    if m and float(m.group(1)) >= 1.0:
        print(f"  {m.group(2).strip():40} {float(m.group(1)):6.1f}%  {float(m.group(1)) / 100 * us:6.2f} us/pkt")
print("\nsyscalls per second, and per forwarded packet:")
for line in open(f"{out}/syscalls.csv"):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].strip().isdigit() and int(f[0]) > 0:
        n = int(f[0]) / secs
        print(f"  {f[2].replace('syscalls:sys_enter_', ''):12} {n:9.0f}/s  {n / max(fwd, 1):5.2f}")
print(f"\nperf data: {out}/perf.data")
EOF
