#!/usr/bin/env python3
"""A SIP leg with WebRTC media shaped like FreeSWITCH's (`media_webrtc=true`), for commhub's tests.

aiortc makes an ordinary WebRTC offer (ICE + DTLS-SRTP, Opus, a tone track); the offer is then
rewritten the way FreeSWITCH writes it: proto `RTP/SAVPF`, no `a=mid`, no `a=group:BUNDLE`, no
direction, `a=rtcp:` and an RTCP (component 2) candidate beside `a=rtcp-mux`. It is sent in a
SIP INVITE over UDP (hand-written RFC 3261 messages), the 200's answer is checked (no `a=mid`,
proto `RTP/SAVPF` as offered) and applied (with the mid aiortc needs put back), and the call
runs for --duration seconds, recording what it hears, then BYE.

Usage: sip_webrtc.py --sip 127.0.0.1:5060 --user CALL_ID --tone 440 --duration 8 --record out.wav

Prints one JSON line: {"answer_has_mid", "answer_proto", "status", "received": {seconds,
dominant_hz, rms}}; exit 0 when the call was answered and audio came back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import sys

import numpy as np

from analyze import summarize, write_wav
from rtc_common import SAMPLE_RATE, AudioSink, ToneTrack, new_peer_connection


def freeswitch_shape(sdp: str) -> str:
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=mid:") or line.startswith("a=group:BUNDLE"):
            continue
        if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            continue
        if line.startswith("m=audio"):
            f = line.split(" ")
            f[2] = "RTP/SAVPF"
            line = " ".join(f)
        out.append(line)
        if line.startswith("a=candidate:") and " 1 udp " in line:
            # FreeSWITCH also lists RTCP candidates (component 2) next to rtcp-mux.
            f = line.split(" ")
            f[1] = "2"
            f[5] = str(int(f[5]) + 1)
            out.append(" ".join(f))
        if line.startswith("a=rtcp-mux"):
            out.append("a=rtcp:9 IN IP4 127.0.0.1")
    return "\r\n".join(out) + "\r\n"


class Sip:
    def __init__(self, server: tuple[str, int], user: str) -> None:
        self.server = server
        self.user = user
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.call_id = f"{random.getrandbits(64):x}@127.0.0.1"
        self.tag = f"{random.getrandbits(32):x}"
        self.to_tag = ""
        self.cseq = 1

    def _headers(self, method: str, cseq: int, branch: str, to_tag: bool) -> str:
        host = f"{self.server[0]}:{self.server[1]}"
        to = f"<sip:{self.user}@{host}>" + (f";tag={self.to_tag}" if to_tag and self.to_tag else "")
        return (
            f"{method} sip:{self.user}@{host} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{branch};rport\r\n"
            f"From: \"FreeSWITCH\" <sip:+15550002222@127.0.0.1:{self.port}>;tag={self.tag}\r\n"
            f"To: {to}\r\nCall-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:fs@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
            "User-Agent: FreeSWITCH-shaped test\r\n"
        )

    def send(self, text: str) -> None:
        self.sock.sendto(text.encode(), self.server)

    async def recv(self, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)
        return data.decode(errors="replace")

    async def invite(self, sdp: str) -> tuple[int, str]:
        branch = f"{random.getrandbits(48):x}"
        self.branch = branch
        msg = self._headers("INVITE", 1, branch, False)
        msg += f"Content-Type: application/sdp\r\nContent-Length: {len(sdp.encode())}\r\n\r\n{sdp}"
        self.send(msg)
        while True:
            resp = await self.recv(15)
            m = re.match(r"SIP/2\.0 (\d{3})", resp)
            if not m:
                continue
            code = int(m.group(1))
            if code < 200:
                continue
            to = re.search(r"^To:.*;tag=([^;\r\n]+)", resp, re.M | re.I)
            if to:
                self.to_tag = to.group(1)
            self.ack(code)
            body = resp.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in resp else ""
            return code, body

    def ack(self, code: int) -> None:
        # A 2xx is ACKed in a new transaction; anything else in the INVITE's.
        branch = self.branch if code >= 300 else f"{random.getrandbits(48):x}"
        self.send(self._headers("ACK", 1, branch, True) + "Content-Length: 0\r\n\r\n")

    async def bye(self) -> int:
        self.send(self._headers("BYE", 2, f"{random.getrandbits(48):x}", True) + "Content-Length: 0\r\n\r\n")
        try:
            while True:
                resp = await self.recv(5)
                m = re.match(r"SIP/2\.0 (\d{3})", resp)
                if m and "BYE" in resp:
                    return int(m.group(1))
        except asyncio.TimeoutError:
            return 0


async def run(args: argparse.Namespace) -> dict:
    host, port = args.sip.rsplit(":", 1)
    pc = new_peer_connection()
    sink = AudioSink()
    tone = ToneTrack(args.tone)
    pc.addTrack(tone)

    @pc.on("track")
    def on_track(track):  # noqa: ANN001
        sink.start(track, lambda: "remote")

    await pc.setLocalDescription(await pc.createOffer())
    while pc.iceGatheringState != "complete":
        await asyncio.sleep(0.05)
    offer = freeswitch_shape(pc.localDescription.sdp)
    sip = Sip((host, int(port)), args.user)
    code, answer = await sip.invite(offer)
    result: dict = {"status": code}
    if code != 200:
        await pc.close()
        return result
    result["answer_has_mid"] = "a=mid:" in answer
    m = re.search(r"^m=audio \S+ (\S+)", answer, re.M)
    result["answer_proto"] = m.group(1) if m else None
    # aiortc needs the mid (FreeSWITCH's sofia-sip does not): put it back for our side only.
    fixed = re.sub(r"(^m=audio[^\r\n]*\r?\n)", r"\1a=mid:0\r\n", answer, count=1, flags=re.M)
    fixed = fixed.replace("RTP/SAVPF", "UDP/TLS/RTP/SAVPF")
    from aiortc import RTCSessionDescription

    await pc.setRemoteDescription(RTCSessionDescription(sdp=fixed, type="answer"))
    await asyncio.sleep(args.duration)
    result["bye"] = await sip.bye()
    await sink.stop()
    x = sink.samples("remote")
    if args.record:
        write_wav(args.record, x, SAMPLE_RATE)
    result["received"] = summarize(x.astype(np.float64) / 32768.0, SAMPLE_RATE, skip=1.0) if len(x) else None
    result["frames_sent"] = tone.frames_sent
    await pc.close()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sip", required=True, help="commhub's SIP address, host:port")
    ap.add_argument("--user", required=True, help="Request-URI user: a call id or number")
    ap.add_argument("--tone", type=float, default=440.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--record", help="write what the leg heard (mono 48 kHz WAV)")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    print(json.dumps(res))
    ok = res.get("status") == 200 and res.get("received") and res["received"].get("seconds", 0) > 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
