#!/usr/bin/env python3
"""Audio analysis helpers shared by the commhub test clients (numpy only, no aiortc).

Functions:
  read_wav(path)                       -> (samples float32 [n, channels] in -1..1, rate)
  write_wav(path, mono_int16, rate)    -> writes a 16-bit mono WAV
  to_mono(samples)                     -> float32 [n]
  rms(x)                               -> float, 0..1 of full scale
  dominant_hz(x, rate, skip=0.5)       -> float | None (None for silence / too short)
  windows(x, rate, window=1.0, skip=0) -> [{start, dominant_hz, rms}, ...]
  summarize(x, rate, skip=0.5)         -> {samples, seconds, dominant_hz, rms}
  analyze_file(path, ...)              -> the CLI's JSON object

CLI:
  analyze.py FILE.wav [--skip 0.5] [--window 1.0]
prints one JSON line:
  {"file", "rate", "channels", "samples", "seconds", "dominant_hz", "rms",
   "windows": [{"start", "dominant_hz", "rms"}...],
   "per_channel": [{"channel", "dominant_hz", "rms", "windows": [...]}, ...]}
(dominant_hz/rms at top level are of the mono mix; per_channel lists every channel, so a
stereo recording with the agent on the left and the customer on the right can be checked
channel by channel.)
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import wave

import numpy as np

# Below this RMS (about -80 dBFS) a signal counts as silence: dominant_hz is None.
SILENCE_RMS = 1e-4
# Lowest frequency considered for the peak (ignores DC and rumble).
MIN_HZ = 20.0


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Read a WAV file: PCM 8/16/24/32-bit int or 32/64-bit float, plain or
    WAVE_FORMAT_EXTENSIBLE (what sox writes; Python 3.11's `wave` refuses it).
    Returns float32 samples shaped [n, channels] in -1..1, and the sample rate."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    fmt = None
    data = None
    pos = 12
    while pos + 8 <= len(blob):
        cid = blob[pos : pos + 4]
        size = struct.unpack_from("<I", blob, pos + 4)[0]
        body = blob[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            data = body  # a truncated data chunk (recording cut short) is read as far as it goes
        pos += 8 + size + (size & 1)
    if fmt is None or data is None or len(fmt) < 16:
        raise ValueError(f"{path}: missing fmt or data chunk")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt, 0)
    if tag == 0xFFFE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the SubFormat GUID
    if channels < 1:
        raise ValueError(f"{path}: no channels")
    width = block_align // channels if block_align else bits // 8
    usable = len(data) - len(data) % (width * channels)
    raw = data[:usable]
    if tag == 3 and width in (4, 8):
        x = np.frombuffer(raw, dtype="<f4" if width == 4 else "<f8").astype(np.float32)
    elif tag == 1 and width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == 1 and width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif tag == 1 and width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    elif tag == 1 and width == 4:
        x = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    else:
        raise ValueError(f"{path}: unsupported WAV format tag {tag} with {width}-byte samples")
    return x.reshape(-1, channels), int(rate)


def write_wav(path: str, samples: np.ndarray, rate: int) -> None:
    """Write mono 16-bit PCM. `samples` is int16, or float in -1..1."""
    x = np.asarray(samples)
    if x.dtype != np.int16:
        x = np.clip(np.round(x.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(x.astype("<i2").tobytes())


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Float mono from [n] or [n, channels] (int16 is scaled to -1..1)."""
    x = np.asarray(samples)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    else:
        x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return x


def rms(samples: np.ndarray) -> float:
    x = to_mono(samples)
    if x.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def dominant_hz(samples: np.ndarray, rate: int, skip: float = 0.5) -> float | None:
    """Frequency of the strongest spectral peak (Hann window, parabolic interpolation).

    The first `skip` seconds are ignored (codec/jitter-buffer start-up). Returns None when
    fewer than 50 ms remain or the signal is silence.
    """
    x = to_mono(samples)
    start = int(round(skip * rate))
    if x.size - start < max(16, int(0.05 * rate)):
        # Too short once the start-up is skipped: use everything there is, if enough.
        if x.size >= max(16, int(0.05 * rate)):
            start = 0
        else:
            return None
    x = x[start:]
    if rms(x) < SILENCE_RMS:
        return None
    x = x - np.mean(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, d=1.0 / rate)
    lo = int(np.searchsorted(freqs, MIN_HZ))
    if lo >= spec.size - 1:
        return None
    k = lo + int(np.argmax(spec[lo:]))
    # Parabolic interpolation on the log magnitude for sub-bin accuracy.
    offset = 0.0
    if 0 < k < spec.size - 1:
        a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        if denom != 0:
            offset = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
    return round(float((k + offset) * rate / x.size), 1)


def band_ratio(seg: np.ndarray, rate: int, hz: float, width: float = 30.0) -> float:
    """Share of the segment's energy within +-width Hz of `hz` (0..1)."""
    if seg.size < 16:
        return 0.0
    spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size))) ** 2
    freqs = np.fft.rfftfreq(seg.size, 1.0 / rate)
    total = float(spec.sum())
    if total <= 0.0:
        return 0.0
    band = (freqs >= hz - width) & (freqs <= hz + width)
    return float(spec[band].sum()) / total


PROBES: list[float] = []


def windows(samples: np.ndarray, rate: int, window: float = 1.0, skip: float = 0.0) -> list[dict]:
    """Dominant frequency and RMS per consecutive window of `window` seconds (plus, for each
    --probe frequency, the share of energy near it)."""
    x = to_mono(samples)
    n = max(1, int(round(window * rate)))
    out = []
    for i in range(int(round(skip * rate)), x.size, n):
        seg = x[i : i + n]
        if seg.size < n // 2 and out:
            break  # drop a short tail
        w = {
            "start": round(i / rate, 3),
            "dominant_hz": dominant_hz(seg, rate, skip=0.0),
            "rms": round(rms(seg), 5),
        }
        for hz in PROBES:
            w[f"ratio_{int(hz)}"] = round(band_ratio(seg, rate, hz), 4)
        out.append(w)
    return out


def summarize(samples: np.ndarray, rate: int, skip: float = 0.5) -> dict:
    """{samples, seconds, dominant_hz, rms} of mono audio (rms after the skipped start)."""
    x = to_mono(samples)
    start = int(round(skip * rate))
    tail = x[start:] if x.size > start else x
    return {
        "samples": int(x.size),
        "seconds": round(x.size / rate, 3) if rate else 0.0,
        "dominant_hz": dominant_hz(x, rate, skip=skip),
        "rms": round(rms(tail), 5),
    }


def analyze_file(path: str, skip: float = 0.5, window: float = 1.0) -> dict:
    data, rate = read_wav(path)
    mono = to_mono(data)
    out = {"file": path, "rate": rate, "channels": int(data.shape[1])}
    out.update(summarize(mono, rate, skip=skip))
    out["windows"] = windows(mono, rate, window=window)
    out["per_channel"] = [
        {
            "channel": ch,
            "dominant_hz": dominant_hz(data[:, ch], rate, skip=skip),
            "rms": round(rms(data[int(skip * rate) :, ch]), 5),
            "windows": windows(data[:, ch], rate, window=window),
        }
        for ch in range(data.shape[1])
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Dominant frequency and RMS of a WAV file (JSON).")
    ap.add_argument("file", help="WAV file (PCM)")
    ap.add_argument("--skip", type=float, default=0.5, help="seconds to ignore at the start (default 0.5)")
    ap.add_argument("--window", type=float, default=1.0, help="window length in seconds (default 1.0)")
    ap.add_argument("--probe", type=float, action="append", default=[],
                    help="also report each window's energy share near this frequency (repeatable)")
    args = ap.parse_args(argv)
    PROBES[:] = args.probe
    try:
        result = analyze_file(args.file, skip=args.skip, window=args.window)
    except (OSError, ValueError, struct.error) as e:
        print(json.dumps({"file": args.file, "error": str(e)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
