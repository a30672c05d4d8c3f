#!/usr/bin/env bash
# refmaster and Matchering on the same pairs, in one run: wall time and peak memory of each whole
# process (/usr/bin/time via ../shared/eval/scorecard.py), plus the scorecard's quality columns,
# then the ratios per pair.
#
#   benches/side_by_side.sh [PAIRS.tsv]
#
# Needs: a release build (cargo build --release), ../shared/eval with its Python venv
# (EVALPY, default ~/.venvs/eval/bin/python) and Matchering in its own venv
# (MATCHERING_PY, default ~/.venvs/matchering/bin/python). PAIRS.tsv defaults to the corpus that
# ../shared/corpus/fetch.sh writes.
set -euo pipefail
cd "$(dirname "$0")/.."
EVALPY=${EVALPY:-$HOME/.venvs/eval/bin/python}
MATCHERING_PY=${MATCHERING_PY:-$HOME/.venvs/matchering/bin/python}
PAIRS=${1:-$HOME/.cache/refmaster-corpus/pairs.tsv}
SHARED=$(cd ../shared && pwd)
OUT=$(mktemp -d)
"$EVALPY" "$SHARED/eval/scorecard.py" "$PAIRS" --out "$OUT" --json "$OUT/rows.json" \
  --engine "refmaster=$PWD/target/release/refmaster {mix} --ref {ref} -o {out} --quiet" \
  --engine "matchering=$MATCHERING_PY $SHARED/eval/matchering_run.py {mix} {ref} {out}"
"$EVALPY" - "$OUT/rows.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
by = {}
for r in rows:
    by.setdefault(r["pair"], {})[r["engine"]] = r
print("\n%-24s %10s %10s" % ("pair", "speed-up", "memory"))
for pair, e in by.items():
    if "refmaster" in e and "matchering" in e:
        a, b = e["refmaster"], e["matchering"]
        print("%-24s %9.1fx %9.2fx" % (pair, b["wall_s"] / a["wall_s"], a["rss_mb"] / b["rss_mb"]))
print("(speed-up: Matchering's wall time over refmaster's; memory: refmaster's peak RSS over Matchering's)")
PY
