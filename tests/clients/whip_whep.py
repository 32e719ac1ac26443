#!/usr/bin/env python3
"""commhub WHIP/WHEP client (aiortc + urllib in a thread). Each subcommand prints ONE JSON line.

  whip_whep.py publish --url http://127.0.0.1:PORT/whip/ROOM --tone HZ --duration S
        [--name N] [--role R] [--token T] [--amplitude A]
      POST an SDP offer (sendonly audio), apply the 201 answer, send the tone for S seconds,
      DELETE the Location. Prints:
      {"location", "participant_id", "status", "delete_status", "tone_hz",
       "connection_state", "frames_sent", "errors": [...]}

  whip_whep.py subscribe --url http://127.0.0.1:PORT/whep/ROOM/PARTICIPANT --duration S
        [--record OUT.wav] [--token T]
      POST a recvonly audio offer, apply the answer, record S seconds, DELETE. Prints:
      {"dominant_hz", "seconds", "rms", "samples", "location", "status", "delete_status",
       "connection_state", "file", "errors": [...]}

  whip_whep.py both --url http://127.0.0.1:PORT/whip/ROOM --tone HZ --duration S
        [--record OUT.wav] [--whep-url http://127.0.0.1:PORT/whep/ROOM] [--sub-duration S2]
      Publishes; as soon as the Location header gives the participant id, subscribes to it over
      WHEP (at --whep-url/<id>, by default the WHIP URL with /whip/ replaced by /whep/) for S2
      seconds (default max(1, S - 1.5)), then the publisher ends. Prints:
      {"publish": {...as above}, "subscribe": {...as above}, "match": bool, "errors": [...]}
      where match = the subscriber's dominant_hz is within 5 Hz of --tone.

"status" is the HTTP status of the POST (201 expected; anything else is an error),
"delete_status" that of the DELETE (200 or 204 expected). dominant_hz ignores the first 0.5 s.
Exit status: 0 fine, 1 HTTP/negotiation errors, 3 the subscriber got no audio (< 0.2 s),
2 bad command line. Logs go to stderr. Media stays on loopback (127.0.0.1 host candidates only,
no ICE servers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from analyze import summarize, write_wav  # noqa: E402
from rtc_common import (  # noqa: E402
    AudioSink,
    ToneTrack,
    new_peer_connection,
    restrict_to_loopback,
    sdp_candidate_addresses,
)

from aiortc import RTCSessionDescription  # noqa: E402

log = logging.getLogger("commhub.whip")

HTTP_TIMEOUT = 10.0
MIN_AUDIO_SECONDS = 0.2


def _http(method: str, url: str, body: Optional[str], headers: dict) -> tuple[int, dict, str]:
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace") if e.fp else ""
        return e.code, {k.lower(): v for k, v in (e.headers or {}).items()}, text


async def http(method: str, url: str, body: Optional[str] = None, token: Optional[str] = None) -> tuple[int, dict, str]:
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/sdp"
        headers["Accept"] = "application/sdp"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    log.info("%s %s", method, url)
    return await asyncio.to_thread(_http, method, url, body, headers)


class Stopper:
    """Sleeps that end early on SIGTERM/SIGINT."""

    def __init__(self) -> None:
        self.ev = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.ev.set)
            except (NotImplementedError, RuntimeError):
                pass

    async def sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.ev.wait(), timeout=max(0.0, seconds))
        except asyncio.TimeoutError:
            pass


class Endpoint:
    """One WHIP or WHEP session: POST offer -> 201 answer + Location; DELETE ends it."""

    def __init__(self, url: str, token: Optional[str]) -> None:
        self.url = url
        self.token = token
        self.pc = new_peer_connection()
        self.location: Optional[str] = None
        self.status: Optional[int] = None
        self.delete_status: Optional[int] = None
        self.errors: list[dict] = []
        self.state_before_close: Optional[str] = None

        @self.pc.on("connectionstatechange")
        async def _state() -> None:
            log.info("%s connection: %s", self.kind(), self.pc.connectionState)

    def kind(self) -> str:
        return "whep" if "/whep/" in self.url else "whip"

    def error(self, code: str, message: str) -> None:
        log.error("%s: %s", code, message)
        self.errors.append({"code": code, "message": message})

    async def start(self) -> bool:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp
        addrs = sdp_candidate_addresses(offer)
        log.info("%s offer candidates: %s", self.kind(), addrs)
        if any(a != "127.0.0.1" for a in addrs):
            self.error("client_failure", f"non-loopback candidates in offer: {addrs}")
        try:
            status, headers, body = await http("POST", self.url, offer, self.token)
        except Exception as e:  # noqa: BLE001
            self.error("http_failed", f"POST {self.url}: {e!r}")
            return False
        self.status = status
        if status // 100 != 2:
            self.error("http_status", f"POST {self.url} -> {status}: {body[:300]}")
            return False
        if status != 201:
            self.error("http_status", f"POST {self.url} -> {status}, expected 201")
        loc = headers.get("location")
        if not loc:
            self.error("no_location", f"POST {self.url} -> {status} without a Location header")
        else:
            self.location = urllib.parse.urljoin(self.url, loc)
        ctype = headers.get("content-type", "")
        if not ctype.startswith("application/sdp"):
            self.error("content_type", f"answer has Content-Type {ctype!r}, expected application/sdp")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        except Exception as e:  # noqa: BLE001
            self.error("bad_answer", f"applying the answer: {e!r}")
            return False
        log.info("%s answer applied; server candidates %s", self.kind(), sdp_candidate_addresses(body))
        return True

    async def finish(self) -> None:
        self.state_before_close = self.pc.connectionState
        if self.location:
            try:
                status, _, body = await http("DELETE", self.location, None, self.token)
                self.delete_status = status
                if status not in (200, 204):
                    self.error("http_status", f"DELETE {self.location} -> {status}: {body[:300]}")
            except Exception as e:  # noqa: BLE001
                self.error("http_failed", f"DELETE {self.location}: {e!r}")
        try:
            await asyncio.wait_for(self.pc.close(), 5)
        except Exception:  # noqa: BLE001
            pass

    @property
    def participant_id(self) -> Optional[str]:
        if not self.location:
            return None
        path = urllib.parse.urlparse(self.location).path.rstrip("/")
        return urllib.parse.unquote(path.rsplit("/", 1)[-1]) or None


class Publisher(Endpoint):
    def __init__(self, url: str, tone: float, amplitude: float, token: Optional[str]) -> None:
        super().__init__(url, token)
        self.tone_hz = tone
        self.tone = ToneTrack(tone, amplitude)
        self.pc.addTransceiver(self.tone, direction="sendonly")

    def result(self) -> dict:
        return {
            "location": self.location,
            "participant_id": self.participant_id,
            "status": self.status,
            "delete_status": self.delete_status,
            "tone_hz": self.tone_hz,
            "connection_state": self.state_before_close or self.pc.connectionState,
            "frames_sent": self.tone.frames_sent,
            "errors": self.errors,
        }


class Subscriber(Endpoint):
    def __init__(self, url: str, token: Optional[str]) -> None:
        super().__init__(url, token)
        self.sink = AudioSink()
        self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def _track(track) -> None:
            log.info("whep track %s", track.id)
            self.sink.start(track, lambda: "audio")

    async def finish(self) -> None:
        await super().finish()
        await self.sink.stop()

    def result(self, record: Optional[str]) -> dict:
        samples = self.sink.samples("audio")
        rate = self.sink.rates.get("audio", 48000)
        out = summarize(samples, rate, skip=0.5)
        path = None
        if record and samples.size:
            write_wav(record, samples, rate)
            path = record
        out.update(
            {
                "location": self.location,
                "status": self.status,
                "delete_status": self.delete_status,
                "connection_state": self.state_before_close or self.pc.connectionState,
                "file": path,
                "errors": self.errors,
            }
        )
        return out


def with_query(url: str, **params: Optional[str]) -> str:
    parts = urllib.parse.urlsplit(url)
    q = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    have = {k for k, _ in q}
    q += [(k, v) for k, v in params.items() if v is not None and k not in have]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


def whep_base_for(whip_url: str) -> str:
    parts = urllib.parse.urlsplit(whip_url)
    path = parts.path.replace("/whip/", "/whep/", 1)
    return urllib.parse.urlunsplit(parts._replace(path=path.rstrip("/"), query=""))


async def run_publish(args: argparse.Namespace, stopper: Stopper, on_started=None) -> dict:
    url = with_query(args.url, name=args.name, role=args.role)
    pub = Publisher(url, args.tone, args.amplitude, args.token)
    try:
        if await pub.start():
            if on_started is not None:
                await on_started(pub)
            else:
                await stopper.sleep(args.duration)
    finally:
        await pub.finish()
    return pub.result()


async def run_subscribe(url: str, duration: float, record: Optional[str], token: Optional[str], stopper: Stopper) -> dict:
    sub = Subscriber(url, token)
    try:
        if await sub.start():
            await stopper.sleep(duration)
    finally:
        await sub.finish()
    return sub.result(record)


def sub_exit(res: dict) -> int:
    if res["errors"]:
        return 1
    return 3 if res["seconds"] < MIN_AUDIO_SECONDS else 0


async def amain(args: argparse.Namespace) -> tuple[dict, int]:
    stopper = Stopper()
    if args.cmd == "publish":
        res = await run_publish(args, stopper)
        return res, (1 if res["errors"] else 0)
    if args.cmd == "subscribe":
        res = await run_subscribe(args.url, args.duration, args.record, args.token, stopper)
        return res, sub_exit(res)

    # both
    sub_duration = args.sub_duration if args.sub_duration is not None else max(1.0, args.duration - 1.5)
    whep_base = (args.whep_url or whep_base_for(args.url)).rstrip("/")
    holder: dict = {}

    async def started(pub: Publisher) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pid = pub.participant_id
        if pid:
            url = f"{whep_base}/{urllib.parse.quote(pid, safe='')}"
            holder["subscribe"] = await run_subscribe(url, sub_duration, args.record, args.token, stopper)
        else:
            pub.error("no_participant_id", "cannot subscribe: no participant id in the Location header")
        await stopper.sleep(args.duration - (loop.time() - t0))

    pub_res = await run_publish(args, stopper, on_started=started)
    sub_res = holder.get("subscribe")
    errors = list(pub_res["errors"]) + (list(sub_res["errors"]) if sub_res else [])
    if sub_res is None and not errors:
        errors.append({"code": "no_subscribe", "message": "the subscriber never ran"})
    dom = sub_res.get("dominant_hz") if sub_res else None
    match = dom is not None and abs(dom - args.tone) <= 5.0
    res = {"publish": pub_res, "subscribe": sub_res, "match": match, "errors": errors}
    if errors:
        code = 1
    elif sub_res is None or sub_res["seconds"] < MIN_AUDIO_SECONDS:
        code = 3
    else:
        code = 0
    return res, code


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="commhub WHIP publish / WHEP subscribe client (aiortc); prints one JSON line.",
        epilog="Exit: 0 ok, 1 HTTP/negotiation error, 2 usage, 3 subscriber got no audio.",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logs (stderr)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common_pub(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", required=True, help="http://127.0.0.1:PORT/whip/ROOM")
        p.add_argument("--tone", type=float, default=440.0, help="sine frequency in Hz (default 440)")
        p.add_argument("--amplitude", type=float, default=0.3, help="0..1 of full scale (default 0.3)")
        p.add_argument("--duration", type=float, default=5.0, help="seconds to publish (default 5)")
        p.add_argument("--name", help="display name (?name=, unless the URL has one)")
        p.add_argument("--role", help="role (?role=, unless the URL has one)")
        p.add_argument("--token", help="sent as Authorization: Bearer TOKEN")

    p = sub.add_parser("publish", help="WHIP: publish a tone, DELETE at the end")
    common_pub(p)
    s = sub.add_parser("subscribe", help="WHEP: receive one participant's audio")
    s.add_argument("--url", required=True, help="http://127.0.0.1:PORT/whep/ROOM/PARTICIPANT")
    s.add_argument("--duration", type=float, default=5.0, help="seconds to record (default 5)")
    s.add_argument("--record", metavar="OUT.wav", help="write the received audio (mono 16-bit 48 kHz)")
    s.add_argument("--token", help="sent as Authorization: Bearer TOKEN")
    b = sub.add_parser("both", help="WHIP publish + WHEP subscribe to that publisher")
    common_pub(b)
    b.add_argument("--record", metavar="OUT.wav", help="write the WHEP-received audio")
    b.add_argument("--whep-url", help="WHEP base http://127.0.0.1:PORT/whep/ROOM (default: from --url)")
    b.add_argument("--sub-duration", type=float, help="seconds to subscribe (default max(1, duration-1.5))")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s whip_whep[{args.cmd}] %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("aiortc", "aioice"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    restrict_to_loopback()
    res, code = asyncio.run(amain(args))
    print(json.dumps(res), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
