#!/usr/bin/env python3
"""commhub /ws protocol client (aiortc): join a room, publish a sine tone, record everyone.

  ws_client.py --url ws://127.0.0.1:PORT/ws --room R --name N --role agent|customer|... \
      --tone HZ --duration SECONDS [--record OUT.wav] [--token T] [--join-delay S] \
      [--leave-after S] [--expect-peers N] [--amplitude A] [--no-publish] [-v]

Timeline: connect, wait for `welcome`, sleep --join-delay, `join`, publish (offer with the
full candidate list: aiortc does not trickle), answer every `subscribe_offer` (including
renegotiations), stay --duration seconds after `joined`, `leave` (wait for `left`), close.
With --leave-after S (< duration) the client sends `leave` S seconds after `joined` and keeps
the WebSocket open (pinging) until --duration is over. SIGTERM/SIGINT end the run early
(still leaving cleanly and printing the result).

Every received remote track is recorded per participant id (the track's stream id, or the
`tracks` list of the offer): OUT-<participant_id>.wav for each, and OUT.wav for the first one
that delivered audio. Mono 16-bit 48 kHz.

stdout gets exactly one JSON line:
  {"participant_id": str|null, "room": str, "peers_seen": [ids], "peers_left": [ids],
   "received": {id: {"samples", "seconds", "dominant_hz", "rms"}},
   "errors": [{"code", "message", "in_reply_to"}...],
   "files": {id: path}, "subscribe_offers": [revisions], "levels_max": {id: level},
   "active_speakers": [ids], "publish_state": str, "subscribe_state": str|null,
   "frames_sent": int, "connected_ms": {"publish"|"subscribe": ms},
   "first_audio_ms": {id: ms}}   (ms after opening the WebSocket)
dominant_hz is the FFT peak of the audio after its first 0.5 s (null for silence).
Logs go to stderr.

Exit status: 0 fine; 1 protocol/connection errors (any `error` or `bye` from the server,
timeouts, the socket closing early, negotiation failures); 3 fewer than --expect-peers peers
delivered audio (>= 0.2 s each) and nothing else went wrong (a "missing_audio" entry is then
added to "errors"); 2 bad command line.

All media stays on loopback: no ICE servers, host candidates on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from analyze import summarize, write_wav  # noqa: E402
from rtc_common import (  # noqa: E402
    AudioSink,
    ToneTrack,
    new_peer_connection,
    parse_candidate,
    restrict_to_loopback,
    sdp_candidate_addresses,
)

from aiortc import RTCSessionDescription  # noqa: E402
from aiortc.sdp import SessionDescription  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

log = logging.getLogger("commhub.ws")

STEP_TIMEOUT = 10.0  # seconds for welcome / joined / publish_answer / left
MIN_AUDIO_SECONDS = 0.2


class ProtocolFailure(Exception):
    pass


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ws = None
        self.participant_id: Optional[str] = None
        self.peers_seen: list[str] = []
        self.peers_left: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.subscribe_offers: list[int] = []
        self.levels_max: dict[str, float] = {}
        self.active_speakers: list[str] = []
        self.keepalive_secs = 10.0
        self.pub_pc = None
        self.sub_pc = None
        self.tone: Optional[ToneTrack] = None
        self.sink = AudioSink()
        # Join timing: monotonic time the WebSocket was opened, and when each connection
        # reached `connected` (first audio per peer is in the sink).
        self.t_connect = time.monotonic()
        self.connected_at: dict[str, float] = {}
        self.mid_pid: dict[str, str] = {}  # subscribe transceiver mid -> participant id
        self.pending: dict[str, list] = {"publish": [], "subscribe": []}
        self.welcome = asyncio.Event()
        self.joined = asyncio.Event()
        self.published = asyncio.Event()
        self.left = asyncio.Event()
        self.abort = asyncio.Event()  # fatal: stop waiting for anything
        self.stop = asyncio.Event()  # SIGTERM / SIGINT
        self.closing = False
        # Set once `leave` is sent: offers that crossed it on the wire are stale, not errors.
        self.leaving = False
        self.ping_id = 0

    # ---------------------------------------------------------------- helpers

    def error(self, code: str, message: str, in_reply_to: Optional[str] = None, fatal: bool = False) -> None:
        log.error("%s: %s%s", code, message, f" (in reply to {in_reply_to})" if in_reply_to else "")
        self.errors.append({"code": code, "message": message, "in_reply_to": in_reply_to})
        if fatal:
            self.abort.set()

    def see(self, pid: Optional[str]) -> None:
        if pid and pid != self.participant_id and pid not in self.peers_seen:
            self.peers_seen.append(pid)

    async def send(self, msg: dict) -> None:
        if self.ws is None:
            return
        log.debug("-> %s", msg.get("type"))
        try:
            await self.ws.send(json.dumps(msg))
        except ConnectionClosed as e:
            if not self.closing:
                self.error("connection_closed", f"send {msg.get('type')}: {e}", fatal=True)

    async def wait(self, ev: asyncio.Event, what: str, timeout: float = STEP_TIMEOUT) -> bool:
        """Wait for ev; False (with an error recorded) on timeout or abort."""
        waiters = [asyncio.ensure_future(ev.wait()), asyncio.ensure_future(self.abort.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if ev.is_set():
            return True
        if not self.abort.is_set():
            self.error("timeout", f"no {what} within {timeout:.0f} s", fatal=True)
        return False

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the monotonic deadline, a stop signal or an abort."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        waiters = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self.abort.wait())]
        try:
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    # ---------------------------------------------------------------- run

    async def run(self) -> None:
        a = self.args
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        self.t_connect = time.monotonic()
        try:
            self.ws = await asyncio.wait_for(connect(a.url, open_timeout=STEP_TIMEOUT, max_size=None), STEP_TIMEOUT + 1)
        except Exception as e:  # noqa: BLE001
            self.error("connect_failed", f"{a.url}: {e!r}")
            return
        log.info("connected to %s", a.url)
        reader = asyncio.ensure_future(self.reader())
        pinger = None
        try:
            if not await self.wait(self.welcome, "welcome"):
                return
            pinger = asyncio.ensure_future(self.pinger())
            if a.join_delay > 0:
                await self.sleep_until(time.monotonic() + a.join_delay)
            if self.stop.is_set() or self.abort.is_set():
                return
            join = {"type": "join", "room": a.room, "display_name": a.name, "role": a.role, "protocol": 1}
            if a.token is not None:
                join["token"] = a.token
            await self.send(join)
            if not await self.wait(self.joined, "joined"):
                return
            t_joined = time.monotonic()
            if not a.no_publish:
                await self.publish()
                if not await self.wait(self.published, "publish_answer"):
                    return
            end = t_joined + a.duration
            if a.leave_after is not None and a.leave_after < a.duration:
                await self.sleep_until(t_joined + a.leave_after)
                await self.leave()
            await self.sleep_until(end)
            if not self.left.is_set():
                await self.leave()
        finally:
            self.closing = True
            if pinger:
                pinger.cancel()
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except Exception:  # noqa: BLE001
                pass
            reader.cancel()
            try:
                await reader
            except BaseException:  # noqa: BLE001
                pass

    async def leave(self) -> None:
        if self.left.is_set() or self.abort.is_set() or self.participant_id is None:
            return
        log.info("leaving")
        self.leaving = True
        await self.send({"type": "leave"})
        await self.wait(self.left, "left", timeout=5.0)
        await self.close_pcs()

    async def pinger(self) -> None:
        interval = max(1.0, min(self.keepalive_secs / 2.0, 15.0))
        while True:
            await asyncio.sleep(interval)
            self.ping_id += 1
            await self.send({"type": "ping", "id": self.ping_id})

    async def reader(self) -> None:
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    self.error("binary_frame", f"unexpected binary frame of {len(raw)} bytes")
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError as e:
                    self.error("bad_json", f"server sent invalid JSON: {e}")
                    continue
                if not isinstance(msg, dict):
                    self.error("bad_json", "server sent a non-object")
                    continue
                try:
                    await self.handle(msg)
                except Exception as e:  # noqa: BLE001
                    log.exception("handling %s", msg.get("type"))
                    self.error("client_failure", f"handling {msg.get('type')}: {e!r}")
        except ConnectionClosed as e:
            if not self.closing:
                self.error("connection_closed", f"server closed the socket: {e}", fatal=True)
            return
        if not self.closing:
            self.error("connection_closed", "server closed the socket", fatal=True)

    # ---------------------------------------------------------------- messages

    async def handle(self, msg: dict) -> None:
        ty = msg.get("type")
        log.debug("<- %s", ty)
        if ty == "welcome":
            if msg.get("protocol") not in (None, 1):
                log.warning("server speaks protocol %s", msg.get("protocol"))
            try:
                self.keepalive_secs = float(msg.get("keepalive_secs") or 10)
            except (TypeError, ValueError):
                pass
            log.info("welcome from %s (protocol %s)", msg.get("server"), msg.get("protocol"))
            self.welcome.set()
        elif ty == "joined":
            self.participant_id = msg.get("participant_id")
            for p in msg.get("participants") or []:
                self.see(p.get("id"))
            log.info("joined %s as %s; %d others", msg.get("room"), self.participant_id, len(self.peers_seen))
            self.joined.set()
        elif ty in ("participant_joined", "participant_updated"):
            self.see((msg.get("participant") or {}).get("id"))
        elif ty == "participant_left":
            pid = msg.get("participant_id")
            log.info("participant %s left (%s)", pid, msg.get("reason"))
            if pid and pid not in self.peers_left:
                self.peers_left.append(pid)
        elif ty == "publish_answer":
            await self.on_publish_answer(msg.get("sdp") or "")
        elif ty == "subscribe_offer":
            await self.on_subscribe_offer(msg)
        elif ty == "ice_candidate":
            await self.on_candidate(msg.get("target"), msg.get("candidate"))
        elif ty == "audio_levels":
            for lv in msg.get("levels") or []:
                pid, level = lv.get("participant_id"), lv.get("level")
                if pid and isinstance(level, (int, float)):
                    self.levels_max[pid] = max(self.levels_max.get(pid, 0.0), float(level))
            self.note_speaker(msg.get("active_speaker"))
        elif ty == "active_speaker":
            self.note_speaker(msg.get("participant_id"))
        elif ty == "left":
            log.info("left (%s)", msg.get("reason"))
            self.left.set()
        elif ty == "pong":
            pass
        elif ty == "bye":
            self.error("bye", f"server said bye: {msg.get('reason')}", fatal=True)
        elif ty == "error":
            irt = msg.get("in_reply_to")
            fatal = irt in ("join", "publish") or (irt is None and not self.joined.is_set())
            self.error(str(msg.get("code")), str(msg.get("message")), irt, fatal=fatal)
        else:
            log.warning("ignoring unknown message type %r", ty)

    def note_speaker(self, pid: Optional[str]) -> None:
        if pid and pid not in self.active_speakers:
            self.active_speakers.append(pid)

    async def publish(self) -> None:
        self.pub_pc = new_peer_connection()
        pc = self.pub_pc

        @pc.on("connectionstatechange")
        async def _state() -> None:
            log.info("publish connection: %s", pc.connectionState)
            if pc.connectionState == "connected":
                self.connected_at.setdefault("publish", time.monotonic())

        self.tone = ToneTrack(self.args.tone, self.args.amplitude)
        pc.addTransceiver(self.tone, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())  # gathers all candidates
        sdp = pc.localDescription.sdp
        addrs = sdp_candidate_addresses(sdp)
        log.info("publish offer candidates: %s", addrs)
        if any(a != "127.0.0.1" for a in addrs):
            self.error("client_failure", f"non-loopback candidates in offer: {addrs}")
        await self.send({"type": "publish", "sdp": sdp})

    async def on_publish_answer(self, sdp: str) -> None:
        if self.pub_pc is None:
            self.error("unexpected", "publish_answer without a publish", "publish")
            return
        try:
            await self.pub_pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as e:  # noqa: BLE001
            self.error("bad_answer", f"applying publish_answer: {e!r}", "publish", fatal=True)
            return
        log.info("publish answer applied; server candidates %s", sdp_candidate_addresses(sdp))
        await self.flush("publish")
        self.published.set()

    def map_tracks(self, sdp: str, tracks: list[dict]) -> None:
        """mid -> participant id for the offer's sending audio m-lines."""
        by_track = {t.get("track_id"): t.get("participant_id") for t in tracks if t.get("track_id")}
        by_stream = {t.get("stream_id"): t.get("participant_id") for t in tracks if t.get("stream_id")}
        try:
            desc = SessionDescription.parse(sdp)
        except Exception as e:  # noqa: BLE001
            log.warning("could not parse subscribe offer for msid: %r", e)
            return
        active = 0
        for m in desc.media:
            if m.kind != "audio" or m.direction not in ("sendonly", "sendrecv"):
                continue
            mid = m.rtp.muxId
            stream_id = track_id = None
            msid = m.msid or next((s.msid for s in m.ssrc if getattr(s, "msid", None)), None)
            if msid:
                parts = msid.split()
                stream_id = parts[0] if parts else None
                track_id = parts[1] if len(parts) > 1 else None
            pid = by_track.get(track_id) or by_stream.get(stream_id) or stream_id
            if pid in (None, "-") and active < len(tracks):
                pid = tracks[active].get("participant_id")
            active += 1
            if pid and mid is not None:
                if self.mid_pid.get(mid) != pid:
                    log.info("subscribe mid %s carries %s", mid, pid)
                self.mid_pid[mid] = pid
                self.see(pid)

    async def on_subscribe_offer(self, msg: dict) -> None:
        revision = msg.get("revision")
        if self.leaving or self.closing:
            log.info("ignoring subscribe offer r%s that crossed our leave", revision)
            return
        sdp = msg.get("sdp") or ""
        tracks = msg.get("tracks") or []
        self.subscribe_offers.append(revision)
        for t in tracks:
            self.see(t.get("participant_id"))
        log.info("subscribe offer r%s with %d tracks", revision, len(tracks))
        if self.sub_pc is None:
            self.sub_pc = new_peer_connection()
            pc = self.sub_pc

            @pc.on("connectionstatechange")
            async def _state() -> None:
                log.info("subscribe connection: %s", pc.connectionState)
                if pc.connectionState == "connected":
                    self.connected_at.setdefault("subscribe", time.monotonic())

            @pc.on("track")
            def _track(track) -> None:
                mid = next((t.mid for t in pc.getTransceivers() if t.receiver.track is track), None)
                log.info("remote track %s on mid %s (%s)", track.id, mid, self.mid_pid.get(mid))
                self.sink.start(track, lambda: self.mid_pid.get(mid) or f"mid-{mid}")

        self.map_tracks(sdp, tracks)
        pc = self.sub_pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # noqa: BLE001
            self.error("bad_offer", f"answering subscribe offer r{revision}: {e!r}", "subscribe_offer")
            return
        answer = pc.localDescription.sdp
        await self.send({"type": "subscribe_answer", "sdp": answer, "revision": revision})
        await self.flush("subscribe")

    async def on_candidate(self, target: Optional[str], cand: Optional[dict]) -> None:
        if target not in ("publish", "subscribe"):
            log.warning("ice_candidate with unknown target %r", target)
            return
        pc = self.pub_pc if target == "publish" else self.sub_pc
        if pc is None or pc.remoteDescription is None:
            self.pending[target].append(cand)
            return
        await self.add_candidate(pc, target, cand)

    async def flush(self, target: str) -> None:
        pc = self.pub_pc if target == "publish" else self.sub_pc
        pending, self.pending[target] = self.pending[target], []
        for c in pending:
            await self.add_candidate(pc, target, c)

    async def add_candidate(self, pc, target: str, cand: Optional[dict]) -> None:
        # Best effort: the answers/offers already carry the server's candidates, and aiortc
        # refuses candidates after end-of-candidates, unknown mids and the like.
        try:
            await pc.addIceCandidate(parse_candidate(cand))
        except Exception as e:  # noqa: BLE001
            log.debug("ignoring %s candidate %r: %r", target, cand, e)

    async def close_pcs(self) -> None:
        for pc in (self.pub_pc, self.sub_pc):
            if pc is not None:
                try:
                    await asyncio.wait_for(pc.close(), 5)
                except Exception:  # noqa: BLE001
                    pass
        await self.sink.stop()

    # ---------------------------------------------------------------- result

    def result(self) -> dict:
        received: dict[str, dict] = {}
        files: dict[str, str] = {}
        for pid in self.sink.order:
            samples = self.sink.samples(pid)
            rate = self.sink.rates.get(pid, 48000)
            received[pid] = summarize(samples, rate, skip=0.5)
            if self.args.record:
                base, ext = os.path.splitext(self.args.record)
                path = f"{base}-{pid}{ext or '.wav'}"
                write_wav(path, samples, rate)
                files[pid] = path
        if self.args.record and self.sink.order:
            first = self.sink.order[0]
            write_wav(self.args.record, self.sink.samples(first), self.sink.rates.get(first, 48000))
        return {
            "participant_id": self.participant_id,
            "room": self.args.room,
            "peers_seen": self.peers_seen,
            "peers_left": self.peers_left,
            "received": received,
            "errors": self.errors,
            "files": files,
            "subscribe_offers": self.subscribe_offers,
            "levels_max": {k: round(v, 4) for k, v in self.levels_max.items()},
            "active_speakers": self.active_speakers,
            "publish_state": self.pub_pc.connectionState if self.pub_pc else None,
            "subscribe_state": self.sub_pc.connectionState if self.sub_pc else None,
            "frames_sent": self.tone.frames_sent if self.tone else 0,
            # ms after opening the WebSocket: each connection up, each peer's first decoded
            # audio frame (aiortc's jitter buffer sits between the packet and the frame).
            "connected_ms": {k: round((t - self.t_connect) * 1000) for k, t in self.connected_at.items()},
            "first_audio_ms": {k: round((t - self.t_connect) * 1000) for k, t in self.sink.first_audio.items()},
        }


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="commhub /ws client: join, publish a tone, record remote audio, print one JSON line.",
        epilog="Exit: 0 ok, 1 protocol/connection error, 2 usage, 3 fewer peers with audio than --expect-peers.",
    )
    ap.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ws")
    ap.add_argument("--room", required=True)
    ap.add_argument("--name", required=True, help="display name")
    ap.add_argument("--role", default="customer", choices=["agent", "customer", "pstn", "supervisor", "guest"])
    ap.add_argument("--tone", type=float, default=440.0, help="sine frequency in Hz to publish (default 440)")
    ap.add_argument("--amplitude", type=float, default=0.3, help="tone amplitude, 0..1 of full scale (default 0.3)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds to stay after `joined` (default 5)")
    ap.add_argument("--record", metavar="OUT.wav", help="write OUT.wav (first peer) and OUT-<participant_id>.wav")
    ap.add_argument("--token", help="join token")
    ap.add_argument("--join-delay", type=float, default=0.0, help="seconds to wait after `welcome` before `join`")
    ap.add_argument("--leave-after", type=float, help="send `leave` this many seconds after `joined`; the socket stays open until --duration")
    ap.add_argument("--expect-peers", type=int, default=0, help="fail (exit 3) unless this many peers delivered audio")
    ap.add_argument("--no-publish", action="store_true", help="only subscribe")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logs (stderr)")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s ws_client[{args.name}] %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("aiortc", "aioice", "websockets"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    restrict_to_loopback()

    async def go() -> dict:
        client = Client(args)
        try:
            await client.run()
        finally:
            await client.close_pcs()
        return client.result()

    result = asyncio.run(go())
    protocol_failed = bool(result["errors"])
    with_audio = [p for p, r in result["received"].items() if r["seconds"] >= MIN_AUDIO_SECONDS]
    missing = args.expect_peers > 0 and len(with_audio) < args.expect_peers
    if missing:
        message = f"audio from {len(with_audio)} of {args.expect_peers} expected peers: {with_audio}"
        log.error("missing_audio: %s", message)
        result["errors"].append({"code": "missing_audio", "message": message, "in_reply_to": None})
    print(json.dumps(result), flush=True)
    if protocol_failed:
        return 1
    return 3 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
