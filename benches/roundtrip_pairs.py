#!/usr/bin/env python3
"""Builds extra round trips for the scorecard: finished tracks un-mastered, to be mastered back.

    ~/.venvs/eval/bin/python benches/roundtrip_pairs.py OUT_DIR [--corpus ~/.cache/refmaster-corpus/x]

writes OUT_DIR/roundtrips.tsv (name, mix, ref) for `../shared/eval/scorecard.py`. Each truth is a
60 s excerpt (from 30 s in) of a finished track from the corpus, written as FLAC beside the mix;
the audio is made here and never committed. Two kinds of un-mastering:

- `refeval.py degrade --seed N` (tilt, narrower image, slow broadband expansion, lower level) on
  songs and seeds the shipped corpus does not use;
- degradations of our own, to test what `degrade` never does: expansion in separate bands with
  their own time constants and amounts, a broad bell, an image narrowed above a frequency only,
  and one with no expansion at all (the dynamics stage must then stay off).
"""
import argparse
import os
import subprocess
import sys

import numpy as np
import soundfile
from scipy import signal

HERE = os.path.dirname(os.path.abspath(__file__))
REFEVAL = os.path.join(HERE, "..", "..", "shared", "eval", "refeval.py")

# (name, song, seed) for refeval's own degrade
DEGRADE = [
    ("casualties_degrade_s3", "casualties_of_war.ogg", 3),
    ("minstrels_degrade_s5", "traveling_minstrels.ogg", 5),
    ("nebula_degrade_s7", "Nebula.ogg", 7),
    ("shadows_degrade_s21", "into_the_shadows.ogg", 21),
]

# (name, song, recipe) for our own degradations
OWN = [
    ("shadows_bandexp", "into_the_shadows.ogg", "bandexp"),
    ("music009_bandexp", "music009.ogg", "bandexp"),
    ("casualties_bell_narrowtop", "casualties_of_war.ogg", "bell"),
    ("nebula_tone_only", "Nebula.ogg", "tone"),
]


def excerpt(src, dst, start_s=30.0, dur_s=60.0):
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-ss", str(start_s), "-t", str(dur_s), "-i", src, "-c:a", "flac", dst],
        check=True,
    )


def envelope_db(x, sr, tau_s):
    a = np.exp(-1.0 / (tau_s * sr))
    env = signal.lfilter([1 - a], [1, -a], x**2)
    return 10 * np.log10(env + 1e-12)


def expand(x, detector, sr, tau_s, amount, limit_db=6.0):
    """Upward/downward expansion of `x` around the median of `detector`'s level (RMS, `tau_s`)."""
    env_db = envelope_db(detector, sr, tau_s)
    g_db = np.clip((env_db - np.median(env_db)) * amount, -limit_db, limit_db)
    return x * 10 ** (g_db / 20)


def split3(x, sr, f1, f2):
    """Low, middle and high parts of `x` that add back to `x` (complementary Butterworth)."""
    lo = signal.sosfiltfilt(signal.butter(2, f1, "lowpass", fs=sr, output="sos"), x)
    hi = signal.sosfiltfilt(signal.butter(2, f2, "highpass", fs=sr, output="sos"), x)
    return lo, x - lo - hi, hi


def bell(x, sr, fc, gain_db, q):
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * fc / sr
    alpha = np.sin(w) / (2 * q)
    b = [1 + alpha * a, -2 * np.cos(w), 1 - alpha * a]
    den = [1 + alpha / a, -2 * np.cos(w), 1 - alpha / a]
    return signal.lfilter(b, den, x)


def own(src, dst, recipe, seed):
    rng = np.random.default_rng(seed)
    x, sr = soundfile.read(src, always_2d=True)
    if x.shape[1] == 1:
        x = np.repeat(x, 2, axis=1)
    mid, side = (x[:, 0] + x[:, 1]) / 2, (x[:, 0] - x[:, 1]) / 2
    if recipe == "bandexp":
        # lows expanded slowly and a lot, highs quickly and a little, the middle barely
        parts_m, parts_s = split3(mid, sr, 200, 4000), split3(side, sr, 200, 4000)
        taus, amounts = (0.3, 0.08, 0.02), (0.35, 0.1, 0.25)
        mid = np.zeros_like(mid)
        side = np.zeros_like(side)
        for pm, ps, tau, amt in zip(parts_m, parts_s, taus, amounts):
            env_db = envelope_db(pm, sr, tau)
            g = 10 ** (np.clip((env_db - np.median(env_db)) * amt, -6, 6) / 20)
            mid += pm * g
            side += ps * g
        mid = bell(mid, sr, 2500, rng.uniform(-3, 3), 0.8)
        side *= 10 ** (-3 / 20)
    elif recipe == "bell":
        # a broad bell, slow broadband expansion, an image narrowed above 3 kHz only
        mid = bell(mid, sr, 700, 4.0, 0.6)
        env_db = envelope_db(mid, sr, 0.5)
        g = 10 ** (np.clip((env_db - np.median(env_db)) * 0.25, -6, 6) / 20)
        mid, side = mid * g, side * g
        lo = signal.sosfiltfilt(signal.butter(2, 3000, "lowpass", fs=sr, output="sos"), side)
        side = lo + (side - lo) * 10 ** (-6 / 20)
    elif recipe == "tone":
        # tone and image only: the dynamics are the finished track's own
        lo = signal.sosfiltfilt(signal.butter(2, 150, "lowpass", fs=sr, output="sos"), mid)
        mid = mid + lo * (10 ** (3 / 20) - 1)
        mid = bell(mid, sr, 5000, -3.0, 0.7)
        side *= 10 ** (-4 / 20)
    else:
        raise ValueError(recipe)
    y = np.stack([mid + side, mid - side], axis=1)
    y *= 10 ** (rng.uniform(-12, -8) / 20) / max(1e-9, np.max(np.abs(y)))
    soundfile.write(dst, y.astype(np.float32), sr, subtype="PCM_24")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--corpus", default=os.path.expanduser("~/.cache/refmaster-corpus/x"))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name, song, seed in DEGRADE:
        truth = os.path.join(args.out, f"{name}_truth.flac")
        mix = os.path.join(args.out, f"{name}_mix.wav")
        excerpt(os.path.join(args.corpus, song), truth)
        subprocess.run([sys.executable, REFEVAL, "degrade", truth, mix, "--seed", str(seed)], check=True,
                       stdout=subprocess.DEVNULL)
        rows.append((name + "_roundtrip", mix, truth))
    for i, (name, song, recipe) in enumerate(OWN):
        truth = os.path.join(args.out, f"{name}_truth.flac")
        mix = os.path.join(args.out, f"{name}_mix.wav")
        excerpt(os.path.join(args.corpus, song), truth)
        own(truth, mix, recipe, 100 + i)
        rows.append((name + "_roundtrip", mix, truth))
    tsv = os.path.join(args.out, "roundtrips.tsv")
    with open(tsv, "w") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")
    print(tsv)


if __name__ == "__main__":
    main()
