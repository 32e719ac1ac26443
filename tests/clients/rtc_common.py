"""aiortc helpers shared by ws_client.py and whip_whep.py.

- restrict_to_loopback(): make aioice gather host candidates on 127.0.0.1 only (must run
  before any RTCPeerConnection gathers). aioice normally enumerates every interface and
  *excludes* 127.0.0.1, so without this patch the test clients would advertise the machine's
  real addresses and never talk to a loopback-only server.
- new_peer_connection(): RTCPeerConnection with no ICE servers (no STUN traffic).
- ToneTrack: an audio MediaStreamTrack producing a sine tone, 20 ms / 48 kHz s16 frames
  (the same signal on both channels of a stereo frame, which is what aiortc's Opus encoder
  takes without resampling; the RMS on the wire is amplitude/sqrt(2)).
- AudioSink: collects received audio per key (participant id), as mono int16 at 48 kHz.
- parse_candidate(): a browser-style candidate dict -> RTCIceCandidate (or None).
- sdp_candidate_addresses(): the connection addresses of every a=candidate line in an SDP.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
from typing import Callable, Optional

import numpy as np

import aioice.ice
from aiortc import RTCConfiguration, RTCIceCandidate, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

import av

log = logging.getLogger("commhub.rtc")

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
LOOPBACK = "127.0.0.1"

_patched = False


def restrict_to_loopback() -> None:
    """Patch aioice so that only a 127.0.0.1 host candidate is gathered (idempotent)."""
    global _patched
    if _patched:
        return

    def loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return [LOOPBACK] if use_ipv4 else []

    # aioice.ice.Connection.gather_candidates looks the function up as a module global at
    # call time, so replacing the module attribute is enough.
    aioice.ice.get_host_addresses = loopback_only
    _patched = True


def new_peer_connection() -> RTCPeerConnection:
    restrict_to_loopback()
    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))


def sdp_candidate_addresses(sdp: str) -> list[str]:
    """Connection addresses (5th field) of the a=candidate lines of an SDP."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line[len("a=candidate:") :].split()
            if len(parts) >= 5:
                out.append(parts[4])
    return out


def parse_candidate(c: Optional[dict]) -> Optional[RTCIceCandidate]:
    """{candidate, sdpMid, sdpMLineIndex} -> RTCIceCandidate. Raises ValueError if unusable."""
    if c is None:
        return None
    text = (c.get("candidate") or "").strip()
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    if not text:
        raise ValueError("empty candidate")
    cand = candidate_from_sdp(text)
    cand.sdpMid = c.get("sdpMid")
    cand.sdpMLineIndex = c.get("sdpMLineIndex")
    if cand.sdpMid is None and cand.sdpMLineIndex is None:
        cand.sdpMLineIndex = 0
    return cand


class ToneTrack(MediaStreamTrack):
    """A sine tone: 20 ms frames of 48 kHz s16 (identical stereo channels), paced in real time."""

    kind = "audio"

    def __init__(self, hz: float, amplitude: float = 0.3) -> None:
        super().__init__()
        self.hz = float(hz)
        self.amplitude = float(amplitude)
        self._pts = 0
        self._start: Optional[float] = None
        self.frames_sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        n = np.arange(self._pts, self._pts + FRAME_SAMPLES, dtype=np.float64)
        # Phase from the sample index modulo one period keeps precision on long runs.
        if self.hz > 0:
            period = SAMPLE_RATE / self.hz
            phase = 2.0 * math.pi * np.mod(n, period) / period
            x = self.amplitude * np.sin(phase)
        else:
            x = np.zeros(FRAME_SAMPLES)
        # Identical left/right: aiortc's Opus encoder wants s16 stereo and would otherwise
        # upmix mono with a -3 dB pan law, so the level on the wire would not be --amplitude.
        mono = np.round(x * 32767.0).astype(np.int16)
        pcm = np.repeat(mono, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._pts += FRAME_SAMPLES
        self.frames_sent += 1
        return frame


def frame_to_mono_int16(frame: av.AudioFrame) -> np.ndarray:
    """Decoded frame (aiortc gives packed s16 stereo 48 kHz) -> mono int16 samples."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        x = arr.reshape(channels, -1).T  # [n, ch]
    else:
        x = arr.reshape(-1, channels)
    if x.dtype.kind == "f":
        x = np.clip(x * 32767.0, -32768, 32767)
    if channels > 1:
        x = x.astype(np.float64).mean(axis=1)
    else:
        x = x[:, 0]
    return np.round(x).astype(np.int16)


class AudioSink:
    """Received audio per key. `consume(track, key_fn)` reads a track until it ends; each
    frame is filed under key_fn() at the time it arrives (so a recycled transceiver's audio
    goes to whoever it carries now)."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[np.ndarray]] = {}
        self.rates: dict[str, int] = {}
        self.first_audio: dict[str, float] = {}
        self.order: list[str] = []  # keys in order of first audio
        self.tasks: list[asyncio.Task] = []

    def start(self, track: MediaStreamTrack, key_fn: Callable[[], Optional[str]]) -> None:
        self.tasks.append(asyncio.ensure_future(self._consume(track, key_fn)))

    async def _consume(self, track: MediaStreamTrack, key_fn: Callable[[], Optional[str]]) -> None:
        while True:
            try:
                frame = await track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                return
            except Exception as e:  # noqa: BLE001 - a decoder hiccup must not kill the client
                log.warning("track %s: recv failed: %r", getattr(track, "id", "?"), e)
                return
            key = key_fn() or "unknown"
            if key not in self.chunks:
                self.chunks[key] = []
                self.rates[key] = frame.sample_rate or SAMPLE_RATE
                self.first_audio[key] = time.monotonic()
                self.order.append(key)
                log.info("first audio from %s", key)
            self.chunks[key].append(frame_to_mono_int16(frame))

    def samples(self, key: str) -> np.ndarray:
        parts = self.chunks.get(key) or []
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            try:
                await t
            except BaseException:  # noqa: BLE001
                pass
        self.tasks.clear()
