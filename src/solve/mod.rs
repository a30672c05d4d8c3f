//! Stage 3: two profiles in, [`Settings`] out. Pure functions, no audio.
//!
//! - EQ: the smoothed difference of the mid spectra and of the side spectra, level offset removed
//!   (loudness is the limiter drive's job), bounded, not followed above the content cutoff.
//! - Width: per-band side gain toward the target's side-to-mid ratio, never wider below 120 Hz.
//! - Dynamics: per-band compressors found by simulating candidate settings on the mix's own
//!   5 ms envelopes and measuring crest and spread with the analysis yardstick.
//! - Limiter: a first drive estimate; the loudness loop in [`crate::master`] refines it.

pub mod dynamics;
pub mod parametric;

use serde::{Deserialize, Serialize};

use crate::analysis::spectrum::FLOOR_DB;
use crate::analysis::Profile;
use crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ;
use crate::settings::{
    EqSettings, LimiterSettings, SaturationSettings, Settings, WidthBandGain, WidthSettings, SETTINGS_VERSION,
};

/// Below this frequency the width stage may narrow but never widen, Hz.
pub const NO_WIDENING_BELOW_HZ: f64 = 120.0;
/// Lowest frequency the EQ follows, Hz.
pub const EQ_LOWEST_HZ: f64 = 20.0;
/// Range over which the EQ's level offset is computed (the shape error's range), Hz.
pub const SHAPE_RANGE_HZ: (f64, f64) = (40.0, 16_000.0);

/// What the user asked of the solver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveOptions {
    /// How much of the matched EQ and width to apply, 0..=1.
    pub amount: f64,
    /// Width of the fractional-octave smoothing of the EQ curve, octaves.
    pub smoothing_octaves: f64,
    /// EQ bound, ± dB.
    pub max_eq_db: f64,
    /// Width bound, ± dB.
    pub max_width_db: f64,
    /// Limiter ceiling, dBTP.
    pub ceiling_dbtp: f64,
    /// Loudness target, LUFS (None: the target profile's integrated loudness).
    pub target_lufs: Option<f64>,
    /// Stage switches.
    pub eq: bool,
    /// Multiband compression on/off.
    pub dynamics: bool,
    /// Width on/off.
    pub width: bool,
    /// Limiter on/off.
    pub limiter: bool,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self {
            amount: 1.0,
            smoothing_octaves: 1.0 / 3.0,
            max_eq_db: 12.0,
            max_width_db: 6.0,
            ceiling_dbtp: -1.0,
            target_lufs: None,
            eq: true,
            dynamics: true,
            width: true,
            limiter: true,
        }
    }
}

/// Solves the mastering chain that moves `mix` toward `target`. Notes for the user (bands the
/// bounded EQ cannot reach, a mono mix that cannot be widened, ...) are returned beside it.
pub fn solve(mix: &Profile, target: &Profile, opts: &SolveOptions) -> (Settings, Vec<String>) {
    let mut notes = Vec::new();
    let grid = mix.spectrum.frequencies_hz.clone();
    let cutoff = follow_limit_hz(mix, target);
    let mut mid_gain = vec![0.0; grid.len()];
    if opts.eq {
        let mid_diff = difference(&target.spectrum.mid_db, &mix.spectrum.mid_db);
        mid_gain = match_curve(&grid, &mid_diff, cutoff, opts);
        report_unreachable(&grid, &mid_diff, &mid_gain, cutoff, opts, "mid", &mut notes);
    }
    // The side EQ matches the side's shape (its own level offset removed); the width stage then
    // sets the side's level relative to the mid, band by band.
    let stereo = mix.channels >= 2;
    let mut side_gain = vec![0.0; grid.len()];
    if opts.eq && stereo && has_side(mix) && has_side(target) {
        let side_diff = difference(&target.spectrum.side_db, &mix.spectrum.side_db);
        side_gain = match_curve(&grid, &side_diff, cutoff, opts);
    }
    let width_bands = if opts.width && stereo && has_side(mix) && has_side(target) {
        let eq_sm = difference(&side_gain, &mid_gain);
        let gap = width_difference(mix, target);
        let wanted = difference(&gap, &eq_sm);
        let gains = width_curve(&grid, &wanted, cutoff, opts);
        report_width_bound(&grid, &wanted, cutoff, opts, &mut notes);
        report_bass_width_held(&grid, &gap, &mut notes);
        hold_bass_width(&grid, &mid_gain, &mut side_gain, &gains);
        grid.iter().zip(&gains).map(|(&f, &g)| band_gain(f, g)).collect()
    } else {
        hold_bass_width(&grid, &mid_gain, &mut side_gain, &[]);
        if opts.width && !stereo {
            notes.push("mix is mono: width left alone (mono stays mono)".into());
        } else if opts.width && !has_side(mix) {
            notes.push("mix has no side signal (dual mono): width cannot be created, left alone".into());
        } else if opts.width && !has_side(target) {
            notes.push("reference is mono: width left alone".into());
        }
        Vec::new()
    };
    let dynamics = if opts.dynamics {
        dynamics::solve_dynamics(mix, target, &grid, &mid_gain, &mut notes)
    } else {
        dynamics::neutral(DEFAULT_CROSSOVERS_HZ)
    };
    let target_lufs = opts.target_lufs.unwrap_or(target.loudness.integrated_lufs);
    let drive = if mix.loudness.integrated_lufs.is_finite() && target_lufs.is_finite() {
        (target_lufs - mix.loudness.integrated_lufs).clamp(-60.0, 36.0)
    } else {
        0.0
    };
    let fit_max = cutoff.min(20_000.0);
    let with_width: Vec<f64> = if width_bands.is_empty() {
        side_gain.clone()
    } else {
        side_gain.iter().zip(&width_bands).map(|(s, w)| s + w.side_gain_db).collect()
    };
    let rate = f64::from(mix.sample_rate_hz);
    let settings = Settings {
        version: SETTINGS_VERSION,
        eq: EqSettings {
            enabled: opts.eq,
            parametric_mid: parametric::fit(&grid, &mid_gain, fit_max, 10, rate),
            parametric_side: parametric::fit(&grid, &with_width, fit_max, 10, rate),
            frequencies_hz: grid,
            mid_gain_db: mid_gain,
            side_gain_db: side_gain,
        },
        dynamics,
        width: WidthSettings { enabled: opts.width && !width_bands.is_empty(), bands: width_bands },
        saturation: SaturationSettings::default(),
        limiter: LimiterSettings {
            enabled: opts.limiter,
            drive_db: drive,
            ceiling_dbtp: opts.ceiling_dbtp,
            lookahead_ms: 2.0,
            release_ms: 80.0,
            target_lufs: if target_lufs.is_finite() { target_lufs } else { -14.0 },
        },
        dither_seed: 0x005E_ED0F_4D17,
    };
    (settings, notes)
}

fn has_side(p: &Profile) -> bool {
    p.stereo.width_db > -60.0
}

/// The highest frequency the EQ follows: the lower of both content cutoffs, at most 20 kHz.
pub fn follow_limit_hz(mix: &Profile, target: &Profile) -> f64 {
    mix.spectrum.content_cutoff_hz.min(target.spectrum.content_cutoff_hz).min(20_000.0)
}

/// Band-by-band difference `a − b` in dB.
pub fn difference(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Fractional-octave smoothing of `values` on the log grid `grid` over `width_octaves`, using
/// only points where `valid` holds (triangular weights, 0 at ±width).
pub fn smooth(grid: &[f64], values: &[f64], valid: &[bool], width_octaves: f64) -> Vec<f64> {
    let w = width_octaves.max(1e-6);
    grid.iter()
        .map(|&f| {
            let (mut sum, mut weight) = (0.0, 0.0);
            for ((&g, &v), &ok) in grid.iter().zip(values).zip(valid) {
                let d = (g / f).log2().abs();
                if ok && d < w {
                    let wt = 1.0 - d / w;
                    sum += wt * v;
                    weight += wt;
                }
            }
            if weight > 0.0 {
                sum / weight
            } else {
                0.0
            }
        })
        .collect()
}

/// Turns a raw spectral difference into an EQ curve: smoothed, level offset removed, held flat
/// above `cutoff_hz` and below the lowest followed band (cuts only down there), bounded, scaled.
pub fn match_curve(grid: &[f64], diff: &[f64], cutoff_hz: f64, opts: &SolveOptions) -> Vec<f64> {
    let valid: Vec<bool> =
        grid.iter().zip(diff).map(|(f, d)| *f >= EQ_LOWEST_HZ && *f <= cutoff_hz && d.abs() < 100.0).collect();
    let smoothed = smooth(grid, diff, &valid, opts.smoothing_octaves);
    let offset = shape_offset(grid, &smoothed, &valid);
    let first = valid.iter().position(|v| *v);
    let last = valid.iter().rposition(|v| *v);
    let (Some(first), Some(last)) = (first, last) else {
        return vec![0.0; grid.len()];
    };
    (0..grid.len())
        .map(|i| {
            let g = if i < first {
                (smoothed[first] - offset).min(0.0)
            } else if i > last {
                smoothed[last] - offset
            } else {
                smoothed[i] - offset
            };
            (g.clamp(-opts.max_eq_db, opts.max_eq_db) * opts.amount.clamp(0.0, 1.0))
                .clamp(-opts.max_eq_db, opts.max_eq_db)
        })
        .collect()
}

/// Median of `curve` over valid grid points inside [`SHAPE_RANGE_HZ`]: the part of a
/// difference that is level, not shape. The median (not the mean) so that a few bands that
/// differ wildly (a sub-bass the mix lacks) do not shift the whole curve, and because the median
/// is the offset that minimises the mean absolute shape error.
pub fn shape_offset(grid: &[f64], curve: &[f64], valid: &[bool]) -> f64 {
    let mut v: Vec<f64> = grid
        .iter()
        .zip(curve)
        .zip(valid)
        .filter(|((f, _), ok)| **ok && (SHAPE_RANGE_HZ.0..=SHAPE_RANGE_HZ.1).contains(*f))
        .map(|((_, c), _)| *c)
        .collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    crate::analysis::loudness::percentile_sorted(&v, 0.5)
}

fn report_unreachable(
    grid: &[f64],
    diff: &[f64],
    gain: &[f64],
    cutoff: f64,
    opts: &SolveOptions,
    which: &str,
    notes: &mut Vec<String>,
) {
    let valid: Vec<bool> = grid.iter().map(|f| *f >= EQ_LOWEST_HZ && *f <= cutoff).collect();
    let smoothed = smooth(grid, diff, &valid, opts.smoothing_octaves);
    let offset = shape_offset(grid, &smoothed, &valid);
    let over: Vec<String> = grid
        .iter()
        .zip(smoothed.iter().zip(gain))
        .filter(|(f, (s, g))| **f <= cutoff && (**s - offset - **g).abs() > 0.5 && opts.amount >= 1.0)
        .map(|(f, (s, _))| format!("{} ({} wanted)", crate::report::fmt_hz(*f), fmt_wanted_db(s - offset)))
        .collect();
    if !over.is_empty() {
        notes.push(format!(
            "{which} EQ bounded at ±{:.0} dB; not fully reached at {}",
            opts.max_eq_db,
            over.join(", ")
        ));
    }
}

/// A wanted change for a note: "+3.2 dB", or "over +60 dB" for gaps no EQ should follow (a band
/// one file has and the other lacks, absurd saved profiles), never "+inf dB".
fn fmt_wanted_db(db: f64) -> String {
    const SHOWN_DB: f64 = 60.0;
    if db.is_nan() {
        "an unmeasurable change".into()
    } else if db.abs() > SHOWN_DB {
        format!("over {:+.0} dB", SHOWN_DB.copysign(db))
    } else {
        format!("{db:+.1} dB")
    }
}

/// Mean of a grid curve between two frequencies, dB.
pub fn mean_between(grid: &[f64], curve: &[f64], lo_hz: f64, hi_hz: f64) -> f64 {
    let vals: Vec<f64> = grid.iter().zip(curve).filter(|(f, _)| **f >= lo_hz && **f < hi_hz).map(|(_, g)| *g).collect();
    if vals.is_empty() {
        0.0
    } else {
        vals.iter().sum::<f64>() / vals.len() as f64
    }
}

/// A width band on the analysis grid: the 1/6-octave band around `centre_hz`.
fn band_gain(centre_hz: f64, gain_db: f64) -> WidthBandGain {
    let (low_hz, high_hz) = crate::analysis::spectrum::band_edges_hz(centre_hz);
    WidthBandGain { low_hz, high_hz, side_gain_db: gain_db }
}

/// Wanted change of the side-to-mid ratio per grid band, dB: (target S/M) − (mix S/M).
pub fn width_difference(mix: &Profile, target: &Profile) -> Vec<f64> {
    let sm = |p: &Profile| difference(&p.spectrum.side_db, &p.spectrum.mid_db);
    let mut d = difference(&sm(target), &sm(mix));
    for (i, v) in d.iter_mut().enumerate() {
        let floor = FLOOR_DB + 10.0;
        let usable = mix.spectrum.side_db[i] > floor
            && mix.spectrum.mid_db[i] > floor
            && target.spectrum.side_db[i] > floor
            && target.spectrum.mid_db[i] > floor;
        if !usable {
            *v = f64::NAN;
        }
    }
    d
}

/// Keeps the whole chain from widening the bass: at and below [`NO_WIDENING_BELOW_HZ`] the side
/// EQ may not raise the side more than the mid EQ raises the mid, less any narrowing the width
/// stage does there (`width_db`, per grid point; empty when there is no width stage). The width
/// stage alone never widens down there ([`width_curve`]); without this the side EQ would, since
/// it matches the side's own shape: a reference whose bass is wider than the mix's would get the
/// mix's bass widened by the back door. Bass kept as mono as the mix had it is what survives
/// mono playback, vinyl and club systems.
pub fn hold_bass_width(grid: &[f64], mid_db: &[f64], side_db: &mut [f64], width_db: &[f64]) {
    for (i, (&f, s)) in grid.iter().zip(side_db.iter_mut()).enumerate() {
        if f <= NO_WIDENING_BELOW_HZ {
            let w = width_db.get(i).copied().unwrap_or(0.0).min(0.0);
            *s = s.min(mid_db[i] - w);
        }
    }
}

/// Turns a wanted side-to-mid change into per-band side gains: smoothed like the EQ, bounded by
/// the width bound, never wider below [`NO_WIDENING_BELOW_HZ`], held beyond the followed range.
pub fn width_curve(grid: &[f64], wanted: &[f64], cutoff_hz: f64, opts: &SolveOptions) -> Vec<f64> {
    let valid: Vec<bool> =
        grid.iter().zip(wanted).map(|(f, d)| *f >= EQ_LOWEST_HZ && *f <= cutoff_hz && d.is_finite()).collect();
    let clean: Vec<f64> = wanted.iter().map(|d| if d.is_finite() { *d } else { 0.0 }).collect();
    let smoothed = smooth(grid, &clean, &valid, opts.smoothing_octaves);
    let (Some(first), Some(last)) = (valid.iter().position(|v| *v), valid.iter().rposition(|v| *v)) else {
        return vec![0.0; grid.len()];
    };
    grid.iter()
        .enumerate()
        .map(|(i, &f)| {
            let g = smoothed[i.clamp(first, last)].clamp(-opts.max_width_db, opts.max_width_db)
                * opts.amount.clamp(0.0, 1.0);
            if f <= NO_WIDENING_BELOW_HZ {
                g.min(0.0)
            } else {
                g
            }
        })
        .collect()
}

fn report_width_bound(grid: &[f64], wanted: &[f64], cutoff: f64, opts: &SolveOptions, notes: &mut Vec<String>) {
    let valid: Vec<bool> = grid.iter().zip(wanted).map(|(f, d)| *f >= 100.0 && *f <= cutoff && d.is_finite()).collect();
    let clean: Vec<f64> = wanted.iter().map(|d| if d.is_finite() { *d } else { 0.0 }).collect();
    let smoothed = smooth(grid, &clean, &valid, opts.smoothing_octaves);
    let over: Vec<f64> = smoothed
        .iter()
        .zip(&valid)
        .filter(|(s, ok)| **ok && s.abs() > opts.max_width_db + 0.5)
        .map(|(s, _)| *s)
        .collect();
    if let Some(worst) = over.iter().copied().max_by(|a, b| a.abs().total_cmp(&b.abs())) {
        notes.push(format!(
            "width bounded at ±{:.0} dB: the reference's side/mid differs by up to {} in {} of the bands from 100 Hz up",
            opts.max_width_db,
            fmt_wanted_db(worst),
            over.len()
        ));
    }
}

/// Says so when the reference's bass (40 Hz to [`NO_WIDENING_BELOW_HZ`]) is wider than the
/// mix's by more than 1 dB on average (`wanted`: the side-to-mid change per grid band, dB): the
/// master keeps the mix's bass width, so its side there stays that far under the reference's.
fn report_bass_width_held(grid: &[f64], wanted: &[f64], notes: &mut Vec<String>) {
    let bass: Vec<f64> = grid
        .iter()
        .zip(wanted)
        .filter(|(f, d)| (40.0..=NO_WIDENING_BELOW_HZ).contains(*f) && d.is_finite())
        .map(|(_, d)| *d)
        .collect();
    if bass.is_empty() {
        return;
    }
    let mean = bass.iter().sum::<f64>() / bass.len() as f64;
    if mean > 1.0 {
        notes.push(format!(
            "bass width kept: below {NO_WIDENING_BELOW_HZ:.0} Hz the reference is {} wider (side/mid) than the mix; the master never widens the bass, so its side stays that much under the reference's there",
            fmt_wanted_db(mean)
        ));
    }
}

/// Average of several target profiles (spectra, loudness, dynamics and width averaged in dB), for
/// `--ref a --ref b`.
pub fn average_profiles(profiles: &[Profile]) -> Option<Profile> {
    let weighted: Vec<(&Profile, f64)> = profiles.iter().map(|p| (p, 1.0)).collect();
    average_profiles_weighted(&weighted)
}

/// Weighted average of target profiles (weights need not sum to 1; a non-positive or non-finite
/// total gives `None`): the average target of a learned model weights each target by its size
/// without copying it that many times.
pub fn average_profiles_weighted(profiles: &[(&Profile, f64)]) -> Option<Profile> {
    let first = profiles.first()?.0;
    let total: f64 = profiles.iter().map(|(_, w)| *w).sum();
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    let mut avg = first.clone();
    let mean = |f: &dyn Fn(&Profile) -> f64| profiles.iter().map(|(p, w)| f(p) * w).sum::<f64>() / total;
    avg.source = profiles.iter().map(|(p, _)| p.source.as_str()).collect::<Vec<_>>().join(" + ");
    avg.loudness.integrated_lufs = mean(&|p| p.loudness.integrated_lufs);
    avg.loudness.range_lu = mean(&|p| p.loudness.range_lu);
    avg.loudness.true_peak_dbtp = mean(&|p| p.loudness.true_peak_dbtp);
    avg.loudness.plr_db = mean(&|p| p.loudness.plr_db);
    for i in 0..avg.spectrum.mid_db.len() {
        avg.spectrum.mid_db[i] = mean(&|p| p.spectrum.mid_db[i]);
        avg.spectrum.side_db[i] = mean(&|p| p.spectrum.side_db[i]);
    }
    avg.spectrum.content_cutoff_hz =
        profiles.iter().map(|(p, _)| p.spectrum.content_cutoff_hz).fold(f64::MAX, f64::min);
    for b in 0..avg.dynamics.len() {
        avg.dynamics[b].crest_db = mean(&|p| p.dynamics[b].crest_db);
        avg.dynamics[b].spread_db = mean(&|p| p.dynamics[b].spread_db);
        avg.dynamics[b].rms_dbfs = mean(&|p| p.dynamics[b].rms_dbfs);
    }
    for b in 0..avg.stereo.bands.len() {
        avg.stereo.bands[b].side_to_mid_db = mean(&|p| p.stereo.bands[b].side_to_mid_db);
    }
    avg.stereo.width_db = mean(&|p| p.stereo.width_db);
    avg.channels = profiles.iter().map(|(p, _)| p.channels).min().unwrap_or(2);
    avg.lossy = profiles.iter().any(|(p, _)| p.lossy);
    avg.envelopes = None;
    Some(avg)
}

#[cfg(test)]
mod tests {
    use super::fmt_wanted_db;

    #[test]
    fn notes_never_print_infinite_or_absurd_decibels() {
        assert_eq!(fmt_wanted_db(3.24), "+3.2 dB");
        assert_eq!(fmt_wanted_db(f64::INFINITY), "over +60 dB");
        assert_eq!(fmt_wanted_db(-1e9), "over -60 dB");
        assert_eq!(fmt_wanted_db(f64::NAN), "an unmeasurable change");
    }
}
