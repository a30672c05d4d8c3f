//! Dynamics solved by simulation against how the reference's level moves.
//!
//! The yardstick is [`MotionStats`]: the distribution of window levels at 50 ms, 400 ms and 3 s
//! (percentiles around the median) and how far the level swings from one window to the next,
//! for the whole mid signal and for each of the four bands. The mix's and the reference's are
//! compared; the distance between them (rms over all figures of the relative error, as a share of
//! the reference's figure) is the *level-motion error*.
//!
//! Candidate chains are simulated on the mix's own 5 ms band envelopes (after the EQ's gain in
//! each band) with the detector and gain law the renderer uses, and measured with the same
//! yardstick:
//! - none;
//! - broadband: one detector on the whole mid, the same gain on every band (what undoes a level
//!   that swings too far without moving the tonal balance);
//! - multiband: each band its own compressor, solved on its own motion.
//!
//! For each, ratio, attack, release, threshold and knee are searched (a threshold under the
//! band's quiet passages with a wide knee, plus make-up, is compression both upward and downward
//! around the band's level: the inverse of an expander). Processing has a price: every dB by
//! which a setting moves the gain (the power-weighted mean |gain| around its make-up, so a static
//! level change costs nothing) counts as [`PROCESSING_PRICE_PER_DB`] of error, in the search and
//! in the choice, so the least processing that moves the master toward the reference wins. A
//! chain is used only when it cuts the error's mean square by 15 % or more and its rms by 3.5
//! points (3 net of its price); multiband only when it beats broadband by as much again;
//! otherwise the stage stays off and says why. The search tries every ratio on a coarse grid
//! for every pair of times, then the ratios between around the three best pairs: each detector
//! is run once per pair of times and the statistics are taken on 50 ms chunk sums, so a
//! 4-minute song is solved in a fraction of a second.
//! Over-compressing (a level that moves less than the reference's) costs twice as much as
//! falling short, so a dynamic reference never turns a mix into a brick.

use crate::analysis::dynamics::{
    fast_exp2, fast_log2, motion_stats_of_chunks, power_db, BandEnvelopes, ChunkSums, MotionScratch, MotionStats,
    BLOCK_S,
};
use crate::analysis::loudness::percentile_sorted;
use crate::analysis::Profile;
use crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ;
use crate::settings::{CompressorBand, DynamicsSettings};
use crate::solve::mean_between;
use crate::solve::restore::restore;

/// Attack and release per band (low to high), ms, of a band left neutral (they do nothing there
/// but keep hand edits sensible).
pub const BAND_TIMES_MS: [(f64, f64); 4] = [(30.0, 250.0), (20.0, 180.0), (10.0, 120.0), (5.0, 80.0)];
/// Soft-knee width of a neutral band, dB.
pub const KNEE_DB: f64 = 6.0;
/// Ratios the solver tries: from the gentle slopes that undo an expander to glue compression.
const RATIOS: [f64; 13] = [1.1, 1.15, 1.2, 1.25, 1.3, 1.4, 1.5, 1.65, 1.8, 2.0, 2.5, 3.0, 4.0];
/// Indices into [`RATIOS`] tried first with every pair of times; the ratios between them are
/// then tried around the best of the [`REFINED_TIMES`] best pairs of times.
const COARSE_RATIOS: [usize; 5] = [0, 3, 6, 9, 12];
const REFINED_TIMES: usize = 3;
/// (attack, release) pairs tried, ms.
const TIMES_MS: [(f64, f64); 16] = [
    (5.0, 45.0),
    (5.0, 120.0),
    (5.0, 300.0),
    (15.0, 45.0),
    (15.0, 120.0),
    (15.0, 300.0),
    (15.0, 800.0),
    (45.0, 45.0),
    (45.0, 120.0),
    (45.0, 300.0),
    (45.0, 800.0),
    (120.0, 120.0),
    (120.0, 300.0),
    (120.0, 800.0),
    (300.0, 300.0),
    (300.0, 800.0),
];
/// Knee widths tried with the thresholds inside the level distribution, dB.
const KNEES_DB: [f64; 3] = [6.0, 12.0, 24.0];
/// Largest average gain reduction (and so make-up gain) a band may use, dB.
pub const MAX_MEAN_REDUCTION_DB: f64 = 10.0;
/// A chain must cut the level-motion error (mean square) by this share to be used at all, and
/// multiband must cut broadband's by as much again.
pub const MIN_IMPROVEMENT: f64 = 0.15;
/// Compression at all must also lower the rms level-motion error by this much (a share of the
/// figures): two stationary noises of different bandwidths differ by about 3 % in their
/// short-window statistics alone, and no compressor should chase that.
pub const MIN_IMPROVEMENT_SHARE: f64 = 0.035;
/// ... and by this much net of the price of its gain movement ([`PROCESSING_PRICE_PER_DB`]).
pub const MIN_NET_IMPROVEMENT_SHARE: f64 = 0.03;
/// The same for one band of the multiband chain, and for multiband over broadband.
pub const MIN_STEP_SHARE: f64 = 0.01;
/// What a decibel of gain movement ([`gain_movement_db`]) costs, in rms level-motion error: a
/// chain must bring the level's motion this much closer to the reference's for every dB by which
/// it moves the gain, or a gentler one wins.
pub const PROCESSING_PRICE_PER_DB: f64 = 0.01;
/// Weight of the broadband figures against one band's.
const BROADBAND_WEIGHT: f64 = 2.0;
/// A band this far under the loudest band (median level, dB) counts a quarter: its motion is
/// mostly what leaks from the others.
const QUIET_BAND_DB: f64 = 30.0;

/// A compressor band that changes nothing.
pub fn neutral_band(band: usize) -> CompressorBand {
    let (attack_ms, release_ms) = BAND_TIMES_MS[band.min(3)];
    CompressorBand { threshold_dbfs: 0.0, ratio: 1.0, knee_db: KNEE_DB, attack_ms, release_ms, makeup_db: 0.0 }
}

/// Dynamics settings that change nothing.
pub fn neutral(crossovers_hz: [f64; 3]) -> DynamicsSettings {
    DynamicsSettings {
        enabled: false,
        crossovers_hz,
        bands: (0..4).map(neutral_band).collect(),
        linked: false,
        feedback: false,
    }
}

/// Static gain law with a soft knee (Giannoulis, Massberg & Reiss 2012): gain in dB (≤ 0) for an
/// input level in dB.
#[inline]
pub fn gain_db(level_db: f64, threshold_db: f64, ratio: f64, knee_db: f64) -> f64 {
    let over = level_db - threshold_db;
    let slope = 1.0 / ratio - 1.0;
    if 2.0 * over < -knee_db {
        0.0
    } else if knee_db > 0.0 && 2.0 * over.abs() <= knee_db {
        slope * (over + knee_db / 2.0).powi(2) / (2.0 * knee_db)
    } else {
        slope * over
    }
}

/// One-pole smoothing coefficient for a time constant `tau_ms` at a step of `step_s` seconds.
#[inline]
pub fn coefficient(tau_ms: f64, step_s: f64) -> f64 {
    (-step_s / (tau_ms.max(0.01) * 1e-3)).exp()
}

/// The detector of `band`'s settings run over `detector` (5 ms mean squares): its level per
/// block, dB. The detector depends only on attack and release, so the solver computes it once per
/// pair of times and tries every gain law on it.
pub fn detector_levels_db(detector: &[f32], attack_ms: f64, release_ms: f64, levels: &mut Vec<f32>) {
    let a_att = coefficient(attack_ms, BLOCK_S);
    let a_rel = coefficient(release_ms, BLOCK_S);
    levels.clear();
    let mut state = 0f64;
    // The recurrence first (both candidates, then a select: the coefficient chosen by a
    // comparison would lengthen the chain from one block's state to the next), the levels in a
    // second pass, which runs on vector lanes.
    levels.extend(detector.iter().map(|&x| {
        let x = f64::from(x);
        let rising = a_att * state + (1.0 - a_att) * x;
        let falling = a_rel * state + (1.0 - a_rel) * x;
        state = if x > state { rising } else { falling };
        state.max(1e-20) as f32
    }));
    for l in levels.iter_mut() {
        *l = power_db(*l) as f32;
    }
}

/// Power gain per block (linear, ≤ 1 before make-up) of `band`'s gain law on the detector levels
/// `levels_db` (from [`detector_levels_db`]), written into `gains`.
pub fn power_gains(levels_db: &[f32], band: &CompressorBand, gains: &mut Vec<f32>) {
    const OCTAVES_PER_DB: f32 = std::f32::consts::LOG2_10 / 10.0;
    let threshold = band.threshold_dbfs as f32;
    let slope = (1.0 / band.ratio - 1.0) as f32;
    // A knee of zero is the limit of a tiny one (the quadratic part vanishes).
    let knee = (band.knee_db as f32).max(1e-6);
    let half_knee = knee / 2.0;
    let quad_scale = slope / (2.0 * knee);
    gains.clear();
    gains.resize(levels_db.len(), 1.0);
    // Branch-free (selects), so that the loop runs on vector lanes.
    for (g, &level) in gains.iter_mut().zip(levels_db) {
        let over = level - threshold;
        let into_knee = over + half_knee;
        let db = if over > half_knee { slope * over } else { quad_scale * into_knee * into_knee };
        let db = if over < -half_knee { 0.0 } else { db };
        *g = fast_exp2(db * OCTAVES_PER_DB);
    }
}

/// Power gain per 5 ms block of `band` driven by `detector` (mean squares): the detector and gain
/// law the renderer runs, as the solver simulates them.
pub fn gain_track(detector: &[f32], band: &CompressorBand, gains: &mut Vec<f32>) {
    let mut levels = Vec::with_capacity(detector.len());
    detector_levels_db(detector, band.attack_ms, band.release_ms, &mut levels);
    power_gains(&levels, band, gains);
}

/// Power gain per 5 ms block of `band` as a feedback compressor (its detector follows the output,
/// after the gain and before make-up) fed the input mean squares `input`: the gain of each block
/// comes from the detector's state after the block before, as the renderer runs it. Make-up is
/// not included (≤ 1).
pub fn feedback_gain_track(input: &[f32], band: &CompressorBand, gains: &mut Vec<f32>) {
    let a_att = coefficient(band.attack_ms, BLOCK_S);
    let a_rel = coefficient(band.release_ms, BLOCK_S);
    gains.clear();
    let mut state = 0f64;
    let mut level = [0f32; 1];
    let mut gain = Vec::with_capacity(1);
    gains.extend(input.iter().map(|&x| {
        level[0] = power_db(state.max(1e-20) as f32) as f32;
        power_gains(&level, band, &mut gain);
        let g = gain.first().copied().unwrap_or(1.0);
        let out = f64::from(x) * f64::from(g);
        let a = if out > state { a_att } else { a_rel };
        state = a * state + (1.0 - a) * out;
        g
    }));
}

/// The mix's 5 ms band mean squares as the compressor sees them: each band moved by the EQ's mean
/// gain in it (`mid_gain`, dB on `grid`).
pub fn compressor_input(envs: &BandEnvelopes, grid: &[f64], mid_gain: &[f64]) -> Vec<Vec<f32>> {
    envs.bands
        .iter()
        .enumerate()
        .map(|(b, env)| {
            let shift =
                10f64.powf(mean_between(grid, mid_gain, envs.edges_hz[b].max(20.0), envs.edges_hz[b + 1]) / 10.0);
            env.mean_square.iter().map(|&v| (f64::from(v) * shift) as f32).collect()
        })
        .collect()
}

/// Element-wise sum of several series of 5 ms mean squares (the shortest sets the length): the
/// broadband power of a set of bands.
pub fn sum_series<'a>(series: impl Iterator<Item = &'a [f32]>) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::new();
    for (i, s) in series.enumerate() {
        if i == 0 {
            out = s.to_vec();
        } else {
            out.truncate(s.len());
            for (a, &b) in out.iter_mut().zip(s) {
                *a += b;
            }
        }
    }
    out
}

/// [`gain_track`] or [`feedback_gain_track`], as `feedback` says.
pub fn gain_track_for(input: &[f32], band: &CompressorBand, feedback: bool, gains: &mut Vec<f32>) {
    if feedback {
        feedback_gain_track(input, band, gains);
    } else {
        gain_track(input, band, gains);
    }
}

/// Largest relative error one figure counts with: where a band's levels fall into two groups (a
/// part with and a part without bass), a percentile between them jumps by the gap, and one such
/// figure must not outweigh all the others.
const MAX_FIGURE_ERROR: f64 = 0.5;
/// Added to a percentile's and a swing's size before dividing by it, dB, so figures near zero
/// do not blow up.
const PERCENTILE_FLOOR_DB: f64 = 1.0;
const SWING_FLOOR_DB: f64 = 0.05;
/// Weight of the swing figures against the percentiles: the swing is what tells a fast level
/// change from a slow one, and there are fewer of them.
const SWING_WEIGHT: f64 = 4.0;

/// Level-motion error of `sim` against `target`: mean square of the relative errors of every
/// percentile (distance from the median) and swing, each as a share of the target's. Moving
/// less than the target (over-compressed) counts twice.
pub fn motion_cost(sim: &MotionStats, target: &MotionStats) -> f64 {
    let term = |a: f64, b: f64, floor: f64| {
        let d = ((a.abs() - b.abs()) / (b.abs() + floor)).clamp(-MAX_FIGURE_ERROR, MAX_FIGURE_ERROR);
        if a.abs() < b.abs() {
            2.0 * d * d
        } else {
            d * d
        }
    };
    let (mut sum, mut n) = (0f64, 0f64);
    for (s, t) in sim.percentiles_db.iter().zip(&target.percentiles_db) {
        for (&a, &b) in s.iter().zip(t) {
            sum += term(a, b, PERCENTILE_FLOOR_DB);
            n += 1.0;
        }
    }
    for (&a, &b) in sim.swing_db.iter().zip(&target.swing_db) {
        sum += SWING_WEIGHT * term(a, b, SWING_FLOOR_DB);
        n += SWING_WEIGHT;
    }
    if n == 0.0 {
        0.0
    } else {
        sum / n
    }
}

/// The mix as the solver simulates it: each band's 5 ms mean squares after the EQ's gain in the
/// band (and their chunk sums), their sum, and the reference's motion to compare with.
struct Problem<'a> {
    bands: Vec<Vec<f32>>,
    chunks: Vec<ChunkSums>,
    broadband: Vec<f32>,
    target: &'a crate::analysis::LevelMotion,
    /// Weight of each band's error.
    weights: [f64; 4],
}

/// Result of a candidate: its settings per band, the weighted error and the error per part.
#[derive(Debug, Clone)]
struct Outcome {
    bands: Vec<CompressorBand>,
    cost: f64,
    /// Gain movement ([`gain_movement_db`]), dB; for several bands, their mean weighted by energy.
    movement_db: f64,
}

impl Outcome {
    /// What the chain is worth: its rms level-motion error plus the price of its processing.
    fn objective(&self) -> f64 {
        self.cost.sqrt() + PROCESSING_PRICE_PER_DB * self.movement_db
    }
}

/// Reusable buffers of the cost functions.
#[derive(Default)]
struct Scratch {
    motion: MotionScratch,
    sum: ChunkSums,
}

impl Problem<'_> {
    /// Weighted error of a set of band series given by their chunk sums (the broadband sum is
    /// formed here).
    fn total_cost(&self, series: &[ChunkSums], scratch: &mut Scratch) -> f64 {
        scratch.sum.set_sum(series);
        let mut cost = BROADBAND_WEIGHT
            * motion_cost(&motion_stats_of_chunks(&scratch.sum, &mut scratch.motion), &self.target.broadband);
        let mut weight = BROADBAND_WEIGHT;
        for (b, s) in series.iter().enumerate() {
            if let Some(t) = self.target.bands.get(b) {
                cost += self.weights[b] * motion_cost(&motion_stats_of_chunks(s, &mut scratch.motion), t);
                weight += self.weights[b];
            }
        }
        cost / weight
    }
}

/// Thresholds worth trying for a detector series: under its quiet passages (with a wide knee:
/// compression upward and downward around the level), and at its 25th, 50th and 75th
/// percentiles of 50 ms levels (classic downward compression of the louder part), dBFS.
fn threshold_candidates(detector: &[f32]) -> Vec<(f64, f64)> {
    let mut levels: Vec<f64> = detector
        .chunks(10)
        .map(|c| c.iter().map(|&v| f64::from(v)).sum::<f64>() / c.len() as f64)
        .filter(|&v| v > 1e-7)
        .map(|v| 10.0 * v.log10())
        .collect();
    if levels.is_empty() {
        return Vec::new();
    }
    levels.sort_by(f64::total_cmp);
    let p = |q| percentile_sorted(&levels, q);
    let mut out = vec![((p(0.05) - 6.0).clamp(-80.0, 0.0), 12.0)];
    for q in [0.25, 0.5, 0.75] {
        for k in KNEES_DB {
            out.push((p(q).clamp(-80.0, 0.0), k));
        }
    }
    out
}

/// What a search found: the band settings (with make-up), the level-motion error of the result
/// (mean square) and how far its gain moves the level ([`gain_movement_db`]).
#[derive(Debug, Clone)]
struct Found {
    band: CompressorBand,
    cost: f64,
    movement_db: f64,
}

impl Found {
    /// What the search minimises: the rms level-motion error plus the price of the processing.
    fn objective(&self) -> f64 {
        self.cost.sqrt() + PROCESSING_PRICE_PER_DB * self.movement_db
    }

    /// The objective with a small premium on ratio, which prefers the gentler of two equally
    /// good settings.
    fn score(&self) -> f64 {
        self.objective() + 0.002 * (self.band.ratio - 1.0)
    }
}

/// How far a gain track moves the level, dB: the mean of |gain + make-up| over the blocks,
/// weighted by the detector's power (the loud blocks are what is heard). A static gain change
/// moves nothing: the make-up (the mean reduction) takes it back.
fn gain_movement_db(gains: &[f32], detector: &[f32], makeup_db: f64) -> f64 {
    const LANES: usize = 8;
    let makeup = makeup_db as f32;
    let (mut sum, mut weight) = (0f64, 0f64);
    // Sums in lanes and in blocks of 1024, so that the loop vectorises and stays precise.
    for (g, w) in gains.chunks(1024).zip(detector.chunks(1024)) {
        let (mut s, mut n) = ([0f32; LANES], [0f32; LANES]);
        let (g8, w8) = (g.chunks_exact(LANES), w.chunks_exact(LANES));
        let (g_rest, w_rest) = (g8.remainder(), w8.remainder());
        for (g, w) in g8.zip(w8) {
            for k in 0..LANES {
                s[k] += w[k] * (fast_log2(g[k].max(f32::MIN_POSITIVE)) * DB_PER_OCTAVE_F32 + makeup).abs();
                n[k] += w[k];
            }
        }
        for (&g, &w) in g_rest.iter().zip(w_rest) {
            s[0] += w * (fast_log2(g.max(f32::MIN_POSITIVE)) * DB_PER_OCTAVE_F32 + makeup).abs();
            n[0] += w;
        }
        sum += s.iter().map(|&v| f64::from(v)).sum::<f64>();
        weight += n.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    if weight > 0.0 {
        sum / weight
    } else {
        0.0
    }
}

/// Decibels per doubling of power.
const DB_PER_OCTAVE_F32: f32 = 3.010_3;

/// Searches one compressor driven by `detector` whose gain goes to the series `apply` (indices
/// into `problem.bands`); `cost` scores the processed band series (as chunk sums). Returns the
/// best setting by [`Found::objective`], or `None` when nothing was tried.
fn search(
    detector: &[f32],
    apply: &[usize],
    problem: &Problem<'_>,
    cost: &dyn Fn(&[ChunkSums], &mut Scratch) -> f64,
) -> Option<Found> {
    let thresholds = threshold_candidates(detector);
    let (&(t0, k0), _) = thresholds.split_first()?;
    // The detector's level for every pair of times, computed once.
    let levels: Vec<Vec<f32>> = TIMES_MS
        .iter()
        .map(|&(attack_ms, release_ms)| {
            let mut l = Vec::with_capacity(detector.len());
            detector_levels_db(detector, attack_ms, release_ms, &mut l);
            l
        })
        .collect();
    let mut scratch = Scratch::default();
    let mut gains = Vec::with_capacity(detector.len());
    let mut series: Vec<ChunkSums> = problem.chunks.clone();
    let e_in: f64 = apply.iter().map(|&b| problem.chunks[b].total()).sum();
    let mut eval = |cand: &Candidate, series: &mut Vec<ChunkSums>| -> Option<Found> {
        power_gains(&levels[cand.times], &cand.band, &mut gains);
        let mut e_out = 0f64;
        for &b in apply {
            series[b].set_gained(&problem.bands[b], Some(&gains));
            e_out += series[b].total();
        }
        let makeup_db = if e_out > 0.0 && e_in > 0.0 { 10.0 * (e_in / e_out).log10() } else { 0.0 };
        if makeup_db > MAX_MEAN_REDUCTION_DB {
            return None;
        }
        Some(Found {
            band: CompressorBand { makeup_db: makeup_db.clamp(-24.0, 24.0), ..cand.band.clone() },
            cost: cost(series, &mut scratch),
            movement_db: gain_movement_db(&gains, detector, makeup_db),
        })
    };
    let make = |ratio: f64, times: usize, threshold_dbfs: f64, knee_db: f64| {
        let (attack_ms, release_ms) = TIMES_MS[times];
        Candidate {
            band: CompressorBand { threshold_dbfs, ratio, knee_db, attack_ms, release_ms, makeup_db: 0.0 },
            times,
        }
    };
    let mut best: Option<(usize, Found)> = None;
    let mut consider = |cand: Candidate, series: &mut Vec<ChunkSums>, best: &mut Option<(usize, Found)>| {
        if let Some(found) = eval(&cand, series) {
            if best.as_ref().is_none_or(|(_, b)| found.score() < b.score()) {
                *best = Some((cand.times, found));
            }
        }
    };
    // Ratio and times with the all-range threshold (coarse to fine), then threshold and knee,
    // then ratio and times again around what the threshold changed.
    let mut coarse: Vec<(f64, usize, usize)> = Vec::with_capacity(TIMES_MS.len());
    for t in 0..TIMES_MS.len() {
        let mut best_here: Option<(usize, Found)> = None;
        let mut ratio_here = 0;
        for &r in &COARSE_RATIOS {
            let before = best_here.as_ref().map(|(_, f)| f.score());
            consider(make(RATIOS[r], t, t0, k0), &mut series, &mut best_here);
            if best_here.as_ref().map(|(_, f)| f.score()) != before {
                ratio_here = r;
            }
        }
        if let Some((_, found)) = best_here {
            coarse.push((found.score(), t, ratio_here));
            if best.as_ref().is_none_or(|(_, b)| found.score() < b.score()) {
                best = Some((t, found));
            }
        }
    }
    coarse.sort_by(|a, b| a.0.total_cmp(&b.0));
    for &(_, t, r) in coarse.iter().take(REFINED_TIMES) {
        let at = COARSE_RATIOS.iter().position(|&c| c == r).unwrap_or(0);
        let low = if at == 0 { 0 } else { COARSE_RATIOS[at - 1] + 1 };
        let high = COARSE_RATIOS.get(at + 1).map_or(RATIOS.len(), |&c| c);
        for i in (low..high).filter(|i| !COARSE_RATIOS.contains(i)) {
            consider(make(RATIOS[i], t, t0, k0), &mut series, &mut best);
        }
    }
    let (t, b) = best.clone()?;
    for &(th, k) in &thresholds[1..] {
        consider(make(b.band.ratio, t, th, k), &mut series, &mut best);
    }
    let (t, b) = best.clone()?;
    for &r in &RATIOS {
        consider(make(r, t, b.band.threshold_dbfs, b.band.knee_db), &mut series, &mut best);
    }
    let (_, b) = best.clone()?;
    for t in 0..TIMES_MS.len() {
        consider(make(b.band.ratio, t, b.band.threshold_dbfs, b.band.knee_db), &mut series, &mut best);
    }
    best.map(|(_, f)| f)
}

/// A compressor setting the search tries, with the index of its times in [`TIMES_MS`].
#[derive(Debug, Clone)]
struct Candidate {
    band: CompressorBand,
    times: usize,
}

/// True when `cost` improves on `base` enough to be worth the processing: by [`MIN_IMPROVEMENT`]
/// of the mean square and by `min_share` of the rms error.
fn worth(cost: f64, base: f64, min_share: f64) -> bool {
    cost <= (1.0 - MIN_IMPROVEMENT) * base && base.sqrt() - cost.sqrt() >= min_share
}

/// [`worth`], with the rms improvement counted net of the price of the gain movement
/// ([`PROCESSING_PRICE_PER_DB`]): the least processing that moves the master toward the
/// reference wins, and a chain that buys a little closeness with a lot of gain riding stays off.
fn worth_processing(cost: f64, movement_db: f64, base: f64, min_share: f64) -> bool {
    worth(cost, base, min_share) && base.sqrt() - cost.sqrt() - PROCESSING_PRICE_PER_DB * movement_db >= min_share
}

/// Solves the dynamics stage from the mix's envelopes (the mix profile must carry them) and the
/// target's level motion; `mid_gain` on `grid` is the EQ, whose gain in each band shifts the
/// levels the compressor sees.
pub fn solve_dynamics(
    mix: &Profile,
    target: &Profile,
    grid: &[f64],
    mid_gain: &[f64],
    same_music: bool,
    notes: &mut Vec<String>,
) -> DynamicsSettings {
    let Some(envs) = mix.envelopes.as_ref() else {
        notes.push("dynamics: off: the mix profile has no envelopes (a saved profile?)".into());
        return neutral(DEFAULT_CROSSOVERS_HZ);
    };
    let crossovers = [envs.edges_hz[1], envs.edges_hz[2], envs.edges_hz[3]];
    let Some(motion) = target.level_motion.as_ref().filter(|m| m.bands.len() == envs.bands.len()) else {
        notes.push(
            "dynamics: off: the reference profile has no level-motion statistics (saved by an older refmaster?)".into(),
        );
        return neutral(crossovers);
    };
    let bands = compressor_input(envs, grid, mid_gain);
    // The same music: the reference says what level each band should have, moment by moment.
    if same_music {
        if let Some(r) = target.envelopes.as_ref().and_then(|e| restore(&bands, envs.edges_hz, e)) {
            notes.push(r.note);
            return r.dynamics;
        }
    }
    let broadband = sum_series(bands.iter().map(Vec::as_slice));
    let n = broadband.len();
    let medians: Vec<f64> = motion.bands.iter().map(|m| m.median_dbfs).collect();
    let loudest = medians.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights =
        std::array::from_fn(|b| if medians.get(b).is_some_and(|&m| m > loudest - QUIET_BAND_DB) { 1.0 } else { 0.25 });
    let chunks = bands.iter().map(|b| ChunkSums::of(b)).collect();
    let problem = Problem { bands, chunks, broadband, target: motion, weights };
    let mut scratch = Scratch::default();
    let none_cost = problem.total_cost(&problem.chunks, &mut scratch);
    if n < MOTION_MIN_BLOCKS {
        notes.push("dynamics: off: the mix is too short to measure how its level moves (under 6 s)".into());
        return neutral(crossovers);
    }

    // Broadband: one detector on the sum, one gain for every band. Its search is independent
    // of the per-band ones below (each reads the problem and writes only its own result), so
    // it runs on a second thread beside them.
    let problem = &problem;
    std::thread::scope(|scope| {
        let broad = scope.spawn(move || {
            let all = [0usize, 1, 2, 3];
            let total = |s: &[ChunkSums], sc: &mut Scratch| problem.total_cost(s, sc);
            search(&problem.broadband, &all, problem, &total).map(|f| Outcome {
                bands: vec![f.band; 4],
                cost: f.cost,
                movement_db: f.movement_db,
            })
        });
        let multi = multiband(problem, &mut scratch);
        // A panic on the second thread is a bug: it goes on here as it would have alone.
        let broad = broad.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        choose(broad, multi, none_cost, crossovers, notes)
    })
}

/// The multiband chain: each band searched on its own motion; a band that does not improve its
/// own stays off. `None` when every band stays off.
fn multiband(problem: &Problem<'_>, scratch: &mut Scratch) -> Option<Outcome> {
    let motion = problem.target;
    let mut multi_bands = Vec::with_capacity(4);
    let mut multi_series = problem.chunks.clone();
    let (mut moved, mut energy) = (0f64, 0f64);
    for b in 0..problem.bands.len() {
        let e_band = problem.chunks[b].total();
        energy += e_band;
        let Some(t) = motion.bands.get(b) else {
            multi_bands.push(neutral_band(b));
            continue;
        };
        let own = |s: &[ChunkSums], sc: &mut Scratch| motion_cost(&motion_stats_of_chunks(&s[b], &mut sc.motion), t);
        let base = motion_cost(&motion_stats_of_chunks(&problem.chunks[b], &mut scratch.motion), t);
        match search(&problem.bands[b], &[b], problem, &own) {
            Some(f) if worth_processing(f.cost, f.movement_db, base, MIN_STEP_SHARE) => {
                let mut gains = Vec::new();
                gain_track(&problem.bands[b], &f.band, &mut gains);
                multi_series[b].set_gained(&problem.bands[b], Some(&gains));
                moved += e_band * f.movement_db;
                multi_bands.push(f.band);
            }
            _ => multi_bands.push(neutral_band(b)),
        }
    }
    multi_bands.iter().any(|b| b.ratio > 1.0).then(|| Outcome {
        cost: problem.total_cost(&multi_series, scratch),
        bands: multi_bands,
        movement_db: if energy > 0.0 { moved / energy } else { 0.0 },
    })
}

/// Chooses between the broadband and the multiband chain (or neither), saying why in `notes`.
fn choose(
    broad: Option<Outcome>,
    multi: Option<Outcome>,
    none_cost: f64,
    crossovers: [f64; 3],
    notes: &mut Vec<String>,
) -> DynamicsSettings {
    let rms = |c: f64| c.sqrt();
    let describe = |o: &Option<Outcome>| {
        o.as_ref().map_or("none found".to_string(), |o| {
            format!("{:.1} % moving the gain {:.1} dB", 100.0 * rms(o.cost), o.movement_db)
        })
    };
    let ok = |o: &&Outcome| {
        worth(o.cost, none_cost, MIN_IMPROVEMENT_SHARE)
            && worth_processing(o.cost, o.movement_db, none_cost, MIN_NET_IMPROVEMENT_SHARE)
    };
    let broad_ok = broad.as_ref().filter(ok);
    let multi_ok = multi.as_ref().filter(ok);
    let chosen = match (broad_ok, multi_ok) {
        (Some(b), Some(m)) if worth(m.cost, b.cost, MIN_STEP_SHARE) && m.objective() < b.objective() => {
            Some((m, false))
        }
        (Some(b), _) => Some((b, true)),
        (None, Some(m)) => Some((m, false)),
        (None, None) => None,
    };
    match chosen {
        None => {
            let why = if none_cost <= 0.05 * 0.05 {
                "the mix's level already moves like the reference's"
            } else {
                "no candidate chain brings the mix's level motion clearly closer to the reference's"
            };
            notes.push(format!(
                "dynamics: off: {why} (level-motion error {:.1} %; broadband {}, multiband {})",
                100.0 * rms(none_cost),
                describe(&broad),
                describe(&multi)
            ));
            neutral(crossovers)
        }
        Some((o, linked)) => {
            let what = if linked {
                let b = &o.bands[0];
                format!(
                    "broadband compression, {:.2}:1 from {:.1} dBFS (knee {:.0} dB), attack {:.0} ms, release {:.0} ms",
                    b.ratio, b.threshold_dbfs, b.knee_db, b.attack_ms, b.release_ms
                )
            } else {
                let on = o.bands.iter().filter(|b| b.ratio > 1.0).count();
                format!("multiband compression in {on} of 4 bands")
            };
            notes.push(format!(
                "dynamics: {what}: level-motion error against the reference {:.1} % -> {:.1} % (broadband {}, multiband {})",
                100.0 * rms(none_cost),
                100.0 * rms(o.cost),
                describe(&broad),
                describe(&multi)
            ));
            DynamicsSettings {
                enabled: true,
                crossovers_hz: crossovers,
                bands: o.bands.clone(),
                linked,
                feedback: false,
            }
        }
    }
}

/// Fewest 5 ms blocks (6 s: two short-term windows) the level motion is judged on.
const MOTION_MIN_BLOCKS: usize = 1200;
