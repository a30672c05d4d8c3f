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
pub mod restore;

use serde::{Deserialize, Serialize};

use crate::analysis::spectrum::FLOOR_DB;
use crate::analysis::Profile;
use crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ;
use crate::settings::{
    EqRender, EqSettings, LimiterSettings, MixNote, SaturationSettings, Settings, WidthBandGain, WidthSettings,
    SETTINGS_VERSION,
};
use parametric::{FitLimits, ParametricEq};

/// Below this frequency the width stage may narrow but never widen, Hz.
pub const NO_WIDENING_BELOW_HZ: f64 = 120.0;
/// Lowest frequency the EQ follows, Hz.
pub const EQ_LOWEST_HZ: f64 = 20.0;
/// Range over which the EQ's level offset is computed (the shape error's range), Hz.
pub const SHAPE_RANGE_HZ: (f64, f64) = (40.0, 16_000.0);

/// Default EQ bound, ± dB: the broad moves a mastering engineer makes. A bigger gap is the
/// mix's to fix, and a mix note says so.
pub const DEFAULT_MAX_EQ_DB: f64 = 6.0;
/// Width of the smoothing that defines the tonal balance the broad EQ matches, octaves
/// (triangular weights in power, zero at ± this: the spread of an octave band, whose box of
/// ±1/2 octave has the same variance as a triangle of ±0.71).
pub const BROAD_OCTAVES: f64 = 0.75;
/// Width of the smoothing of the gap a mix note reports, octaves (in dB, triangular): fine
/// enough that a dip of about an octave reads at its real depth, broad enough to ignore notes.
pub const NOTE_OCTAVES: f64 = 0.5;
/// Correlation (of the second-to-second changes of short-term loudness, best alignment within
/// ±[`SAME_MUSIC_MAX_LAG_S`]) from which a reference counts as the same music as the mix.
pub const SAME_MUSIC_MIN_CORRELATION: f64 = 0.8;
/// Largest offset between the mix and a same-music reference, s.
pub const SAME_MUSIC_MAX_LAG_S: usize = 10;
/// Fewest overlapping seconds the same-music detection needs.
const SAME_MUSIC_MIN_SECONDS: usize = 12;
/// How far past the EQ bound (dB) an octave-scale gap must be before a mix note calls it out.
const MIX_NOTE_MARGIN_DB: f64 = 1.0;
/// How much less peak-to-loudness ratio or 400 ms level spread (dB) the mix may have than the
/// reference before a mix note calls it too dense: about what an ear notices between two songs.
const DENSE_SHORTFALL_DB: f64 = 3.0;
/// Level-motion scale the density note reads: 400 ms windows (EBU momentary).
const DENSE_MOTION_SCALE: usize = 1;

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
            max_eq_db: DEFAULT_MAX_EQ_DB,
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
    let rate = f64::from(mix.sample_rate_hz);
    let same = same_music(mix, target);
    let render = if same.is_some() { EqRender::Curve } else { EqRender::Filters };
    let mut mid_gain = vec![0.0; grid.len()];
    let mut mid_filters = ParametricEq::default();
    let mut mix_notes = Vec::new();
    if opts.eq {
        if let Some(r) = same {
            notes.push(format!(
                "the reference is the same music as the mix (short-term loudness moves together, r = {r:.2}): the EQ follows it at {} octave, not just its broad balance",
                fmt_octaves(opts.smoothing_octaves)
            ));
            let mid_diff = difference(&target.spectrum.mid_db, &mix.spectrum.mid_db);
            let matched = match_curve(&grid, &mid_diff, cutoff, opts);
            report_unreachable(&grid, &mid_diff, &matched, cutoff, opts, "mid", &mut notes);
            mid_filters = fit_fine(&grid, &matched, cutoff, opts.max_eq_db, rate);
            mid_gain = parametric::response_db(&mid_filters.bands, &clamped_grid(&grid, rate), rate);
        } else {
            let wanted = broad_difference(&grid, &target.spectrum.mid_db, &mix.spectrum.mid_db, cutoff);
            mid_filters = fit_broad(&grid, &bounded(&wanted, opts), cutoff, opts.max_eq_db, rate);
            mid_gain = parametric::response_db(&mid_filters.bands, &clamped_grid(&grid, rate), rate);
        }
        let mid_diff = difference(&target.spectrum.mid_db, &mix.spectrum.mid_db);
        mix_notes.extend(tone_notes(&grid, &mid_diff, &mid_gain, cutoff, opts));
    }
    // The side EQ matches the side's shape (its own level offset removed); the width stage then
    // sets the side's level relative to the mid, band by band.
    let stereo = mix.channels >= 2;
    let mut side_gain = vec![0.0; grid.len()];
    let mut side_filters = ParametricEq::default();
    if opts.eq && stereo && has_side(mix) && has_side(target) {
        if render == EqRender::Curve {
            let side_diff = difference(&target.spectrum.side_db, &mix.spectrum.side_db);
            side_gain = match_curve(&grid, &side_diff, cutoff, opts);
        } else {
            let wanted = broad_difference(&grid, &target.spectrum.side_db, &mix.spectrum.side_db, cutoff);
            let cap = bass_cap(&grid, &mid_gain);
            side_filters = fit_side_held(&grid, &bounded(&wanted, opts), &cap, cutoff, opts.max_eq_db, rate);
            side_gain = parametric::response_db(&side_filters.bands, &clamped_grid(&grid, rate), rate);
        }
    }
    let width_bands = if opts.width && stereo && has_side(mix) && has_side(target) {
        let eq_sm = difference(&side_gain, &mid_gain);
        let gap = width_difference(mix, target);
        let wanted = difference(&gap, &eq_sm);
        let gains = width_curve(&grid, &wanted, cutoff, opts, render);
        report_width_bound(&grid, &wanted, cutoff, opts, &mut notes);
        mix_notes.extend(width_notes(&grid, &wanted, &gains, cutoff, opts));
        report_bass_width_held(&grid, &gap, &mut notes);
        if render == EqRender::Curve {
            hold_bass_width(&grid, &mid_gain, &mut side_gain, &gains);
        }
        grid.iter().zip(&gains).map(|(&f, &g)| band_gain(f, g)).collect()
    } else {
        if render == EqRender::Curve {
            hold_bass_width(&grid, &mid_gain, &mut side_gain, &[]);
        }
        if opts.width && !stereo {
            notes.push("mix is mono: width left alone (mono stays mono)".into());
        } else if opts.width && !has_side(mix) {
            notes.push("mix has no side signal (dual mono): width cannot be created, left alone".into());
        } else if opts.width && !has_side(target) {
            notes.push("reference is mono: width left alone".into());
        }
        Vec::new()
    };
    mix_notes.extend(density_note(mix, target));
    let dynamics = if opts.dynamics {
        dynamics::solve_dynamics(mix, target, &grid, &mid_gain, same.is_some(), &mut notes)
    } else {
        dynamics::neutral(DEFAULT_CROSSOVERS_HZ)
    };
    let target_lufs = opts.target_lufs.unwrap_or(target.loudness.integrated_lufs);
    let drive = if mix.loudness.integrated_lufs.is_finite() && target_lufs.is_finite() {
        (target_lufs - mix.loudness.integrated_lufs).clamp(-60.0, 36.0)
    } else {
        0.0
    };
    let mut eq = EqSettings {
        enabled: opts.eq,
        frequencies_hz: grid,
        mid_gain_db: mid_gain,
        side_gain_db: side_gain,
        parametric_mid: mid_filters,
        parametric_side: side_filters,
        render,
        filter_sample_rate_hz: rate,
    };
    let width = WidthSettings { enabled: opts.width && !width_bands.is_empty(), bands: width_bands };
    if render == EqRender::Curve {
        fit_curves_for_export(&mut eq, &width, cutoff);
    }
    let settings = Settings {
        version: SETTINGS_VERSION,
        eq,
        dynamics,
        width,
        saturation: SaturationSettings::default(),
        limiter: LimiterSettings {
            enabled: opts.limiter,
            drive_db: drive,
            ceiling_dbtp: opts.ceiling_dbtp,
            lookahead_ms: 2.0,
            release_ms: 80.0,
            target_lufs: if target_lufs.is_finite() { target_lufs } else { -14.0 },
            output_trim_db: 0.0,
        },
        dither_seed: 0x005E_ED0F_4D17,
        mix_notes,
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

/// "1/3" for a third of an octave, "1" for one: the smoothing in words.
fn fmt_octaves(octaves: f64) -> String {
    let inverse = 1.0 / octaves.max(1e-6);
    if octaves < 1.0 && (inverse - inverse.round()).abs() < 0.01 {
        format!("1/{:.0}", inverse.round())
    } else {
        format!("{octaves:.2}")
    }
}

/// Whether `target` is the same music as `mix` (an earlier master of it, a re-release): the
/// correlation of the second-to-second changes of their short-term loudness, at the best offset
/// within ±[`SAME_MUSIC_MAX_LAG_S`], when it reaches [`SAME_MUSIC_MIN_CORRELATION`]. Changes,
/// not levels: two songs that both get louder toward the end correlate in level, not in the
/// bar-by-bar movement. Mastering (EQ, compression, limiting) keeps that movement.
pub fn same_music(mix: &Profile, target: &Profile) -> Option<f64> {
    let steps =
        |p: &Profile| -> Vec<f64> { p.loudness.short_term_series_lufs.windows(2).map(|w| w[1] - w[0]).collect() };
    let (a, b) = (steps(mix), steps(target));
    if a.len().min(b.len()) < SAME_MUSIC_MIN_SECONDS {
        return None;
    }
    let longer = a.len().max(b.len()) as f64;
    if (a.len() as f64 - b.len() as f64).abs() > (0.1 * longer).max(SAME_MUSIC_MAX_LAG_S as f64) {
        return None;
    }
    let lag_max = SAME_MUSIC_MAX_LAG_S as isize;
    let best = (-lag_max..=lag_max)
        .filter_map(|lag| {
            let (x, y) = if lag >= 0 {
                let l = lag.unsigned_abs();
                (a.get(l..)?, &b[..])
            } else {
                (&a[..], b.get(lag.unsigned_abs()..)?)
            };
            let n = x.len().min(y.len());
            (n >= SAME_MUSIC_MIN_SECONDS).then(|| pearson(&x[..n], &y[..n]))
        })
        .filter(|r| r.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    (best >= SAME_MUSIC_MIN_CORRELATION).then_some(best)
}

/// Pearson correlation of two equally long series (NaN when either is flat).
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx <= 1e-12 || syy <= 1e-12 {
        f64::NAN
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// The broad tonal gap `target − mix` per grid point, dB: both spectra averaged in power over
/// [`BROAD_OCTAVES`] (so that a band's level is what the octave around it holds, as an octave-band
/// meter reads it, not where notes happen to fall), level offset removed (median over
/// [`SHAPE_RANGE_HZ`]), followed from [`EQ_LOWEST_HZ`] to `cutoff_hz` and held beyond.
pub fn broad_difference(grid: &[f64], target_db: &[f64], mix_db: &[f64], cutoff_hz: f64) -> Vec<f64> {
    let valid: Vec<bool> = grid
        .iter()
        .zip(target_db.iter().zip(mix_db))
        .map(|(f, (t, m))| *f >= EQ_LOWEST_HZ && *f <= cutoff_hz && t.is_finite() && m.is_finite())
        .collect();
    let power = |db: &[f64]| -> Vec<f64> { db.iter().map(|v| 10f64.powf(v.clamp(-300.0, 300.0) / 10.0)).collect() };
    let level = |db: &[f64]| -> Vec<f64> {
        smooth(grid, &power(db), &valid, BROAD_OCTAVES).iter().map(|p| 10.0 * p.max(1e-30).log10()).collect()
    };
    let d = difference(&level(target_db), &level(mix_db));
    let (Some(first), Some(last)) = (valid.iter().position(|v| *v), valid.iter().rposition(|v| *v)) else {
        return vec![0.0; grid.len()];
    };
    let offset = shape_offset(grid, &d, &valid);
    (0..grid.len()).map(|i| if i < first { (d[first] - offset).min(0.0) } else { d[i.min(last)] - offset }).collect()
}

/// `wanted` bounded to ±`max_eq_db` and scaled by the amount: what the EQ aims at.
fn bounded(wanted: &[f64], opts: &SolveOptions) -> Vec<f64> {
    wanted.iter().map(|w| w.clamp(-opts.max_eq_db, opts.max_eq_db) * opts.amount.clamp(0.0, 1.0)).collect()
}

/// The grid with frequencies past 0.499 of the sample rate held there (a filter's response
/// above Nyquist is read as its response just below it).
pub fn clamped_grid(grid: &[f64], sample_rate_hz: f64) -> Vec<f64> {
    grid.iter().map(|f| f.min(0.499 * sample_rate_hz)).collect()
}

/// The broad filters that draw `target_db` (dB on `grid`) from 20 Hz to `cutoff_hz`
/// ([`FitLimits::broad`]: two shelves and at most six bells, Q ≤ 2, every gain and their sum
/// within ±`max_eq_db`, sub-octave detail of the curve penalised).
pub fn fit_broad(grid: &[f64], target_db: &[f64], cutoff_hz: f64, max_eq_db: f64, sample_rate_hz: f64) -> ParametricEq {
    let fit_max = cutoff_hz.min(20_000.0);
    parametric::fit_within(grid, target_db, fit_max, &FitLimits::broad(max_eq_db), sample_rate_hz)
}

/// The filters of a same-music mid EQ that draw the matched curve `target_db` (dB on `grid`)
/// from 20 Hz to `cutoff_hz` ([`FitLimits::fine`]: two musical shelves and at most six bells,
/// Q ≤ 3, every gain and their sum within ±`max_eq_db`). The mid curve renders as their
/// response, so the exports (at most 8 filters an engineer can import) hold what renders
/// rather than an approximation of a finer curve; a re-master's own EQ is a few such filters.
pub fn fit_fine(grid: &[f64], target_db: &[f64], cutoff_hz: f64, max_eq_db: f64, sample_rate_hz: f64) -> ParametricEq {
    let fit_max = cutoff_hz.min(20_000.0);
    parametric::fit_within(grid, target_db, fit_max, &FitLimits::fine(max_eq_db), sample_rate_hz)
}

/// [`fit_broad`] for the side EQ, kept at or under `cap_db` (per grid point; the bass, where
/// the side may not rise more than the mid, see [`hold_bass_width`]): where the fitted response
/// passes the cap, the target is lowered there by the excess and the filters fitted again.
fn fit_side_held(
    grid: &[f64],
    target_db: &[f64],
    cap_db: &[f64],
    cutoff_hz: f64,
    max_eq_db: f64,
    sample_rate_hz: f64,
) -> ParametricEq {
    let eval_grid = clamped_grid(grid, sample_rate_hz);
    let mut target: Vec<f64> = target_db.iter().zip(cap_db).map(|(t, c)| t.min(*c)).collect();
    let mut eq = fit_broad(grid, &target, cutoff_hz, max_eq_db, sample_rate_hz);
    for _ in 0..4 {
        let response = parametric::response_db(&eq.bands, &eval_grid, sample_rate_hz);
        let mut over = false;
        for ((t, r), c) in target.iter_mut().zip(&response).zip(cap_db) {
            // Lowered, but never past the bound: a cap the filters cannot follow (a mid EQ that
            // swings faster than a broad side fit can) would otherwise drive the target down by
            // the same excess at every round, and the fit into bells stacked at the bound.
            if r - c > 0.05 && *t > -max_eq_db {
                *t = (*t - (r - c)).max(-max_eq_db);
                over = true;
            }
        }
        if !over {
            break;
        }
        eq = fit_broad(grid, &target, cutoff_hz, max_eq_db, sample_rate_hz);
    }
    eq
}

/// Side-EQ cap per grid point: at and below [`NO_WIDENING_BELOW_HZ`] the mid EQ (the side may
/// not rise more than the mid), free above.
fn bass_cap(grid: &[f64], mid_db: &[f64]) -> Vec<f64> {
    grid.iter().zip(mid_db).map(|(f, m)| if *f <= NO_WIDENING_BELOW_HZ { *m } else { f64::INFINITY }).collect()
}

/// The detailed parametric fit of the rendered side curve (with the width stage) of a fine,
/// curve-rendered EQ, for the JSON. The mid needs none: its curve is its filters' response.
fn fit_curves_for_export(eq: &mut EqSettings, width: &WidthSettings, cutoff_hz: f64) {
    let fit_max = cutoff_hz.min(20_000.0);
    let rate = eq.filter_sample_rate_hz;
    let side_total: Vec<f64> =
        eq.frequencies_hz.iter().map(|&f| crate::render::eq::side_curve_db(eq, width, f)).collect();
    eq.parametric_side = parametric::fit(&eq.frequencies_hz, &side_total, fit_max, 10, rate);
}

/// One closed-loop correction of the EQ from the master as measured (`out_*`, dB on `grid`)
/// toward what it should be (`want_*`): the mid's filters are fitted again to (their response +
/// the gap), broad filters to the broad gap, a same-music (curve-rendered) mid's finer filters
/// to the smoothed gap, so every correction stays the kind of filters the first fit set; a
/// curve-rendered side adds the smoothed gap. At and below [`NO_WIDENING_BELOW_HZ`] the side
/// rises no more than the mid does plus what the master lost of the mix's own side-to-mid
/// ratio (`mix_side_to_mid`). Returns the change made to the mid and the side EQ, dB per grid
/// point.
#[allow(clippy::too_many_arguments)]
pub fn correct_eq(
    eq: &mut EqSettings,
    grid: &[f64],
    (want_mid, out_mid): (&[f64], &[f64]),
    (want_side, out_side): (&[f64], &[f64]),
    mix_side_to_mid: &[f64],
    cutoff_hz: f64,
    opts: &SolveOptions,
    stereo: bool,
) -> (Vec<f64>, Vec<f64>) {
    let max = opts.max_eq_db;
    let mut loop_opts = opts.clone();
    loop_opts.amount = 1.0;
    let filters = eq.render == EqRender::Filters;
    let rate = eq.filter_sample_rate_hz;
    let eval_grid = clamped_grid(grid, rate);
    let gap = |want: &[f64], out: &[f64]| {
        if filters {
            broad_difference(grid, want, out, cutoff_hz)
        } else {
            match_curve(grid, &difference(want, out), cutoff_hz, &loop_opts)
        }
    };
    let e_mid = gap(want_mid, out_mid);
    let old_mid = eq.mid_gain_db.clone();
    let target: Vec<f64> = old_mid.iter().zip(&e_mid).map(|(g, e)| (g + e).clamp(-max, max)).collect();
    eq.parametric_mid = if filters {
        fit_broad(grid, &target, cutoff_hz, max, rate)
    } else {
        fit_fine(grid, &target, cutoff_hz, max, rate)
    };
    eq.mid_gain_db = parametric::response_db(&eq.parametric_mid.bands, &eval_grid, rate);
    let d_mid = difference(&eq.mid_gain_db, &old_mid);
    let mut d_side = vec![0.0; grid.len()];
    if stereo && eq.side_gain_db.iter().any(|g| *g != 0.0) {
        let mut e_side = gap(want_side, out_side);
        // Measured, not summed from the gains, so that what the clipper and the limiter narrow
        // is restored, and no more.
        let mut cap = vec![f64::INFINITY; grid.len()];
        for (i, f) in grid.iter().enumerate() {
            if *f <= NO_WIDENING_BELOW_HZ {
                let lost = mix_side_to_mid[i] - (out_side[i] - out_mid[i]);
                let allowed = d_mid[i] + if lost.is_finite() { lost } else { 0.0 };
                e_side[i] = e_side[i].min(allowed);
                cap[i] = eq.side_gain_db[i] + allowed;
            }
        }
        let old_side = eq.side_gain_db.clone();
        if filters {
            let target: Vec<f64> = old_side.iter().zip(&e_side).map(|(g, e)| (g + e).clamp(-max, max)).collect();
            eq.parametric_side = fit_side_held(grid, &target, &cap, cutoff_hz, max, rate);
            eq.side_gain_db = parametric::response_db(&eq.parametric_side.bands, &eval_grid, rate);
        } else {
            for (g, e) in eq.side_gain_db.iter_mut().zip(&e_side) {
                *g = (*g + e).clamp(-max, max);
            }
        }
        d_side = difference(&eq.side_gain_db, &old_side);
    }
    (d_mid, d_side)
}

/// After the loop: the export fits of a curve-rendered EQ, and the mix notes' "mastering adds"
/// read off the EQ and width as they were rendered.
pub fn finish_eq(settings: &mut Settings, cutoff_hz: f64) {
    if settings.eq.render == EqRender::Curve {
        fit_curves_for_export(&mut settings.eq, &settings.width, cutoff_hz);
    }
    let (eq, width) = (&settings.eq, &settings.width);
    for note in settings.mix_notes.iter_mut().filter(|n| n.kind == "tone" || n.kind == "width") {
        let grid: Vec<f64> =
            eq.frequencies_hz.iter().copied().filter(|f| (note.low_hz..=note.high_hz).contains(f)).collect();
        if grid.is_empty() {
            continue;
        }
        let at = |f: f64| match note.kind.as_str() {
            "width" => crate::render::eq::width_at(width, f),
            _ => crate::render::eq::mid_curve_db(eq, f),
        };
        note.applied_db = grid.iter().map(|&f| at(f)).sum::<f64>() / grid.len() as f64;
        note.text = mix_note_text(note);
    }
}

/// What a frequency range is called in a mix, and its verb ("the low-mids are").
fn region_name(centre_hz: f64) -> &'static str {
    match centre_hz {
        f if f < 60.0 => "sub-bass is",
        f if f < 150.0 => "bass is",
        f if f < 500.0 => "low-mids are",
        f if f < 2_000.0 => "mids are",
        f if f < 5_000.0 => "upper mids are",
        f if f < 10_000.0 => "highs are",
        _ => "air is",
    }
}

/// A mix note in words, from its numbers.
pub fn mix_note_text(n: &MixNote) -> String {
    let range = format!("{}–{}", crate::report::fmt_hz(n.low_hz), crate::report::fmt_hz(n.high_hz));
    let region = region_name((n.low_hz.max(1.0) * n.high_hz).sqrt());
    let gap = n.gap_db.abs().min(60.0);
    let applied = n.applied_db.abs();
    if n.kind == "width" {
        if n.gap_db > 0.0 {
            format!(
                "{range} is {gap:.0} dB narrower than the reference (side to mid): the mix is narrow there (pan or spread its parts); mastering widens {applied:.0} dB"
            )
        } else {
            format!(
                "{range} is {gap:.0} dB wider than the reference (side to mid): the mix is wide there (check phase and wide effects); mastering narrows {applied:.0} dB"
            )
        }
    } else if n.gap_db > 0.0 {
        format!(
            "{range} is {gap:.0} dB under the reference: the {region} thin in the mix; mastering adds {applied:.0} dB"
        )
    } else {
        format!(
            "{range} is {gap:.0} dB over the reference: the {region} heavy in the mix; mastering takes {applied:.0} dB off"
        )
    }
}

/// Runs of grid points (within `valid`) where `|gap|` passes `bound` by [`MIX_NOTE_MARGIN_DB`],
/// one sign per run: (first index, last index).
fn runs_past(gap: &[f64], valid: &[bool], bound: f64) -> Vec<(usize, usize)> {
    let sign = |i: usize| {
        if !valid[i] || !gap[i].is_finite() || gap[i].abs() <= bound + MIX_NOTE_MARGIN_DB {
            0.0
        } else {
            gap[i].signum()
        }
    };
    let mut runs = Vec::new();
    let mut i = 0;
    while i < gap.len() {
        let s = sign(i);
        if s == 0.0 {
            i += 1;
            continue;
        }
        let start = i;
        while i + 1 < gap.len() && sign(i + 1) == s {
            i += 1;
        }
        // A single 1/6-octave point past the bound is the smoothed gap grazing it, not a range.
        if i > start {
            runs.push((start, i));
        }
        i += 1;
    }
    runs
}

/// A note for each run of `gap` past `bound`: its range (outer band edges), its largest gap,
/// the mean of `applied` over it.
fn notes_for_runs(kind: &str, grid: &[f64], gap: &[f64], applied: &[f64], valid: &[bool], bound: f64) -> Vec<MixNote> {
    runs_past(gap, valid, bound)
        .into_iter()
        .map(|(a, b)| {
            let worst = (a..=b).map(|i| gap[i]).max_by(|x, y| x.abs().total_cmp(&y.abs())).unwrap_or(0.0);
            let mut note = MixNote {
                kind: kind.into(),
                low_hz: crate::analysis::spectrum::band_edges_hz(grid[a]).0,
                high_hz: crate::analysis::spectrum::band_edges_hz(grid[b]).1,
                gap_db: worst,
                applied_db: applied[a..=b].iter().sum::<f64>() / (b - a + 1) as f64,
                text: String::new(),
            };
            note.text = mix_note_text(&note);
            note
        })
        .collect()
}

/// Mix notes for the tonal gaps (`diff`: target − mix mid spectrum, dB, smoothed here over
/// [`NOTE_OCTAVES`] with the level offset removed) past the EQ bound; `applied` is the EQ.
fn tone_notes(grid: &[f64], diff: &[f64], applied: &[f64], cutoff: f64, opts: &SolveOptions) -> Vec<MixNote> {
    if opts.amount < 1.0 || !opts.eq {
        return Vec::new();
    }
    let valid: Vec<bool> =
        grid.iter().zip(diff).map(|(f, d)| *f >= EQ_LOWEST_HZ && *f <= cutoff && d.is_finite()).collect();
    let clean: Vec<f64> = diff.iter().map(|d| if d.is_finite() { d.clamp(-200.0, 200.0) } else { 0.0 }).collect();
    let smoothed = smooth(grid, &clean, &valid, NOTE_OCTAVES);
    let offset = shape_offset(grid, &smoothed, &valid);
    let gap: Vec<f64> = smoothed.iter().map(|s| s - offset).collect();
    notes_for_runs("tone", grid, &gap, applied, &valid, opts.max_eq_db)
}

/// Mix notes for the width gaps (`wanted` side-to-mid change, dB) past the width bound, from
/// 120 Hz up (below, the bass is never widened and a note of its own says so).
fn width_notes(grid: &[f64], wanted: &[f64], applied: &[f64], cutoff: f64, opts: &SolveOptions) -> Vec<MixNote> {
    if opts.amount < 1.0 {
        return Vec::new();
    }
    let valid: Vec<bool> =
        grid.iter().zip(wanted).map(|(f, d)| *f > NO_WIDENING_BELOW_HZ && *f <= cutoff && d.is_finite()).collect();
    let clean: Vec<f64> = wanted.iter().map(|d| if d.is_finite() { *d } else { 0.0 }).collect();
    let smoothed = smooth(grid, &clean, &valid, BROAD_OCTAVES);
    notes_for_runs("width", grid, &smoothed, applied, &valid, opts.max_width_db)
}

/// The spread of a profile's 400 ms window levels, dB (95th minus 10th percentile; None for a
/// profile saved without level motion).
fn motion_spread_db(p: &Profile) -> Option<f64> {
    let scale = p.level_motion.as_ref()?.broadband.percentiles_db.get(DENSE_MOTION_SCALE)?;
    let spread = scale.last()? - scale.first()?;
    spread.is_finite().then_some(spread)
}

/// A mix note when the mix is denser than the reference: its peak-to-loudness ratio, or (when
/// both profiles carry it) the spread of its 400 ms levels, falls short of the reference's by
/// [`DENSE_SHORTFALL_DB`] or more. Those are what bus compression and limiting take away, and
/// the chain only takes more away, so no setting gives them back: the mix has to leave them in.
/// (The loudness range is printed beside them but does not decide: over 3 s windows it reads
/// the arrangement, a quiet verse and a loud chorus, as much as the mix's density.) `gap_db` is
/// the larger shortfall, dB; `applied_db` 0.
pub fn density_note(mix: &Profile, target: &Profile) -> Option<MixNote> {
    let (lra_mix, lra_ref) = (mix.loudness.range_lu, target.loudness.range_lu);
    let (plr_mix, plr_ref) = (mix.loudness.plr_db, target.loudness.plr_db);
    let plr_short = if plr_mix.is_finite() && plr_ref.is_finite() { plr_ref - plr_mix } else { f64::NAN };
    let motion = motion_spread_db(mix).zip(motion_spread_db(target));
    let motion_short = motion.map_or(f64::NAN, |(m, r)| r - m);
    let short = plr_short.max(motion_short);
    if short.is_nan() || short < DENSE_SHORTFALL_DB {
        return None;
    }
    let mut figures = Vec::new();
    if lra_mix.is_finite() && lra_ref.is_finite() {
        figures.push(format!("loudness range {lra_mix:.1} LU against {lra_ref:.1} LU"));
    }
    if let Some((m, r)) = motion {
        figures.push(format!("400 ms level spread {m:.1} dB against {r:.1} dB"));
    }
    if plr_short.is_finite() {
        figures.push(format!("peak-to-loudness {plr_mix:.1} dB against {plr_ref:.1} dB"));
    }
    let text = format!(
        "the mix is denser than the reference ({}): mastering only compresses and limits, it cannot give the mix the reference's dynamics back; leave them in the mix (less bus compression and limiting)",
        figures.join(", ")
    );
    Some(MixNote {
        kind: "dynamics".into(),
        low_hz: EQ_LOWEST_HZ,
        high_hz: 20_000.0,
        gap_db: short,
        applied_db: 0.0,
        text,
    })
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

/// How widely the width stage's gains are smoothed, octaves: as the EQ is. Beside a
/// filter-rendered (broad, different-song) EQ that is [`BROAD_OCTAVES`] at least, so that the
/// side with its width gain moves no faster than the broad side EQ under it; a same-music
/// (curve-rendered) match keeps the finer `--smoothing`.
pub fn width_smoothing_octaves(render: EqRender, opts: &SolveOptions) -> f64 {
    match render {
        EqRender::Filters => opts.smoothing_octaves.max(BROAD_OCTAVES),
        EqRender::Curve => opts.smoothing_octaves,
    }
}

/// Turns a wanted side-to-mid change into per-band side gains: smoothed like the EQ
/// ([`width_smoothing_octaves`] for an EQ rendered as `render`), bounded by the width bound,
/// never wider below [`NO_WIDENING_BELOW_HZ`], held beyond the followed range.
pub fn width_curve(grid: &[f64], wanted: &[f64], cutoff_hz: f64, opts: &SolveOptions, render: EqRender) -> Vec<f64> {
    let valid: Vec<bool> =
        grid.iter().zip(wanted).map(|(f, d)| *f >= EQ_LOWEST_HZ && *f <= cutoff_hz && d.is_finite()).collect();
    let clean: Vec<f64> = wanted.iter().map(|d| if d.is_finite() { *d } else { 0.0 }).collect();
    let smoothed = smooth(grid, &clean, &valid, width_smoothing_octaves(render, opts));
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
