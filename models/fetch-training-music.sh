#!/usr/bin/env bash
# Fetches the music models/default.targets.json is learned from: every music track of seven
# Debian `main` soundtrack packages (freely licensed; see models/README.md for each track's
# licence), downloaded with `apt-get download` into
# ${REFMASTER_CORPUS:-$HOME/.cache/refmaster-corpus}/debs (the folder .ci/fetch-corpus uses too)
# and unpacked into its training/ folder:
#
#   training/train/    4 of every 5 tracks (the model learns from these)
#   training/holdout/  every 5th track by sorted file name (index 4, 9, 14, ... counting from 0),
#                      never seen by `learn`: the held-out check of models/README.md uses them
#
# Files are named PACKAGE--NAME.EXT (warzone2100-music's Opus files, which refmaster's decoder
# does not read, are decoded by ffmpeg's native Opus decoder into 24-bit FLAC at their own 48 kHz,
# bit-exact flags on). Then every file is checked against models/training-music.tsv (sha256 of
# what was extracted), so a rebuild learns from the very same audio; a mismatch (a newer package
# version) is reported and the script fails unless REFMASTER_ALLOW_NEW_MUSIC=1.
#
# Idempotent: returns at once when every file is already there. Needs apt-get, dpkg-deb, ffmpeg
# and sha256sum (any Debian). Prints the training/ folder.
set -euo pipefail

C=${REFMASTER_CORPUS:-$HOME/.cache/refmaster-corpus}
T=$C/training
HERE=$(cd "$(dirname "$0")" && pwd)
MANIFEST=$HERE/training-music.tsv

# package -> folder inside the package holding its music, and which files of it are music
# (a shell glob on the base name; frozen-bubble-data keeps its sound effects beside the music).
declare -A DIR=(
  [colobot-common-sounds]=usr/share/games/colobot/music
  [wesnoth-1.16-music]=usr/share/games/wesnoth/1.16/data/core/music
  [singularity-music]=usr/share/games/singularity/music
  [frozen-bubble-data]=usr/share/games/frozen-bubble/snd
  [hyperrogue-music]=usr/share/hyperrogue/music
  [extremetuxracer-data]=usr/share/games/etr/music
  [warzone2100-music]=usr/share/games/warzone2100/music
)
declare -A GLOB=(
  [frozen-bubble-data]='*zik*.ogg'
  [warzone2100-music]='*.opus'
)
PACKAGES=(colobot-common-sounds wesnoth-1.16-music singularity-music frozen-bubble-data
  hyperrogue-music extremetuxracer-data warzone2100-music)

# Columns of files.tsv and training-music.tsv: split, file, package, version, path in package,
# sha256 of the extracted (or, for Opus, decoded) file.
matches_manifest() {
  [[ ! -s $MANIFEST ]] || diff <(grep -v '^#' "$MANIFEST") "$T/files.tsv" >"$T/manifest.diff"
}
all_there() {
  local split name rest
  [[ -s $T/.complete && -s $T/files.tsv ]] || return 1
  while IFS=$'\t' read -r split name rest; do
    [[ -s $T/$split/$name ]] || return 1
  done <"$T/files.tsv"
  matches_manifest
}
if all_there; then
  echo "$T"
  exit 0
fi
rm -f "$T/.complete"

for tool in apt-get dpkg-deb ffmpeg sha256sum; do
  command -v $tool >/dev/null || { echo "fetch-training-music: needs $tool" >&2; exit 1; }
done
mkdir -p "$C/debs" "$T"
cd "$C/debs"

updated=0
fetch_deb() { # $1 = package; prints the .deb's path
  local pkg=$1 deb
  deb=$(ls "${pkg}"_*.deb 2>/dev/null | head -1 || true)
  if [[ -z $deb ]]; then
    echo "fetch-training-music: downloading $pkg" >&2
    if ! apt-get download -qq "$pkg" 2>"$C/debs/apt.log"; then
      if ((!updated)); then
        echo "fetch-training-music: apt-get update" >&2
        apt-get update -qq
        updated=1
      fi
      apt-get download -qq "$pkg" 2>"$C/debs/apt.log" || { cat "$C/debs/apt.log" >&2; exit 1; }
    fi
    deb=$(ls "${pkg}"_*.deb | head -1)
  fi
  echo "$C/debs/$deb"
}

# Unpack every package's music into all/ (flat, PACKAGE--NAME), then split.
rm -rf "$T/all.tmp"
mkdir -p "$T/all.tmp"
: >"$T/all.tmp/.provenance"
for pkg in "${PACKAGES[@]}"; do
  deb=$(fetch_deb "$pkg")
  version=$(dpkg-deb -f "$deb" Version)
  tmp=$(mktemp -d "$C/.extract.XXXXXX")
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "./${DIR[$pkg]}"
  glob=${GLOB[$pkg]:-*.ogg}
  while IFS= read -r -d '' src; do
    inner=${src#"$tmp/"}
    rel=${inner#"${DIR[$pkg]}/"}
    flat=${rel//\//-}
    if [[ $src == *.opus ]]; then
      out="$T/all.tmp/$pkg--${flat%.opus}.flac"
      ffmpeg -nostdin -v error -c:a opus -i "$src" -map_metadata -1 -c:a flac -sample_fmt s32 \
        -bits_per_raw_sample 24 -fflags +bitexact -flags:a +bitexact "$out"
    else
      out="$T/all.tmp/$pkg--$flat"
      cp "$src" "$out"
    fi
    printf '%s\t%s\t%s\t/%s\n' "$(basename "$out")" "$pkg" "$version" "$inner" >>"$T/all.tmp/.provenance"
  done < <(find "$tmp/${DIR[$pkg]}" -type f -name "$glob" -print0)
  rm -rf "$tmp"
done

# Split by sorted name (C locale): every 5th file is held out.
rm -rf "$T/train" "$T/holdout"
mkdir -p "$T/train" "$T/holdout"
i=0
: >"$T/files.tsv"
while IFS= read -r name; do
  if ((i % 5 == 4)); then split=holdout; else split=train; fi
  mv "$T/all.tmp/$name" "$T/$split/$name"
  sum=$(sha256sum "$T/$split/$name" | cut -d' ' -f1)
  prov=$(awk -F'\t' -v n="$name" '$1 == n { sub(/^[^\t]*\t/, ""); print; exit }' "$T/all.tmp/.provenance")
  printf '%s\t%s\t%s\t%s\n' "$split" "$name" "$prov" "$sum" >>"$T/files.tsv"
  i=$((i + 1))
done < <(find "$T/all.tmp" -maxdepth 1 -type f ! -name '.*' -printf '%f\n' | LC_ALL=C sort)
rm -rf "$T/all.tmp"

if ! matches_manifest; then
    echo "fetch-training-music: the extracted music differs from models/training-music.tsv" \
      "(see $T/manifest.diff): a rebuild would not learn from the same audio" >&2
    [[ ${REFMASTER_ALLOW_NEW_MUSIC:-0} == 1 ]] || exit 1
fi
date -u +%FT%TZ >"$T/.complete"
echo "$T"
