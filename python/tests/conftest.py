"""Shared fixtures: the shipped demo files, short generated signals written as 16-bit WAV by
Python's own `wave` module (so the engine's decoder, not its encoder, is what the array and path
forms share), the command-line binary, and ffmpeg's loudness meter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_MIX = REPO / "references" / "demo_mix.flac"
DEMO_REF = REPO / "references" / "demo_ref.ogg"


def write_pcm16(path: Path, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Writes frames x channels `audio` as 16-bit WAV with the standard library and returns the
    samples exactly as a decoder reads them back (the int16 values / 32768, float32)."""
    a = audio if audio.ndim == 2 else audio[:, None]
    q = np.clip(np.round(a * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(a.shape[1])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(q.tobytes())
    return (q.astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def song(seconds: float, sample_rate: int, channels: int, seed: int, brightness: float) -> np.ndarray:
    """A short, music-like test signal: a kick-like pulse every half second, a bass line, a
    chord, and filtered noise whose tilt `brightness` (0 dark .. 1 bright) sets its tonal
    balance, with a little stereo difference; peaks near -6 dBFS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    beat = np.exp(-((t % 0.5) * 18.0)) * np.sin(2 * np.pi * 55.0 * t)
    bass = 0.3 * np.sin(2 * np.pi * 82.4 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    chord = sum(0.08 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0, 523.3))
    noise = rng.standard_normal((n, channels))
    # spectral tilt of the noise: brightness 1 keeps it white, 0 tilts it -6 dB per octave
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    tilt = (np.maximum(f, 20.0) / 1000.0) ** (-(1.0 - brightness))
    shaped = np.fft.irfft(np.fft.rfft(noise, axis=0) * tilt[:, None], n=n, axis=0)
    shaped /= np.max(np.abs(shaped))
    mono = beat + bass + chord
    out = mono[:, None] + 0.3 * shaped
    if channels == 2:
        out[:, 1] = 0.9 * mono + 0.3 * shaped[:, 1]
    out *= 0.5 / np.max(np.abs(out))
    return out.astype(np.float32)


@pytest.fixture(scope="session")
def signals(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two 8-second stereo songs at 48 kHz (a dull mix, a bright reference), a mono one, each
    as a 16-bit WAV and as the exact samples the WAV holds."""
    d = tmp_path_factory.mktemp("signals")
    out = {}
    for name, channels, seed, brightness in (
        ("mix", 2, 1, 0.1),
        ("ref", 2, 2, 0.9),
        ("ref2", 2, 3, 0.5),
        ("mono", 1, 4, 0.3),
    ):
        path = d / f"{name}.wav"
        out[name] = (path, write_pcm16(path, song(8.0, 48000, channels, seed, brightness), 48000))
    return out


def cli() -> Path:
    """The command-line binary of this checkout: $REFMASTER_CLI, else target/release/refmaster
    (built with cargo if missing)."""
    env = os.environ.get("REFMASTER_CLI")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "release" / "refmaster"
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "refmaster"], cwd=REPO, check=True)
    return binary


def ffmpeg_true_peak_dbtp(path: Path) -> float:
    """The true peak ffmpeg's `ebur128=peak=true` filter reports for `path`, dBTP (it prints one
    decimal)."""
    assert shutil.which("ffmpeg"), "ffmpeg is needed for the independent true-peak check (.ci/run installs it)"
    r = subprocess.run(
        ["ffmpeg", "-nostats", "-hide_banner", "-i", str(path), "-af", "ebur128=peak=true", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = r.stderr[r.stderr.rfind("Summary:") :]
    m = re.search(r"True peak:\s*\n\s*Peak:\s*(-?[\d.]+|-inf)", summary)
    assert m, f"no true peak in ffmpeg's summary:\n{summary}"
    return float(m.group(1))


def wav_format(path: Path) -> "tuple[int, int, int]":
    """(sample rate Hz, channels, bits per sample) from a WAV file's fmt chunk (the standard
    library's `wave` reads no WAVE_FORMAT_EXTENSIBLE header before Python 3.12)."""
    import struct

    data = Path(path).read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", path
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if cid == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
            return rate, channels, bits
        pos += 8 + size + (size & 1)
    raise AssertionError(f"{path}: no fmt chunk")
