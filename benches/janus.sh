#!/usr/bin/env bash
# Start or stop a Janus (Debian package `janus`) for the load generator, from a config generated
# into a directory: loopback only (ICE gathers on `lo` only, no NAT mapping, no STUN, no IPv6),
# the VideoRoom plugin and the WebSocket transport alone, no default rooms (the generator
# creates audio-only Opus rooms), logging at warnings.
#
#   benches/janus.sh start DIR [WS_PORT] [RTP_MIN-RTP_MAX]   # prints the pid; ws://127.0.0.1:WS_PORT
#   benches/janus.sh stop DIR
#
# Extra janus flags can be passed in JANUS_ARGS; JANUS_CPUS pins it with taskset (e.g. "0");
# JANUS_EVENT_LOOPS=N makes handles share N static event loops (threads) instead of Janus's
# default of one loop thread per handle.
set -euo pipefail

cmd=${1:?usage: janus.sh start|stop DIR [WS_PORT] [RTP_MIN-RTP_MAX]}
dir=${2:?usage: janus.sh start|stop DIR [WS_PORT] [RTP_MIN-RTP_MAX]}

if [ "$cmd" = stop ]; then
    if [ -f "$dir/janus.pid" ]; then
        pid=$(cat "$dir/janus.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/janus.pid"
    fi
    exit 0
fi
[ "$cmd" = start ] || { echo "unknown command $cmd" >&2; exit 2; }

ws_port=${3:-8188}
rtp_range=${4:-32000-32999}
command -v janus >/dev/null || { echo "janus is not installed (apt-get install -y janus)" >&2; exit 1; }
lib=$(dirname "$(dirname "$(find /usr/lib -name libjanus_videoroom.so -path '*janus/plugins*' | head -1)")")
[ -d "$lib/plugins" ] || { echo "no Janus plugins folder found under /usr/lib" >&2; exit 1; }
mkdir -p "$dir"
list() { (cd "$lib/$1" && ls -- *.so | grep -v -x "${2:-none}" | paste -sd, -); }

cat >"$dir/janus.jcfg" <<EOF
general: {
	configs_folder = "$dir"
	plugins_folder = "$lib/plugins"
	transports_folder = "$lib/transports"
	events_folder = "$lib/events"
	loggers_folder = "$lib/loggers"
	debug_level = 3
	session_timeout = 60
	server_name = "commhub-bench"
$( [ -n "${JANUS_EVENT_LOOPS:-}" ] && printf '\tevent_loops = %s\n' "$JANUS_EVENT_LOOPS" )
}
certificates: {
}
media: {
	ipv6 = false
	rtp_port_range = "$rtp_range"
}
nat: {
	nice_debug = false
	ice_enforce_list = "127.0.0.1"
	ignore_mdns = true
}
plugins: {
	disable = "$(list plugins libjanus_videoroom.so)"
}
transports: {
	disable = "$(list transports libjanus_websockets.so)"
}
loggers: {
	disable = "$(list loggers)"
}
events: {
	broadcast = false
	disable = "$(list events)"
}
EOF

cat >"$dir/janus.plugin.videoroom.jcfg" <<EOF
general: {
}
EOF

cat >"$dir/janus.transport.websockets.jcfg" <<EOF
general: {
	json = "plain"
	ws = true
	ws_port = $ws_port
	ws_ip = "127.0.0.1"
	wss = false
}
admin: {
	admin_ws = false
	admin_wss = false
}
EOF

pin=()
if [ -n "${JANUS_CPUS:-}" ]; then pin=(taskset -c "$JANUS_CPUS"); fi
# shellcheck disable=SC2086
"${pin[@]}" janus -C "$dir/janus.jcfg" -F "$dir" -o ${JANUS_ARGS:-} >"$dir/janus.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/janus.pid"
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$ws_port") 2>/dev/null; then
        echo "$pid"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
echo "Janus did not start; its log:" >&2
tail -30 "$dir/janus.log" >&2
exit 1
