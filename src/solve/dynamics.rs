//! Multiband compression solved by simulation.
//!
//! For each band, candidate (threshold, ratio) pairs are run on the mix's own 5 ms band envelope
//! with the same detector and gain law the renderer uses, and the result is measured with the
//! analysis yardstick (crest factor of 100 ms windows, spread of 3 s levels). The candidate that
//! brings the band closest to the target, without going past it, wins; a band the target is not
//! denser in is left alone, so a dynamic reference never turns a mix into a brick.

use crate::analysis::dynamics::{band_dynamics, crest, spread, BandEnvelope, BLOCK_S};
use crate::analysis::Profile;
use crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ;
use crate::settings::{CompressorBand, DynamicsSettings};
use crate::solve::mean_between;

/// Attack and release per band (low to high), ms: slower in the lows so the compressor does not
/// follow individual bass cycles, faster in the highs.
pub const BAND_TIMES_MS: [(f64, f64); 4] = [(30.0, 250.0), (20.0, 180.0), (10.0, 120.0), (5.0, 80.0)];
/// Soft-knee width, dB.
pub const KNEE_DB: f64 = 6.0;
/// Ratios the solver tries.
const RATIOS: [f64; 5] = [1.5, 2.0, 2.5, 3.0, 4.0];
/// Thresholds tried, relative to the band's gated RMS level, dB.
const THRESHOLD_STEPS_DB: std::ops::RangeInclusive<i32> = -6..=4;
/// Step between tried thresholds, dB.
const THRESHOLD_STEP_DB: f64 = 1.5;
/// Largest average gain reduction (and so make-up gain) a band may use, dB: beyond this a
/// compressor is flattening the music, not glueing it.
pub const MAX_MEAN_REDUCTION_DB: f64 = 6.0;
/// The target must be denser than the mix by this much (dB of spread or crest) before a band is
/// compressed at all.
pub const MIN_DENSITY_GAP_DB: f64 = 0.5;

/// A compressor band that changes nothing.
pub fn neutral_band(band: usize) -> CompressorBand {
    let (attack_ms, release_ms) = BAND_TIMES_MS[band.min(3)];
    CompressorBand { threshold_dbfs: 0.0, ratio: 1.0, knee_db: KNEE_DB, attack_ms, release_ms, makeup_db: 0.0 }
}

/// Dynamics settings that change nothing.
pub fn neutral(crossovers_hz: [f64; 3]) -> DynamicsSettings {
    DynamicsSettings { enabled: false, crossovers_hz, bands: (0..4).map(neutral_band).collect() }
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

/// Runs `band` on an envelope (offset by `shift_db`, the EQ's gain in the band) and returns the
/// compressed envelope and its make-up gain in dB (which keeps the band's mean energy).
pub fn simulate(env: &BandEnvelope, band: &CompressorBand, shift_db: f64) -> (BandEnvelope, f64) {
    let a_att = coefficient(band.attack_ms, BLOCK_S);
    let a_rel = coefficient(band.release_ms, BLOCK_S);
    let shift = 10f64.powf(shift_db / 10.0);
    let mut state = 0f64;
    let mut out =
        BandEnvelope { peak: Vec::with_capacity(env.peak.len()), mean_square: Vec::with_capacity(env.peak.len()) };
    let (mut e_in, mut e_out) = (0f64, 0f64);
    for (&pk, &ms) in env.peak.iter().zip(&env.mean_square) {
        let x = f64::from(ms) * shift;
        let a = if x > state { a_att } else { a_rel };
        state = a * state + (1.0 - a) * x;
        let level = 10.0 * state.max(1e-20).log10();
        let g = gain_db(level, band.threshold_dbfs, band.ratio, band.knee_db);
        let gl = 10f64.powf(g / 20.0);
        out.peak.push((f64::from(pk) * gl) as f32);
        let ms_out = f64::from(ms) * gl * gl;
        out.mean_square.push(ms_out as f32);
        e_in += f64::from(ms);
        e_out += ms_out;
    }
    let makeup = if e_out > 0.0 && e_in > 0.0 { 10.0 * (e_in / e_out).log10() } else { 0.0 };
    (out, makeup)
}

/// Cost of a band's (crest, spread) against the target's: overshooting the target (denser than
/// it) costs four times as much as falling short.
fn cost(crest_db: f64, spread_db: f64, target_crest: f64, target_spread: f64) -> f64 {
    let side = |v: f64, t: f64| {
        let d = v - t;
        if d >= 0.0 {
            d * d
        } else {
            4.0 * d * d
        }
    };
    side(spread_db, target_spread) + 0.25 * side(crest_db, target_crest)
}

/// Solves the four band compressors from the mix's envelopes (the mix profile must carry them).
pub fn solve_dynamics(
    mix: &Profile,
    target: &Profile,
    grid: &[f64],
    mid_gain: &[f64],
    notes: &mut Vec<String>,
) -> DynamicsSettings {
    let Some(envs) = mix.envelopes.as_ref() else {
        notes.push("mix profile has no envelopes (a saved profile?): multiband compression skipped".into());
        return neutral(DEFAULT_CROSSOVERS_HZ);
    };
    let mix_dyn = band_dynamics(envs);
    let mut bands = Vec::with_capacity(4);
    let mut any = false;
    for (b, env) in envs.bands.iter().enumerate() {
        let (Some(m), Some(t)) = (mix_dyn.get(b), target.dynamics.get(b)) else {
            bands.push(neutral_band(b));
            continue;
        };
        // Denser means less level movement: in this band, and in the programme's loudness range
        // (a band-level spread can disagree with the LRA a listener hears; both must agree).
        // Crest alone is not a reason to compress: peaks are the limiter's job.
        let denser = t.spread_db < m.spread_db - MIN_DENSITY_GAP_DB
            && target.loudness.range_lu < mix.loudness.range_lu - MIN_DENSITY_GAP_DB;
        if !denser || m.rms_dbfs < -100.0 {
            bands.push(neutral_band(b));
            continue;
        }
        let shift = mean_between(grid, mid_gain, envs.edges_hz[b].max(20.0), envs.edges_hz[b + 1]);
        let best = best_band(b, env, m.rms_dbfs + shift, shift, m.crest_db, m.spread_db, t.crest_db, t.spread_db);
        if best.ratio > 1.0 {
            any = true;
        }
        bands.push(best);
    }
    DynamicsSettings { enabled: any, crossovers_hz: [envs.edges_hz[1], envs.edges_hz[2], envs.edges_hz[3]], bands }
}

#[allow(clippy::too_many_arguments)]
fn best_band(
    b: usize,
    env: &BandEnvelope,
    level_dbfs: f64,
    shift_db: f64,
    mix_crest: f64,
    mix_spread: f64,
    target_crest: f64,
    target_spread: f64,
) -> CompressorBand {
    let mut best = neutral_band(b);
    let mut best_cost = cost(mix_crest, mix_spread, target_crest, target_spread);
    let neutral_cost = best_cost;
    for &ratio in &RATIOS {
        for step in THRESHOLD_STEPS_DB {
            let mut cand = neutral_band(b);
            cand.ratio = ratio;
            cand.threshold_dbfs = (level_dbfs + f64::from(step) * THRESHOLD_STEP_DB).clamp(-80.0, 0.0);
            let (out, makeup) = simulate(env, &cand, shift_db);
            if makeup > MAX_MEAN_REDUCTION_DB {
                continue;
            }
            let (_, c) = crest(&out.peak, &out.mean_square);
            let s = spread(&out.mean_square);
            // A small premium on ratio prefers the gentler of two equally good settings.
            let total = cost(c, s, target_crest, target_spread) + 0.02 * (ratio - 1.0);
            if total < best_cost {
                best_cost = total;
                cand.makeup_db = makeup.clamp(-24.0, 24.0);
                best = cand;
            }
        }
    }
    if best_cost > 0.95 * neutral_cost {
        return neutral_band(b);
    }
    best
}
