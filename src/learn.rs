//! Learned targets: mastering without a reference track.
//!
//! `refmaster learn DIR... -o my.targets.json` measures a collection of finished music, turns each
//! track's [`Profile`] into a feature vector ([`features`]), standardises the features (z-scores)
//! and clusters the tracks with linfa-clustering's k-means. Each cluster becomes a *target*: the
//! average profile of its members ([`crate::solve::average_profiles`]; spectra averaged, band by
//! band, over the members that have content there, the cutoff the members' median), which the
//! solver takes exactly like a reference, plus its members, its spread and its character in
//! numbers.
//!
//! - **Junk** is skipped, with the reason: silence or below −50 LUFS, under 10 s, mono or dual mono
//!   (side/mid below −40 dB), content stopping below 11 kHz ([`junk_reason`]).
//! - **Features** (26): the loudness-normalised tonal balance of the mid (mean level per octave
//!   band, 31.5 Hz–16 kHz, minus the mean over 40 Hz–16 kHz), the side's balance relative to the
//!   mid in the five width bands (side/mid per band minus the overall side/mid), crest and spread
//!   in the four dynamics bands, overall side/mid width, integrated loudness and PLR.
//! - **k**: `--k N`, or else the k in 2..=min(8, n−1) with the highest mean silhouette score
//!   ([`K_CRITERION`]).
//! - **Distance** between a profile and a target: Euclidean on the standardised features
//!   ([`DISTANCE`]), to the centroid (the mean standardised features of the target's members).
//! - **Reproducible**: files are sorted by name, the k-means starts come from a seeded
//!   Xoshiro256+, and nothing machine-specific (paths, times) is written, so the same files and
//!   seed rebuild the same JSON.
//!
//! `refmaster MIX` without `--ref` masters toward the nearest target of the built-in model
//! (`models/default.targets.json`, compiled in); `--target` names one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::analysis::{analyze, Profile};
use crate::decode::decode_file;
use crate::error::{Error, Result};
use crate::solve::{average_profiles, average_profiles_weighted, shape_offset, SHAPE_RANGE_HZ};

/// Version of the targets file's JSON schema; bumped on any incompatible change.
pub const TARGETS_SCHEMA_VERSION: u32 = 1;
/// How distances between profiles and targets are measured (written into every model).
pub const DISTANCE: &str = "euclidean on standardised features";
/// How `learn` picks k when `--k` is not given (written into every model).
pub const K_CRITERION: &str = "highest mean silhouette score over k = 2..=min(8, n-1) (Euclidean distance on \
                               standardised features; a track alone in its cluster scores 0; ties go to the \
                               smaller k)";
/// The model compiled into refmaster, used when the mix is given no `--ref`.
pub const DEFAULT_MODEL_JSON: &str = include_str!("../models/default.targets.json");
/// Extensions `learn` looks for in folders (case-insensitive).
pub const AUDIO_EXTENSIONS: [&str; 9] = ["wav", "flac", "mp3", "ogg", "m4a", "aac", "aiff", "aif", "alac"];

/// Tracks quieter than this (integrated) are skipped, LUFS.
pub const MIN_LOUDNESS_LUFS: f64 = -50.0;
/// Tracks shorter than this are skipped, s.
pub const MIN_DURATION_S: f64 = 10.0;
/// Tracks whose side/mid ratio is below this are skipped as dual mono, dB.
pub const MIN_WIDTH_DB: f64 = -40.0;
/// Tracks whose content stops below this are skipped as band-limited, Hz.
pub const MIN_CUTOFF_HZ: f64 = 11_000.0;
/// Centres of the octave bands of the mid tonal-balance features, Hz.
pub const OCTAVE_CENTRES_HZ: [f64; 10] = [31.5, 63.0, 125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0];
/// Tonal-balance values are floored this far below the 40 Hz–16 kHz mean, dB (an empty top
/// octave must not outweigh everything else).
pub const TONAL_FLOOR_DB: f64 = -60.0;
/// Most k tried when `--k` is not given.
pub const MAX_AUTO_K: usize = 8;
/// k-means runs (k-means++ starts) per k; the one with the lowest inertia is kept.
pub const KMEANS_RUNS: usize = 10;

/// A learned model: the feature standardisation and the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetModel {
    /// Schema version ([`TARGETS_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Names of the features, in vector order.
    pub feature_names: Vec<String>,
    /// Mean of each feature over the training tracks (for the z-scores).
    pub feature_means: Vec<f64>,
    /// Standard deviation of each feature over the training tracks (1 where it was 0).
    pub feature_stds: Vec<f64>,
    /// How distances are measured ([`DISTANCE`]).
    pub distance: String,
    /// How k was chosen, and the silhouette score of every k tried.
    pub k_selection: KSelection,
    /// Seed of the k-means starts.
    pub seed: u64,
    /// Number of tracks the model was learned from.
    pub trained_on: usize,
    /// Files found but not learned from, with the reason.
    pub skipped: Vec<Skipped>,
    /// The targets, largest first.
    pub targets: Vec<Target>,
}

/// How k was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KSelection {
    /// The rule ([`K_CRITERION`], or that `--k` was given).
    pub criterion: String,
    /// The k used.
    pub k: usize,
    /// Mean silhouette score of each k tried (empty when `--k` was given).
    pub silhouette_by_k: Vec<KScore>,
}

/// The mean silhouette score of one k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KScore {
    /// Number of clusters.
    pub k: usize,
    /// Mean silhouette score (−1..1, higher is better separated).
    pub silhouette: f64,
}

/// A file `learn` did not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// The file's name (relative to the folder it was found in).
    pub file: String,
    /// Why it was skipped.
    pub reason: String,
}

/// One learned target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Name made from the measured character (e.g. `loud-bright-dense`); unique in the model.
    pub name: String,
    /// Number of member tracks.
    pub size: usize,
    /// Mean distance of the members to the centroid (standardised feature units).
    pub spread: f64,
    /// Member file names.
    pub members: Vec<String>,
    /// The target's character in numbers.
    pub character: Character,
    /// Mean standardised features of the members: what distances are measured to.
    pub centroid: Vec<f64>,
    /// The average profile of the members: what the solver masters toward.
    pub profile: Profile,
}

/// A profile's character in numbers (of a target: of its average profile).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Character {
    /// Integrated loudness, LUFS.
    pub lufs: f64,
    /// Peak-to-loudness ratio, dB.
    pub plr_db: f64,
    /// Loudness range, LU.
    pub lra_lu: f64,
    /// Mean crest factor of the four dynamics bands, dB.
    pub crest_db: f64,
    /// Mean 3 s level spread of the four dynamics bands, dB.
    pub spread_db: f64,
    /// Side-to-mid ratio, dB.
    pub width_db: f64,
    /// Slope of the mid spectrum over 40 Hz–16 kHz (least squares on the 1/6-octave grid),
    /// dB per octave.
    pub tilt_db_per_octave: f64,
    /// Mid level over 40–250 Hz relative to the 40 Hz–16 kHz mean, dB.
    pub low_db: f64,
    /// Mid level over 4–16 kHz relative to the 40 Hz–16 kHz mean, dB.
    pub high_db: f64,
}

/// Options of [`learn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnOptions {
    /// Number of targets (None: chosen by [`K_CRITERION`]).
    pub k: Option<usize>,
    /// Seed of the k-means starts.
    pub seed: u64,
}

impl Default for LearnOptions {
    fn default() -> Self {
        Self { k: None, seed: 1 }
    }
}

/// A measured training track.
#[derive(Debug, Clone)]
pub struct Track {
    /// Name written into the model (relative to the folder it was found in).
    pub name: String,
    /// Its profile.
    pub profile: Profile,
}

// ---------------------------------------------------------------------------------------------
// Junk and features

/// Why `profile` is no use as training music, or None when it is.
pub fn junk_reason(p: &Profile) -> Option<String> {
    let lufs = p.loudness.integrated_lufs;
    if !lufs.is_finite() {
        return Some("silent (nothing above the -70 LUFS gate)".into());
    }
    if lufs < MIN_LOUDNESS_LUFS {
        return Some(format!("too quiet: {lufs:.1} LUFS, below {MIN_LOUDNESS_LUFS:.0} LUFS"));
    }
    if p.duration_s < MIN_DURATION_S {
        return Some(format!("too short: {:.1} s, under {MIN_DURATION_S:.0} s", p.duration_s));
    }
    if p.channels < 2 {
        return Some("mono (one channel)".into());
    }
    if p.stereo.width_db < MIN_WIDTH_DB {
        return Some(format!(
            "dual mono: side/mid {} dB, below {MIN_WIDTH_DB:.0} dB",
            crate::report::fmt_db(p.stereo.width_db)
        ));
    }
    if p.spectrum.content_cutoff_hz < MIN_CUTOFF_HZ {
        return Some(format!(
            "band-limited: content stops at {:.1} kHz, below {:.0} kHz",
            p.spectrum.content_cutoff_hz / 1000.0,
            MIN_CUTOFF_HZ / 1000.0
        ));
    }
    if let Err(e) = features(p) {
        return Some(e);
    }
    None
}

fn dynamics_band_label(i: usize) -> &'static str {
    ["low", "lowmid", "highmid", "high"].get(i).copied().unwrap_or("band")
}

fn hz_label(f: f64) -> String {
    if f >= 1000.0 {
        format!("{}k", f / 1000.0)
    } else {
        format!("{f}")
    }
}

/// Names of the feature vector's entries, in order.
pub fn feature_names() -> Vec<String> {
    let mut n: Vec<String> = OCTAVE_CENTRES_HZ.iter().map(|c| format!("mid_{}hz_db", hz_label(*c))).collect();
    for w in crate::analysis::WIDTH_BAND_EDGES_HZ.windows(2) {
        n.push(format!("side_{}_{}hz_re_width_db", hz_label(w[0]), hz_label(w[1])));
    }
    for i in 0..4 {
        n.push(format!("crest_{}_db", dynamics_band_label(i)));
    }
    for i in 0..4 {
        n.push(format!("spread_{}_db", dynamics_band_label(i)));
    }
    n.extend(["width_db", "lufs", "plr_db"].map(String::from));
    n
}

/// The mid spectrum relative to its mean over 40 Hz–16 kHz, floored at [`TONAL_FLOOR_DB`].
fn relative_mid(p: &Profile) -> Vec<f64> {
    let grid = &p.spectrum.frequencies_hz;
    let mid = &p.spectrum.mid_db;
    let inside: Vec<f64> = grid
        .iter()
        .zip(mid)
        .filter(|(f, _)| (SHAPE_RANGE_HZ.0..=SHAPE_RANGE_HZ.1).contains(*f))
        .map(|(_, v)| *v)
        .collect();
    let mean = inside.iter().sum::<f64>() / inside.len().max(1) as f64;
    mid.iter().map(|v| (v - mean).max(TONAL_FLOOR_DB)).collect()
}

fn mean_in(grid: &[f64], values: &[f64], lo: f64, hi: f64) -> f64 {
    let v: Vec<f64> = grid.iter().zip(values).filter(|(f, _)| **f >= lo && **f < hi).map(|(_, v)| *v).collect();
    if v.is_empty() {
        TONAL_FLOOR_DB
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The feature vector of a profile (see [`feature_names`]), or why it cannot be made.
pub fn features(p: &Profile) -> std::result::Result<Vec<f64>, String> {
    if p.dynamics.len() != 4 || p.stereo.bands.len() != crate::analysis::WIDTH_BAND_EDGES_HZ.len() - 1 {
        return Err("profile does not match this refmaster's analysis bands".into());
    }
    let grid = &p.spectrum.frequencies_hz;
    let rel = relative_mid(p);
    let mut f: Vec<f64> = OCTAVE_CENTRES_HZ
        .iter()
        .map(|c| mean_in(grid, &rel, c / std::f64::consts::SQRT_2, c * std::f64::consts::SQRT_2))
        .collect();
    let width = p.stereo.width_db.max(MIN_WIDTH_DB);
    f.extend(p.stereo.bands.iter().map(|b| b.side_to_mid_db.max(MIN_WIDTH_DB) - width));
    f.extend(p.dynamics.iter().map(|d| d.crest_db));
    f.extend(p.dynamics.iter().map(|d| d.spread_db));
    f.extend([width, p.loudness.integrated_lufs, p.loudness.plr_db]);
    if let Some(i) = f.iter().position(|v| !v.is_finite()) {
        return Err(format!("feature {} is not measurable (silent band?)", feature_names()[i]));
    }
    Ok(f)
}

/// The character of a profile in numbers.
pub fn character(p: &Profile) -> Character {
    let grid = &p.spectrum.frequencies_hz;
    let rel = relative_mid(p);
    // Least-squares slope of the relative mid level against log2(f) over 40 Hz–16 kHz.
    let pts: Vec<(f64, f64)> = grid
        .iter()
        .zip(&rel)
        .filter(|(f, _)| (SHAPE_RANGE_HZ.0..=SHAPE_RANGE_HZ.1).contains(*f))
        .map(|(f, v)| (f.log2(), *v))
        .collect();
    let n = pts.len().max(1) as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let mean = |f: &dyn Fn(&crate::analysis::BandDynamics) -> f64| {
        p.dynamics.iter().map(f).sum::<f64>() / p.dynamics.len().max(1) as f64
    };
    Character {
        lufs: p.loudness.integrated_lufs,
        plr_db: p.loudness.plr_db,
        lra_lu: p.loudness.range_lu,
        crest_db: mean(&|d| d.crest_db),
        spread_db: mean(&|d| d.spread_db),
        width_db: p.stereo.width_db,
        tilt_db_per_octave: if sxx > 0.0 { sxy / sxx } else { 0.0 },
        low_db: mean_in(grid, &rel, 40.0, 250.0),
        high_db: mean_in(grid, &rel, 4000.0, 16000.0 * 1.0001),
    }
}

/// Tonal distance of two profiles: mean |difference| of the mid spectra over 40 Hz–16 kHz after
/// removing their median difference (the level), dB.
pub fn tonal_error_db(a: &Profile, b: &Profile) -> f64 {
    let grid = &a.spectrum.frequencies_hz;
    let d: Vec<f64> = a.spectrum.mid_db.iter().zip(&b.spectrum.mid_db).map(|(x, y)| x - y).collect();
    let valid = vec![true; grid.len()];
    let offset = shape_offset(grid, &d, &valid);
    let inside: Vec<f64> = grid
        .iter()
        .zip(&d)
        .filter(|(f, _)| (SHAPE_RANGE_HZ.0..=SHAPE_RANGE_HZ.1).contains(*f))
        .map(|(_, v)| (v - offset).abs())
        .collect();
    inside.iter().sum::<f64>() / inside.len().max(1) as f64
}

// ---------------------------------------------------------------------------------------------
// Finding and measuring files

fn has_audio_extension(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| AUDIO_EXTENSIONS.iter().any(|a| a.eq_ignore_ascii_case(e)))
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::input(dir, format!("cannot list: {e}")))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if hidden {
            continue;
        }
        if meta.is_dir() {
            walk(&p, root, out)?;
        } else if has_audio_extension(&p) && std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            out.push((p.clone(), name));
        }
    }
    Ok(())
}

/// The audio files named by `inputs` (files as given, folders searched recursively for
/// [`AUDIO_EXTENSIONS`], hidden entries skipped), each with the name the model will use (its path
/// relative to the folder it was found in), sorted by that name.
pub fn find_audio_files(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::input(input, format!("cannot read: {e}")))?;
        if meta.is_dir() {
            walk(input, input, &mut out)?;
        } else {
            let name = input.file_name().map_or_else(|| input.display().to_string(), |n| n.to_string_lossy().into());
            out.push((input.clone(), name));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Decodes and analyses one file into a training track, or says why it is not one.
pub fn measure_track(path: &Path, name: &str) -> std::result::Result<Profile, String> {
    let (audio, info) = decode_file(path).map_err(|e| match e {
        Error::Input { reason, .. } => format!("cannot decode: {reason}"),
        other => format!("cannot decode: {other}"),
    })?;
    let mut profile = analyze(&audio, name, info.lossy);
    drop(audio);
    profile.envelopes = None;
    match junk_reason(&profile) {
        Some(reason) => Err(reason),
        None => Ok(profile),
    }
}

/// Measures `files` and sorts them into usable tracks and skipped files (with the reason).
fn measure_and_sort(
    files: &[(PathBuf, String)],
    jobs: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> (Vec<Track>, Vec<Skipped>) {
    let mut tracks = Vec::new();
    let mut skipped = Vec::new();
    for (name, r) in measure_tracks(files, jobs, progress) {
        match r {
            Ok(profile) => tracks.push(Track { name, profile }),
            Err(reason) => skipped.push(Skipped { file: name, reason }),
        }
    }
    (tracks, skipped)
}

/// Measures `files` on `jobs` threads (each pulling the next file), calling `progress` with a line
/// per file as it finishes. Results come back in `files` order.
pub fn measure_tracks(
    files: &[(PathBuf, String)],
    jobs: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Vec<(String, std::result::Result<Profile, String>)> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<std::result::Result<Profile, String>>>> = Mutex::new(vec![None; files.len()]);
    let total = files.len();
    let width = total.to_string().len();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, total.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((path, name)) = files.get(i) else { break };
                let r = measure_track(path, name);
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                let status = match &r {
                    Ok(p) => {
                        format!("ok, {} LUFS, {:.0} s", crate::report::fmt_db(p.loudness.integrated_lufs), p.duration_s)
                    }
                    Err(reason) => format!("skipped: {reason}"),
                };
                progress(&format!("[{n:>width$}/{total}] {name}: {status}"));
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    files
        .iter()
        .zip(results)
        .map(|((_, name), r)| (name.clone(), r.unwrap_or_else(|| Err("not measured (worker failed)".into()))))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Learning

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

/// Mean silhouette score of a labelling (Rousseeuw 1987): for each point, a = mean distance to
/// the rest of its cluster, b = the lowest mean distance to another cluster, s = (b − a)/max(a, b);
/// a point alone in its cluster scores 0. (linfa's `SilhouetteScore` scores such points 1, which
/// rewards splitting off outliers; hence this one.)
pub fn silhouette(x: &[Vec<f64>], labels: &[usize]) -> f64 {
    let n = x.len();
    let k = labels.iter().copied().max().map_or(0, |m| m + 1);
    if n < 2 || k < 2 {
        return 0.0;
    }
    let mut sizes = vec![0usize; k];
    for &l in labels {
        sizes[l] += 1;
    }
    let mut total = 0.0;
    for i in 0..n {
        let mut sums = vec![0.0; k];
        for j in 0..n {
            if i != j {
                sums[labels[j]] += distance(&x[i], &x[j]);
            }
        }
        let own = labels[i];
        if sizes[own] < 2 {
            continue;
        }
        let a = sums[own] / (sizes[own] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != own && sizes[c] > 0)
            .map(|c| sums[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() && a.max(b) > 0.0 {
            total += (b - a) / a.max(b);
        }
    }
    total / n as f64
}

/// k-means (linfa-clustering: k-means++ starts from a Xoshiro256+ seeded with `seed`, the best of
/// [`KMEANS_RUNS`] runs by inertia), returning compact labels 0..m (empty clusters dropped,
/// numbered by first appearance).
pub fn kmeans_labels(x: &[Vec<f64>], k: usize, seed: u64) -> Result<Vec<usize>> {
    use linfa::traits::{Fit, Predict};
    use linfa_clustering::KMeans;
    use rand_xoshiro::rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256Plus;
    let n = x.len();
    if k == 0 || k > n {
        return Err(Error::Unsupported(format!("cannot make {k} clusters of {n} tracks")));
    }
    if k == 1 {
        return Ok(vec![0; n]);
    }
    let d = x[0].len();
    let records = ndarray_linfa::Array2::from_shape_fn((n, d), |(i, j)| x[i][j]);
    let dataset = linfa::DatasetBase::from(records.clone());
    let model = KMeans::params_with_rng(k, Xoshiro256Plus::seed_from_u64(seed))
        .n_runs(KMEANS_RUNS)
        .max_n_iterations(1000)
        .tolerance(1e-10)
        .fit(&dataset)
        .map_err(|e| Error::Unsupported(format!("k-means with k = {k} failed: {e}")))?;
    let raw: ndarray_linfa::Array1<usize> = model.predict(&records);
    let mut map = BTreeMap::new();
    Ok(raw
        .iter()
        .map(|&c| {
            let next = map.len();
            *map.entry(c).or_insert(next)
        })
        .collect())
}

fn standardisation(raw: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = raw.len().max(1) as f64;
    let d = raw.first().map_or(0, Vec::len);
    let means: Vec<f64> = (0..d).map(|j| raw.iter().map(|r| r[j]).sum::<f64>() / n).collect();
    let stds: Vec<f64> = (0..d)
        .map(|j| {
            let s = (raw.iter().map(|r| (r[j] - means[j]).powi(2)).sum::<f64>() / n).sqrt();
            if s > 1e-9 {
                s
            } else {
                1.0
            }
        })
        .collect();
    (means, stds)
}

/// The naming axes: (adjective when high, adjective when low, value of a character).
type Axis = (&'static str, &'static str, fn(&Character) -> f64);
const AXES: [Axis; 5] = [
    ("loud", "quiet", |c| c.lufs),
    ("bright", "dark", |c| c.tilt_db_per_octave),
    ("dynamic", "dense", |c| c.plr_db + c.crest_db),
    ("wide", "narrow", |c| c.width_db),
    ("bassy", "lean", |c| c.low_db),
];
/// Axes whose cluster mean lies less than this many (track) standard deviations from the mean of
/// all tracks do not name the cluster.
const NAME_MIN_Z: f64 = 0.25;

/// Adjectives for a cluster, strongest first: each axis's z-score of the members' mean against
/// all tracks, the `max` strongest with |z| ≥ [`NAME_MIN_Z`] (or any |z| when `all`).
fn adjectives(members: &[Character], everyone: &[Character], max: usize, all: bool) -> Vec<&'static str> {
    let mut scored: Vec<(f64, usize, &'static str)> = AXES
        .iter()
        .enumerate()
        .map(|(i, (hi, lo, f))| {
            let vals: Vec<f64> = everyone.iter().map(f).collect();
            let n = vals.len().max(1) as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let sd = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-9);
            let m = members.iter().map(f).sum::<f64>() / members.len().max(1) as f64;
            let z = (m - mean) / sd;
            (z, i, if z >= 0.0 { *hi } else { *lo })
        })
        .filter(|(z, _, _)| all || z.abs() >= NAME_MIN_Z)
        .collect();
    scored.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()).then(a.1.cmp(&b.1)));
    scored.into_iter().take(max).map(|s| s.2).collect()
}

/// Unique names from measured character: up to three adjectives; clusters that share a name get
/// more adjectives, then numbers.
fn name_clusters(clusters: &[Vec<usize>], chars: &[Character]) -> Vec<String> {
    let members: Vec<Vec<Character>> = clusters.iter().map(|m| m.iter().map(|&i| chars[i]).collect()).collect();
    let make = |c: &[Character], max: usize, all: bool| {
        let a = adjectives(c, chars, max, all);
        if a.is_empty() {
            "balanced".to_string()
        } else {
            a.join("-")
        }
    };
    let mut names: Vec<String> = members.iter().map(|m| make(m, 3, false)).collect();
    let count = |names: &[String], n: &str| names.iter().filter(|x| x.as_str() == n).count();
    let dup: Vec<bool> = names.iter().map(|n| count(&names, n) > 1).collect();
    for (i, d) in dup.iter().enumerate() {
        if *d {
            names[i] = make(&members[i], AXES.len(), true);
        }
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let totals: BTreeMap<String, usize> = names.iter().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n.clone()).or_insert(0) += 1;
        m
    });
    names
        .into_iter()
        .map(|n| {
            if totals[&n] > 1 {
                let c = seen.entry(n.clone()).or_insert(0);
                *c += 1;
                format!("{n}-{c}")
            } else {
                n
            }
        })
        .collect()
}

/// Where some members have no content (above their content cutoff), replaces
/// [`average_profiles`]' spectra by the average of the members that do; sets the target's cutoff
/// to the members' median cutoff; counts the target as lossy only when that is below 20 kHz.
/// (`average_profiles` keeps the lowest cutoff of all: right for a few references, not for a
/// cluster of dozens, where one dull lossy file would stop the EQ at 12 kHz for every master.)
fn follow_content(target: &mut Profile, members: &[Profile]) {
    let mut cutoffs: Vec<f64> = members.iter().map(|p| p.spectrum.content_cutoff_hz).collect();
    cutoffs.sort_by(f64::total_cmp);
    let Some(&median) = cutoffs.get((cutoffs.len().saturating_sub(1)) / 2) else { return };
    for (i, f) in target.spectrum.frequencies_hz.clone().iter().enumerate() {
        let with: Vec<&Profile> = members.iter().filter(|p| p.spectrum.content_cutoff_hz >= *f).collect();
        if with.is_empty() || with.len() == members.len() {
            continue;
        }
        let n = with.len() as f64;
        target.spectrum.mid_db[i] = with.iter().map(|p| p.spectrum.mid_db[i]).sum::<f64>() / n;
        target.spectrum.side_db[i] = with.iter().map(|p| p.spectrum.side_db[i]).sum::<f64>() / n;
    }
    target.spectrum.content_cutoff_hz = median;
    // "Lossy" warns that the EQ stops early; a target whose members mostly reach 20 kHz does not.
    target.lossy = median < 20_000.0 && members.iter().any(|p| p.lossy);
}

/// Learns a model from measured tracks (in the order given; [`learn_files`] sorts them by name).
pub fn learn(tracks: &[Track], skipped: Vec<Skipped>, opts: &LearnOptions) -> Result<TargetModel> {
    let n = tracks.len();
    if n == 0 {
        return Err(Error::Unsupported("no usable tracks to learn from (all were skipped)".into()));
    }
    let raw: Vec<Vec<f64>> = tracks
        .iter()
        .map(|t| features(&t.profile).map_err(|e| Error::input(Path::new(&t.name), e)))
        .collect::<Result<_>>()?;
    let (means, stds) = standardisation(&raw);
    let z: Vec<Vec<f64>> =
        raw.iter().map(|r| r.iter().zip(means.iter().zip(&stds)).map(|(v, (m, s))| (v - m) / s).collect()).collect();
    let (labels, selection) = match opts.k {
        Some(k) => {
            if k == 0 || k > n {
                return Err(Error::Unsupported(format!("--k {k}: must be between 1 and the {n} usable tracks")));
            }
            let criterion = format!("--k {k} given");
            (kmeans_labels(&z, k, opts.seed)?, KSelection { criterion, k, silhouette_by_k: Vec::new() })
        }
        None if n < 3 => {
            let criterion = format!("{n} usable tracks: too few to cluster, one target");
            (vec![0; n], KSelection { criterion, k: 1, silhouette_by_k: Vec::new() })
        }
        None => {
            let mut best: Option<(f64, usize, Vec<usize>)> = None;
            let mut scores = Vec::new();
            for k in 2..=MAX_AUTO_K.min(n - 1) {
                let labels = kmeans_labels(&z, k, opts.seed)?;
                let s = silhouette(&z, &labels);
                scores.push(KScore { k, silhouette: s });
                if best.as_ref().is_none_or(|b| s > b.0) {
                    best = Some((s, k, labels));
                }
            }
            let (_, k, labels) = best.ok_or_else(|| Error::Unsupported("no k to try".into()))?;
            (labels, KSelection { criterion: K_CRITERION.to_string(), k, silhouette_by_k: scores })
        }
    };
    let m = labels.iter().copied().max().map_or(0, |l| l + 1);
    let mut clusters: Vec<Vec<usize>> = (0..m).map(|c| (0..n).filter(|&i| labels[i] == c).collect()).collect();
    clusters.retain(|c| !c.is_empty());
    // Largest first, ties by first member name (members are in name order).
    clusters.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| tracks[a[0]].name.cmp(&tracks[b[0]].name)));
    let chars: Vec<Character> = tracks.iter().map(|t| character(&t.profile)).collect();
    let names = name_clusters(&clusters, &chars);
    let d = means.len();
    let targets = clusters
        .iter()
        .zip(names)
        .map(|(members, name)| {
            let profiles: Vec<Profile> = members.iter().map(|&i| tracks[i].profile.clone()).collect();
            let mut profile = average_profiles(&profiles).ok_or_else(|| Error::Unsupported("empty cluster".into()))?;
            follow_content(&mut profile, &profiles);
            profile.source = format!("target {name}");
            profile.duration_s = profiles.iter().map(|p| p.duration_s).sum::<f64>() / profiles.len() as f64;
            profile.loudness.short_term_series_lufs = Vec::new();
            let centroid: Vec<f64> =
                (0..d).map(|j| members.iter().map(|&i| z[i][j]).sum::<f64>() / members.len() as f64).collect();
            let spread = members.iter().map(|&i| distance(&z[i], &centroid)).sum::<f64>() / members.len() as f64;
            Ok(Target {
                name,
                size: members.len(),
                spread,
                members: members.iter().map(|&i| tracks[i].name.clone()).collect(),
                character: character(&profile),
                centroid,
                profile,
            })
        })
        .collect::<Result<Vec<Target>>>()?;
    Ok(TargetModel {
        schema_version: TARGETS_SCHEMA_VERSION,
        feature_names: feature_names(),
        feature_means: means,
        feature_stds: stds,
        distance: DISTANCE.to_string(),
        k_selection: selection,
        seed: opts.seed,
        trained_on: n,
        skipped,
        targets,
    })
}

/// Finds, measures and learns: what `refmaster learn` does. `progress` gets a line per file.
pub fn learn_files(
    inputs: &[PathBuf],
    opts: &LearnOptions,
    jobs: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<TargetModel> {
    let files = find_audio_files(inputs)?;
    if files.is_empty() {
        return Err(Error::Unsupported(format!(
            "no audio files ({}) found in {}",
            AUDIO_EXTENSIONS.join(" "),
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let (tracks, skipped) = measure_and_sort(&files, jobs, progress);
    learn(&tracks, skipped, opts)
}

// ---------------------------------------------------------------------------------------------
// Using a model

impl TargetModel {
    /// Reads a targets file, checking its schema, its feature layout and every target's profile.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let m: TargetModel = serde_json::from_str(text)
            .map_err(|e| Error::input(path, format!("not a refmaster targets file ({e})")))?;
        if m.schema_version != TARGETS_SCHEMA_VERSION {
            return Err(Error::input(
                path,
                format!("targets schema version {} (this refmaster reads {TARGETS_SCHEMA_VERSION})", m.schema_version),
            ));
        }
        let d = feature_names().len();
        if m.feature_names != feature_names() || m.feature_means.len() != d || m.feature_stds.len() != d {
            return Err(Error::input(path, "targets file uses other features than this refmaster"));
        }
        if m.targets.is_empty() {
            return Err(Error::input(path, "targets file holds no targets"));
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite() && x.abs() < 1e6);
        if !finite(&m.feature_means) || !finite(&m.feature_stds) || m.feature_stds.iter().any(|s| *s <= 0.0) {
            return Err(Error::input(path, "targets file has non-finite feature means or non-positive spreads"));
        }
        for t in &m.targets {
            if t.size == 0 || t.size > m.trained_on || t.size != t.members.len() {
                return Err(Error::input(
                    path,
                    format!(
                        "target {}: size {} does not match its {} members (of {} tracks trained on)",
                        t.name,
                        t.size,
                        t.members.len(),
                        m.trained_on
                    ),
                ));
            }
            if !finite(&t.centroid) {
                return Err(Error::input(path, format!("target {}: centroid holds non-finite values", t.name)));
            }
            if t.centroid.len() != d {
                return Err(Error::input(
                    path,
                    format!("target {}: centroid has {} values, not {d}", t.name, t.centroid.len()),
                ));
            }
            let text = serde_json::to_string(&t.profile).map_err(|e| Error::input(path, e.to_string()))?;
            crate::analysis::profile_from_json(&text, path).map_err(|e| match e {
                Error::Input { reason, .. } => Error::input(path, format!("target {}: {reason}", t.name)),
                other => other,
            })?;
        }
        Ok(m)
    }

    /// The model as pretty JSON (what `learn` writes, without the final newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The standardised feature vector of a profile.
    pub fn standardise(&self, p: &Profile) -> std::result::Result<Vec<f64>, String> {
        let f = features(p)?;
        Ok(f.iter().zip(self.feature_means.iter().zip(&self.feature_stds)).map(|(v, (m, s))| (v - m) / s).collect())
    }

    /// Distance of a profile to every target, nearest first (ties in model order).
    pub fn distances(&self, p: &Profile) -> std::result::Result<Vec<(usize, f64)>, String> {
        let z = self.standardise(p)?;
        let mut d: Vec<(usize, f64)> =
            self.targets.iter().enumerate().map(|(i, t)| (i, distance(&z, &t.centroid))).collect();
        d.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        Ok(d)
    }

    /// The target called `name` (case-insensitive; spaces and underscores match hyphens).
    pub fn find(&self, name: &str) -> Option<&Target> {
        let norm = |s: &str| s.trim().to_lowercase().replace([' ', '_'], "-");
        self.targets.iter().find(|t| norm(&t.name) == norm(name))
    }

    /// The average of all targets, each weighted by its size: the one target a model without
    /// clusters would have.
    pub fn average_target(&self) -> Option<Profile> {
        let weighted: Vec<(&Profile, f64)> = self.targets.iter().map(|t| (&t.profile, t.size.max(1) as f64)).collect();
        average_profiles_weighted(&weighted)
    }
}

/// The model compiled into refmaster (`models/default.targets.json`).
pub fn default_model() -> Result<TargetModel> {
    TargetModel::from_json(DEFAULT_MODEL_JSON, Path::new("built-in models/default.targets.json"))
}

/// Reads a targets file, or the built-in model for None; returns it with a label for messages.
pub fn load_model(path: Option<&Path>) -> Result<(TargetModel, String)> {
    match path {
        None => Ok((default_model()?, "the built-in model".to_string())),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::input(p, format!("cannot read: {e}")))?;
            Ok((TargetModel::from_json(&text, p)?, p.display().to_string()))
        }
    }
}

/// The target a no-reference master goes toward, and how it was chosen.
#[derive(Debug, Clone)]
pub struct TargetChoice {
    /// Which model it came from ("the built-in model" or the file).
    pub model: String,
    /// The target (its profile's `source` says which target of which model).
    pub target: Target,
    /// Distance of the mix to it.
    pub distance: f64,
    /// True when the user named it; false when it was the nearest.
    pub named: bool,
    /// The next-nearest target and its distance, when there is one.
    pub runner_up: Option<(String, f64)>,
    /// Number of targets in the model.
    pub of: usize,
}

impl TargetChoice {
    /// One line for the user.
    pub fn describe(&self) -> String {
        let c = &self.target.character;
        let how = if self.named {
            format!("chosen by name; distance to the mix {:.2}", self.distance)
        } else {
            let next = self.runner_up.as_ref().map_or(String::new(), |(n, d)| format!("; next {n} at {d:.2}"));
            format!("nearest of {} at distance {:.2}, {DISTANCE}{next}", self.of, self.distance)
        };
        format!(
            "target: {} from {} ({how}); {} tracks, {} LUFS, PLR {:.1} dB, width {:.1} dB, tilt {:+.2} dB/oct",
            self.target.name,
            self.model,
            self.target.size,
            crate::report::fmt_db(c.lufs),
            c.plr_db,
            c.width_db,
            c.tilt_db_per_octave
        )
    }
}

/// Splits a `--target` value: `NAME`, `FILE.json` or `FILE.json:NAME`.
pub fn parse_target_spec(spec: &str) -> (Option<PathBuf>, Option<String>) {
    let lower = spec.to_ascii_lowercase();
    if let Some(i) = lower.rfind(".json:") {
        let name = &spec[i + 6..];
        return (Some(PathBuf::from(&spec[..i + 5])), (!name.is_empty()).then(|| name.to_string()));
    }
    if lower.ends_with(".json") {
        return (Some(PathBuf::from(spec)), None);
    }
    (None, Some(spec.to_string()))
}

/// Chooses the target for `mix`: the one `spec` names ([`parse_target_spec`]) or else the
/// nearest of the model `spec` names (the built-in model without a spec).
pub fn choose_target(spec: Option<&str>, mix: &Profile) -> Result<TargetChoice> {
    let (file, name) = spec.map(parse_target_spec).unwrap_or((None, None));
    let (model, label) = load_model(file.as_deref())?;
    if !mix.loudness.integrated_lufs.is_finite() {
        let why = if mix.loudness.sample_peak_dbfs.is_finite() {
            "is too quiet to master: below the -70 LUFS loudness gate"
        } else {
            "is digital silence: nothing to master"
        };
        return Err(Error::input(Path::new(&mix.source), why));
    }
    let dists = model
        .distances(mix)
        .map_err(|e| Error::input(Path::new(&mix.source), format!("cannot choose a target: {e}")))?;
    let index = match &name {
        Some(n) => {
            let t = model.find(n).ok_or_else(|| {
                let names: Vec<&str> = model.targets.iter().map(|t| t.name.as_str()).collect();
                Error::Unsupported(format!("no target `{n}` in {label} (it has: {})", names.join(", ")))
            })?;
            model.targets.iter().position(|x| x.name == t.name).unwrap_or(0)
        }
        None => dists[0].0,
    };
    let distance = dists.iter().find(|d| d.0 == index).map_or(f64::NAN, |d| d.1);
    let runner_up = dists.iter().find(|d| d.0 != index).map(|d| (model.targets[d.0].name.clone(), d.1));
    let mut target = model.targets[index].clone();
    target.profile.source = format!("target {} ({label})", target.name);
    Ok(TargetChoice { model: label, target, distance, named: name.is_some(), runner_up, of: model.targets.len() })
}

// ---------------------------------------------------------------------------------------------
// Text

/// The targets of a model with their character in numbers, as `refmaster targets` prints them.
pub fn targets_text(model: &TargetModel, label: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let sel = &model.k_selection;
    let _ = writeln!(
        s,
        "{label}: {} targets learned from {} tracks ({} skipped), seed {}",
        model.targets.len(),
        model.trained_on,
        model.skipped.len(),
        model.seed
    );
    let _ = writeln!(s, "k = {}: {}", sel.k, sel.criterion);
    if !sel.silhouette_by_k.is_empty() {
        let scores: Vec<String> =
            sel.silhouette_by_k.iter().map(|k| format!("k={} {:.3}", k.k, k.silhouette)).collect();
        let _ = writeln!(s, "mean silhouette: {}", scores.join(", "));
    }
    let _ = writeln!(s, "distance: {} ({} features)", model.distance, model.feature_names.len());
    let _ = writeln!(
        s,
        "\n{:<28} {:>6} {:>6} {:>6} {:>5} {:>5} {:>6} {:>6} {:>6} {:>7} {:>6} {:>6}",
        "target", "tracks", "spread", "LUFS", "PLR", "LRA", "crest", "dspread", "width", "tilt", "low", "high"
    );
    for t in &model.targets {
        let c = &t.character;
        let _ = writeln!(
            s,
            "{:<28} {:>6} {:>6.2} {:>6.1} {:>5.1} {:>5.1} {:>6.1} {:>6.1} {:>6.1} {:>+7.2} {:>+6.1} {:>+6.1}",
            t.name,
            t.size,
            t.spread,
            c.lufs,
            c.plr_db,
            c.lra_lu,
            c.crest_db,
            c.spread_db,
            c.width_db,
            c.tilt_db_per_octave,
            c.low_db,
            c.high_db
        );
    }
    let _ = writeln!(
        s,
        "\nLUFS integrated; PLR, LRA, crest and dspread (mean of the 4 dynamics bands' crest factor and 3 s \
         level spread) in dB; width = side/mid dB; tilt = mid slope over 40 Hz-16 kHz, dB/octave; low \
         (40-250 Hz) and high (4-16 kHz) = mid level re its 40 Hz-16 kHz mean, dB."
    );
    s
}

/// One held-out track in [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The track.
    pub file: String,
    /// Its nearest target.
    pub nearest: String,
    /// Feature distance to it.
    pub distance: f64,
    /// Tonal error ([`tonal_error_db`]) against the nearest target, dB.
    pub nearest_error_db: f64,
    /// Tonal error against the size-weighted average of all targets, dB.
    pub average_error_db: f64,
    /// Mean tonal error against every target, dB.
    pub mean_target_error_db: f64,
}

/// For each track: its nearest target and how close that target's tonal balance is, against the
/// average target's.
pub fn evaluate(model: &TargetModel, tracks: &[Track]) -> Result<Vec<Evaluation>> {
    let avg = model.average_target().ok_or_else(|| Error::Unsupported("model has no targets".into()))?;
    tracks
        .iter()
        .map(|t| {
            let d = model.distances(&t.profile).map_err(|e| Error::input(Path::new(&t.name), e))?;
            let nearest = &model.targets[d[0].0];
            let all: Vec<f64> = model.targets.iter().map(|x| tonal_error_db(&t.profile, &x.profile)).collect();
            Ok(Evaluation {
                file: t.name.clone(),
                nearest: nearest.name.clone(),
                distance: d[0].1,
                nearest_error_db: tonal_error_db(&t.profile, &nearest.profile),
                average_error_db: tonal_error_db(&t.profile, &avg),
                mean_target_error_db: all.iter().sum::<f64>() / all.len() as f64,
            })
        })
        .collect()
}

/// [`evaluate`]'s table and summary.
pub fn evaluation_text(rows: &[Evaluation], skipped: &[Skipped]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let w = rows.iter().map(|r| r.file.len()).chain(skipped.iter().map(|k| k.file.len())).max().unwrap_or(5).max(5);
    let _ = writeln!(
        s,
        "{:<w$} {:<28} {:>5} {:>8} {:>8} {:>8}",
        "track", "nearest target", "dist", "nearest", "average", "mean"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<w$} {:<28} {:>5.2} {:>8.2} {:>8.2} {:>8.2}{}",
            r.file,
            r.nearest,
            r.distance,
            r.nearest_error_db,
            r.average_error_db,
            r.mean_target_error_db,
            if r.nearest_error_db < r.average_error_db { "" } else { "  (average closer)" }
        );
    }
    for k in skipped {
        let _ = writeln!(s, "{:<w$} skipped: {}", k.file, k.reason);
    }
    let n = rows.len().max(1) as f64;
    let better = rows.iter().filter(|r| r.nearest_error_db < r.average_error_db).count();
    let mean = |f: &dyn Fn(&Evaluation) -> f64| rows.iter().map(f).sum::<f64>() / n;
    let _ = writeln!(
        s,
        "\ncolumns: feature distance to the nearest target; tonal error against the nearest target, the \
         average target (all targets weighted by size) and the mean over all targets, where tonal error = \
         mean |mid difference| over 40 Hz-16 kHz after removing the median offset, dB\n\
         nearest target closer than the average target for {better} of {} tracks; mean error {:.2} dB \
         (nearest) vs {:.2} dB (average target) vs {:.2} dB (mean over targets)",
        rows.len(),
        mean(&|r| r.nearest_error_db),
        mean(&|r| r.average_error_db),
        mean(&|r| r.mean_target_error_db)
    );
    s
}

/// Measures `inputs` (files or folders) and evaluates the model on them: what
/// `refmaster targets --evaluate` does.
pub fn evaluate_files(
    model: &TargetModel,
    inputs: &[PathBuf],
    jobs: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let files = find_audio_files(inputs)?;
    let (tracks, skipped) = measure_and_sort(&files, jobs, progress);
    Ok(evaluation_text(&evaluate(model, &tracks)?, &skipped))
}

/// What `learn` prints after writing the model: the skipped files with their reasons, then the
/// targets.
pub fn learn_summary_text(model: &TargetModel, output: &Path) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for k in &model.skipped {
        let _ = writeln!(s, "skipped {}: {}", k.file, k.reason);
    }
    if !model.skipped.is_empty() {
        s.push('\n');
    }
    s.push_str(&targets_text(model, &output.display().to_string()));
    s
}
