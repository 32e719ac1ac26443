#!/usr/bin/env bash
# PSTN legs per core: N rooms, each with one webrtc-rs participant (the `load` generator,
# publishing Opus) and one phone leg from sipp (PCMA at 30 ms ptime from its speech pcap, looped),
# both directions transcoded by commhub (PCMA -> Opus into the room; the room's Opus -> mix ->
# PCMA at 20 ms to the phone). Measures commhub's own CPU time (from /proc) over a window while
# every leg is up, and the legs' loss from commhub's counters.
#
#   benches/pstn.sh [LEGS] [SECONDS]      # default 60 legs, 20 s window; needs root (sipp's pcap)
#   PERF=1 benches/pstn.sh 60 10          # also sample commhub with perf and print its top symbols
#   OPUS_COMPLEXITY=1 benches/pstn.sh     # sip.opus_complexity for the legs (default 3, as shipped)
#
# Prints one line: legs, server CPU (cores), legs per core, uplink loss (frames concealed or
# late / frames received), downlink delivery (packets sent / packets due at 20 ms). Recording is
# off (the recorder's cost is in BENCHMARKS.md separately). The generator and sipp run on the
# same machine and compete for its cores: compare runs made the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-60}
WINDOW=${2:-20}

command -v sipp >/dev/null || { echo "pstn.sh: sipp is missing (apt-get install sip-tester)" >&2; exit 1; }
cargo build -q --release -p commhub -p commhub-benches --bin commhub --bin load

work=$(mktemp -d -t commhub-pstn.XXXXXX)
ln -s /usr/share/sip-tester "$work/pcap"
free_port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SIP_PORT=$(free_port)
lo=$((20000 + (RANDOM % 100) * 100))
env_args=(env)
while IFS='=' read -r k _; do env_args+=(-u "$k"); done < <(env | grep '^COMMHUB_' || true)
"${env_args[@]}" COMMHUB_RECORDING__ENABLED=false COMMHUB_AUTH__ENABLED=false \
    COMMHUB_DATABASE__SQLITE_PATH="$work/commhub.db" COMMHUB_DATABASE__OUTBOX_PATH="$work/outbox.jsonl" \
    COMMHUB_SIP__LISTEN="127.0.0.1:$SIP_PORT" COMMHUB_SIP__RTP_PORT_MIN=$((lo + 5000)) \
    COMMHUB_SIP__RTP_PORT_MAX=$((lo + 5000 + N + 50)) COMMHUB_SIP__INVITES_PER_SEC_PER_SOURCE=1000 \
    COMMHUB_MEDIA__MAX_PARTICIPANTS_PER_ROOM=8 COMMHUB_SIP__OPUS_COMPLEXITY="${OPUS_COMPLEXITY:-3}" \
    target/release/commhub --config /dev/null --listen 127.0.0.1:0 \
    --media-ports "$lo-$((lo + 2 * N + 50))" --log-level warn >"$work/server.log" 2>&1 &
pid=$!
gen=
sp=
cleanup() {
    [ -n "$sp" ] && kill "$sp" 2>/dev/null || true
    [ -n "$gen" ] && kill "$gen" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
url=
for _ in $(seq 100); do
    url=$(grep -o 'ws://127\.0\.0\.1:[0-9]*/ws' "$work/server.log" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { echo "pstn.sh: commhub did not start" >&2; cat "$work/server.log" >&2; exit 1; }
http=${url%/ws}
http=${http/ws:/http:}

# The WebRTC side: one publishing participant per room, for longer than the whole run.
target/release/load --url "$url" --rooms "$N" --participants 1 --ramp 20 --warmup 1 \
    --duration $((WINDOW + 90)) >"$work/load.log" 2>&1 &
gen=$!
echo "pstn.sh: waiting for $N rooms" >&2
for _ in $(seq 600); do
    n=$(curl -s "$http/api/v1/calls?status=active&limit=500" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for c in d.get("calls",[]) if c["room"].startswith("load-")))' 2>/dev/null || echo 0)
    [ "$n" -ge "$N" ] && break
    sleep 0.5
done
curl -s "$http/api/v1/calls?status=active&limit=500" | python3 -c '
import json,sys
d=json.load(sys.stdin)
print("SEQUENTIAL")
for c in d["calls"]:
    if c["room"].startswith("load-"):
        print(c["id"] + ";")' >"$work/calls.csv"
echo "pstn.sh: placing $(($(wc -l <"$work/calls.csv") - 1)) phone legs" >&2
(cd "$work" && sipp "127.0.0.1:$SIP_PORT" -sf "$OLDPWD/benches/sip/uac_pcap_loop.xml" -inf calls.csv \
    -i 127.0.0.1 -mi 127.0.0.1 -mp $((lo + 8000)) -l "$N" -m "$N" -r 20 -nostdin -bg \
    -trace_err >/dev/null 2>&1) || true
sp=$(pgrep -n sipp || true)

metric() { curl -s "$http/metrics" | awk -v m="$1" '$1==m {print $2}'; }
for _ in $(seq 200); do
    [ "$(metric commhub_pstn_legs)" -ge "$N" ] 2>/dev/null && break
    sleep 0.2
done
legs=$(metric commhub_pstn_legs)
sleep 2
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
c0=$(cpu); in0=$(metric commhub_pstn_rtp_in_total); out0=$(metric commhub_pstn_rtp_out_total)
miss0=$(metric commhub_pstn_jitter_missing_total); late0=$(metric commhub_pstn_jitter_late_total)
t0=$(date +%s.%N)
if [ -n "${PERF:-}" ]; then
    # PERF=1: sample the server during the window and print where its time goes.
    perf record -q -g -p "$pid" -o "$work/perf.data" -- sleep "$WINDOW" >/dev/null 2>&1
else
    sleep "$WINDOW"
fi
c1=$(cpu); in1=$(metric commhub_pstn_rtp_in_total); out1=$(metric commhub_pstn_rtp_out_total)
miss1=$(metric commhub_pstn_jitter_missing_total); late1=$(metric commhub_pstn_jitter_late_total)
t1=$(date +%s.%N)
legs_end=$(metric commhub_pstn_legs)
python3 - "$legs" "$legs_end" "$c0" "$c1" "$ticks" "$t0" "$t1" "$in0" "$in1" "$out0" "$out1" "$miss0" "$miss1" "$late0" "$late1" <<'PY'
import sys
legs, legs_end, c0, c1, tck, t0, t1, i0, i1, o0, o1, m0, m1, l0, l1 = map(float, sys.argv[1:])
secs = t1 - t0
cores = (c1 - c0) / tck / secs
rx = i1 - i0
lost = (m1 - m0) + (l1 - l0)
due = legs * secs * 50
print(f"legs {int(legs)} (at the end {int(legs_end)}), window {secs:.1f} s: commhub CPU {cores:.2f} cores, "
      f"{legs / cores if cores else float('inf'):.0f} legs per core; uplink loss {100 * lost / max(rx, 1):.2f} % "
      f"({int(lost)} of {int(rx)} frames); downlink {100 * (o1 - o0) / max(due, 1):.1f} % of packets due")
PY
if [ -n "${PERF:-}" ]; then
    perf report -i "$work/perf.data" --no-children --sort symbol --percent-limit 1.5 --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -40
fi
