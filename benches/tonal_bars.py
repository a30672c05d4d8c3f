#!/usr/bin/env python3
"""Issue 17's tonal bars on cross-song pairs, measured with refeval (the independent meter).

For each pair (TSV: name, mix, ref) and each engine (a command with {mix} {ref} {out}, as
scorecard.py takes it), renders the master (or reuses OUT_DIR/NAME.ENGINE.wav) and prints:

  tone     refeval's tonal_error_db (octave bands 62.5 Hz-8 kHz, level offset removed)
  tone10   the same error over only the octave bands where the mix's gap to the reference
           (level offset removed) is within +-10 dB: the bands mastering is asked to close
  bands    how many of the 8 octave bands that is
  rough    refeval's eq_roughness_db (master over mix, 1/12 octave, against its octave smoothing)

Usage: tonal_bars.py PAIRS.tsv OUT_DIR --engine NAME=CMD [--engine ...] [--reuse]
Run with ~/.venvs/eval/bin/python. benches/cross_song_pairs.tsv lists the corpus's cross-song
pairs (paths may start with ~). Example, issue 17's reading:

  ~/.venvs/eval/bin/python benches/tonal_bars.py benches/cross_song_pairs.tsv /tmp/bars \
    --engine "14=target/release/refmaster {mix} --ref {ref} -o {out} -q --lufs -14 --max-eq-db 12"
"""
import argparse
import os
import shlex
import subprocess
import sys

import numpy as np

sys.path.insert(0, "/work/shared/eval")
import refeval  # noqa: E402

GAP_LIMIT_DB = 10.0


def restricted_tonal_error(master_band_db, ref_band_db, mix_band_db):
    """Octave-band tonal error over the bands whose mix-to-reference gap is within +-10 dB."""
    ref = refeval.octave_levels(ref_band_db)
    gap = refeval.octave_levels(mix_band_db) - ref
    ok = np.isfinite(gap)
    gap = gap - np.mean(gap[ok])
    keep = ok & (np.abs(gap) <= GAP_LIMIT_DB)
    d = (refeval.octave_levels(master_band_db) - ref)[keep]
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan"), 0
    return float(np.mean(np.abs(d - d.mean()))), int(len(d))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs")
    ap.add_argument("out_dir")
    ap.add_argument("--engine", action="append", required=True, help="NAME=CMD with {mix} {ref} {out}")
    ap.add_argument("--reuse", action="store_true", help="reuse masters already rendered in OUT_DIR")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    pairs = [[os.path.expanduser(v) for v in line.rstrip("\n").split("\t")]
             for line in open(args.pairs) if line.strip() and not line.startswith("#")]
    engines = [e.split("=", 1) for e in args.engine]
    print(f"{'pair':28} {'engine':12} {'tone':>6} {'tone10':>7} {'bands':>5} {'rough':>6}")
    for name, mix, ref in pairs:
        mix_m, ref_m = refeval.measure(mix), refeval.measure(ref)
        for eng, cmd in engines:
            out = os.path.join(args.out_dir, f"{name}.{eng}.wav")
            if not (args.reuse and os.path.exists(out)):
                line = cmd.format(mix=shlex.quote(mix), ref=shlex.quote(ref), out=shlex.quote(out))
                subprocess.run(line, shell=True, check=True, stdout=subprocess.DEVNULL)
            m = refeval.measure(out)
            tone = refeval.tonal_error(m["mid_band_db"], ref_m["mid_band_db"])
            tone10, n = restricted_tonal_error(m["mid_band_db"], ref_m["mid_band_db"], mix_m["mid_band_db"])
            rough = refeval.eq_character(out, mix)["eq_roughness_db"]
            print(f"{name:28} {eng:12} {tone:6.2f} {tone10:7.2f} {n:5d} {rough:6.2f}", flush=True)


if __name__ == "__main__":
    main()
