//! Fitting a parametric EQ (low shelf, high shelf and up to ten peaking
//! filters) to a target magnitude curve.
//!
//! Units: frequencies in Hz, gains, curves and errors in dB, Q dimensionless.
//!
//! The fit is deterministic and runs in a few milliseconds for the usual
//! 61-point, 1/6-octave grid:
//!
//! 1. the two shelves are fitted first: their frequencies are searched on a
//!    1/3-octave grid (Q = 0.707) with the gains solved by linear least
//!    squares, then refined with a bounded Levenberg-Marquardt (Gauss-Newton)
//!    solver;
//! 2. peaking bands are added greedily at the largest local extrema of the
//!    residual, each initialised with the residual's gain and a Q from the
//!    residual's half-gain width; every addition is followed by a joint
//!    refinement of all parameters;
//! 3. the greedy loop stops when the RMS error falls below 0.1 dB, when a new
//!    band improves the RMS error by less than 0.02 dB, or after `max_peaks`
//!    bands; a final joint refinement follows and bands with |gain| < 0.1 dB
//!    are dropped.
//!
//! A broad fit ([`FitLimits::broad`]) also pays for sub-octave detail: the
//! squared difference between its response and that response's own octave
//! average at every fitted point is added to the cost
//! ([`FitLimits::roughness_weight`]), so a bell is set as wide, and a boost next
//! to a cut as gentle, as the target allows. Its bells sit at
//! [`MUSICAL_BELL_MIN_HZ`] or above (the sub-bass is the low shelf's), and no two
//! of them boost and cut within [`OPPOSING_BELLS_OCTAVES`] of each other (the
//! refinement keeps them apart after every step).
//!
//! Every point of the fitted range carries the same weight; on a log-spaced
//! grid this is equal weight per octave. Band frequencies are kept inside the
//! fitted range, and a negligible penalty on band gains keeps bands that
//! barely touch the fitted points from drifting to large gains.
//!
//! Capacity: 12 bands follow realistic tonal-balance differences (tilts plus
//! a handful of bumps) to ~0.1–0.2 dB RMS; a curve with ~20 independent
//! 1/3-octave bumps is left at ~0.5 dB RMS.

use crate::dsp::biquad::{BiquadCoeffs, FilterKind};

/// Upper limit on the number of peaking bands, whatever `max_peaks` asks for.
pub const MAX_PEAKS: usize = 10;
/// Lowest frequency fitted and lowest band frequency, in Hz.
pub const MIN_FREQ_HZ: f64 = 20.0;
/// Highest band frequency (and upper end of the preamp check), in Hz; band
/// frequencies are also kept below `0.45 · sample_rate_hz`.
pub const MAX_FREQ_HZ: f64 = 20_000.0;
/// Largest |gain| of a fitted band, in dB.
pub const MAX_BAND_GAIN_DB: f64 = 18.0;
/// Smallest Q of a fitted peaking band.
pub const MIN_Q: f64 = 0.3;
/// Largest Q of a fitted peaking band.
pub const MAX_Q: f64 = 8.0;
/// Q used to initialise the shelves (steepest cookbook shelf without
/// overshoot).
pub const SHELF_Q: f64 = 0.707;
/// Bands whose |gain| is below this (dB) are removed from the result.
pub const MIN_BAND_GAIN_DB: f64 = 0.1;

/// Largest band frequency as a fraction of the sample rate.
const MAX_FREQ_RATIO: f64 = 0.45;
/// Smallest shelf Q allowed during refinement.
const SHELF_Q_MIN: f64 = 0.3;
/// Largest shelf Q allowed during refinement (above ~0.7 the cookbook shelf
/// overshoots: up to 2 the shelf may add a mild bump at its corner).
const SHELF_Q_MAX: f64 = 2.0;
/// The greedy loop stops once the RMS error (dB) is below this.
const GOOD_ENOUGH_RMS_DB: f64 = 0.1;
/// A new peaking band must improve the RMS error by at least this (dB).
const MIN_IMPROVEMENT_DB: f64 = 0.02;
/// Gain penalty weight per fitted point, per dB² of band gain.
const GAIN_PENALTY_PER_POINT: f64 = 1e-6;
/// Target values are clamped to ±this (dB) before fitting.
const TARGET_LIMIT_DB: f64 = 100.0;
/// Spacing (octaves) of the shelf-frequency search grid.
const SHELF_SEARCH_STEP_OCT: f64 = 1.0 / 3.0;
/// Spacing (octaves) of the grid on which the preamp is computed.
const PREAMP_GRID_STEP_OCT: f64 = 1.0 / 48.0;
/// Number of residual extrema tried as the position of a new peaking band.
const PEAK_CANDIDATES: usize = 3;
/// Levenberg-Marquardt iterations for a new band alone / for all bands.
const NEW_BAND_ITERATIONS: usize = 15;
const JOINT_ITERATIONS: usize = 25;
const FINAL_ITERATIONS: usize = 60;

/// The parameter box of a fit: how many bands, how steep, how far, where the shelves may sit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitLimits {
    /// Most peaking bands (at most [`MAX_PEAKS`] are used).
    pub max_peaks: usize,
    /// Largest |gain| of any band, dB.
    pub max_gain_db: f64,
    /// Q range of the peaking bands.
    pub peak_q: (f64, f64),
    /// Q range of the shelves (cookbook Q form).
    pub shelf_q: (f64, f64),
    /// Corner-frequency range of the low shelf, Hz.
    pub low_shelf_hz: (f64, f64),
    /// Corner-frequency range of the high shelf, Hz.
    pub high_shelf_hz: (f64, f64),
    /// Keep the summed response (not only each band) within ±`max_gain_db` over 20 Hz–20 kHz:
    /// all gains are scaled down together until it is.
    pub bound_total: bool,
    /// Weight of the penalty on band gains, per fitted point and dB² of gain: a band must earn
    /// its gain by the error it removes, so two big overlapping bands never cancel each other.
    pub gain_penalty_per_point: f64,
    /// Weight of the penalty on the fitted curve's sub-octave detail: the squared difference
    /// between the response and its own plain average over the octave around each fitted point
    /// ([`ROUGHNESS_HALF_OCTAVES`] each side), summed over the fitted points, against the
    /// squared fit error (1: a dB of carving costs as much as a dB of missed target). 0 turns
    /// it off: a detailed fit follows the curve it is given.
    pub roughness_weight: f64,
    /// Centre-frequency range of the bells, Hz (also kept inside the fitted range).
    pub bell_hz: (f64, f64),
    /// Two bells closer than this (octaves) may not boost and cut: the refinement keeps them
    /// apart, and a pair it cannot part loses a bell or becomes one (see
    /// [`part_opposing_bells`]). 0 allows any pair.
    pub opposing_bells_octaves: f64,
    /// Tidy the fit (merge twin bells, drop small ones) when it costs at most this RMS error,
    /// dB; 0 leaves the bells as fitted.
    pub tidy_tolerance_db: f64,
}

impl FitLimits {
    /// The detailed fit of an arbitrary curve (for export of a fine matched curve): up to
    /// `max_peaks` bells with Q up to 8, shelves anywhere, ±18 dB.
    pub fn detailed(max_peaks: usize) -> Self {
        Self {
            max_peaks,
            max_gain_db: MAX_BAND_GAIN_DB,
            peak_q: (MIN_Q, MAX_Q),
            shelf_q: (SHELF_Q_MIN, SHELF_Q_MAX),
            low_shelf_hz: (MIN_FREQ_HZ, MAX_FREQ_HZ),
            high_shelf_hz: (MIN_FREQ_HZ, MAX_FREQ_HZ),
            bound_total: false,
            gain_penalty_per_point: GAIN_PENALTY_PER_POINT,
            roughness_weight: 0.0,
            bell_hz: (MIN_FREQ_HZ, MAX_FREQ_HZ),
            opposing_bells_octaves: 0.0,
            tidy_tolerance_db: 0.0,
        }
    }

    /// What a mastering engineer would set and import: a low shelf with its corner at
    /// 30–400 Hz, a high shelf at 2–16 kHz, both gentle (Q 0.5–0.8, no overshoot bump), and at
    /// most [`BROAD_PEAKS`] bells no narrower than Q [`BROAD_MAX_Q`] (about 2/3 octave), every
    /// gain within ±`max_gain_db`: at most 8 filters, none of them narrow enough to follow notes.
    pub fn broad(max_gain_db: f64) -> Self {
        Self {
            max_peaks: BROAD_PEAKS,
            max_gain_db: clamp(max_gain_db, 0.0, MAX_BAND_GAIN_DB),
            peak_q: (MIN_Q, BROAD_MAX_Q),
            shelf_q: (0.5, SHELF_Q),
            low_shelf_hz: (30.0, 400.0),
            high_shelf_hz: (2_000.0, 16_000.0),
            bound_total: true,
            gain_penalty_per_point: BROAD_GAIN_PENALTY_PER_POINT,
            roughness_weight: BROAD_ROUGHNESS_WEIGHT,
            bell_hz: (MUSICAL_BELL_MIN_HZ, MAX_FREQ_HZ),
            opposing_bells_octaves: OPPOSING_BELLS_OCTAVES,
            tidy_tolerance_db: TIDY_TOLERANCE_DB,
        }
    }

    /// The finer match of the same music, still in the box an engineer imports: the musical
    /// shelves of [`FitLimits::broad`] and at most 8 filters, but bells up to Q [`FINE_MAX_Q`]
    /// anywhere from 20 Hz and no roughness penalty or tidying, so the filters follow the
    /// matched curve's detail (a re-master's EQ is itself a few such filters) rather than only
    /// its octave balance. The truth is known here: a sub-bass bell that puts back what the
    /// limiter moved at 40 Hz restores the track rather than guessing at another song's balance.
    pub fn fine(max_gain_db: f64) -> Self {
        Self {
            peak_q: (MIN_Q, FINE_MAX_Q),
            bell_hz: (MIN_FREQ_HZ, MAX_FREQ_HZ),
            gain_penalty_per_point: GAIN_PENALTY_PER_POINT,
            roughness_weight: 0.0,
            opposing_bells_octaves: 0.0,
            tidy_tolerance_db: 0.0,
            ..Self::broad(max_gain_db)
        }
    }
}

/// Lowest bell centre of a mastering fit, Hz. Below it is sub-bass: a mastering engineer moves
/// it with the low shelf (corner 30–400 Hz), not with a bell a few Hz wide at 20–30 Hz that
/// music barely reaches and small speakers cannot play, and whose response, set against a bell
/// just above it, draws a boost-and-cut a few Hz apart. 50 Hz is about the lowest kick
/// fundamental; a bell there still shapes refeval's lowest octave band (44–88 Hz).
pub const MUSICAL_BELL_MIN_HZ: f64 = 50.0;
/// Two bells of a broad fit less than this many octaves apart may not boost and cut: within an octave a boost beside a cut is sub-octave detail, what the
/// roughness reading measures, and the two fight each other rather than shape the balance.
pub const OPPOSING_BELLS_OCTAVES: f64 = 1.0;
/// Largest Q of a bell in a same-music fit (the export bound: about half an octave).
pub const FINE_MAX_Q: f64 = 3.0;

/// Bells in a broad fit (with the two shelves: 8 filters).
pub const BROAD_PEAKS: usize = 6;
/// Gain penalty of a broad fit per point and dB²: a 6 dB band costs as much as 0.2 dB RMS of
/// error, so a band that removes less than that is not worth it.
pub const BROAD_GAIN_PENALTY_PER_POINT: f64 = 1e-3;
/// Largest Q of a bell in a broad fit (half-gain bandwidth about 0.7 octave).
pub const BROAD_MAX_Q: f64 = 2.0;
/// Half-width of the octave average the roughness penalty compares the response with, octaves.
pub const ROUGHNESS_HALF_OCTAVES: f64 = 0.5;
/// Roughness weight of a broad fit (see [`FitLimits::roughness_weight`]). The gap a broad fit is
/// given is already averaged over about an octave, yet it still swings several dB from one
/// octave to the next, and bells at Q 2 beside a shelf follow it into sub-octave boosts and
/// notches (an EQ 0.8-1.0 dB rough against its own octave average on cross-song pairs). Weights
/// measured on the 9 cross-song corpus pairs at `--max-eq-db 12` (`benches/tonal_bars.py`),
/// on the pair where the trade binds (Saber vs northerners, roughness / octave-band tonal error
/// over the bands within ±10 dB): 0 (none) 0.81 / 0.50, 0.5 0.68 / 0.57, 0.7 0.59 / 0.76,
/// 1 0.54 / 0.89, 3 0.44 / 1.20. 0.7 is where both come to their bars (0.6 and 0.75) together;
/// on the other pairs it lowers the roughness by 0.0-0.2 dB and moves the tonal error by -0.1 to
/// +0.2 dB.
pub const BROAD_ROUGHNESS_WEIGHT: f64 = 0.7;

/// One band of a parametric EQ.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParametricBand {
    /// Filter shape.
    pub kind: FilterKind,
    /// Centre (peaking) or midpoint (shelves) frequency in Hz.
    pub freq_hz: f64,
    /// Gain in dB (peak gain, or shelf plateau gain).
    pub gain_db: f64,
    /// Dimensionless Q (cookbook Q form for the shelves).
    pub q: f64,
}

impl ParametricBand {
    /// Cookbook biquad coefficients of this band at `sample_rate_hz` (Hz).
    pub fn coeffs(&self, sample_rate_hz: f64) -> BiquadCoeffs {
        BiquadCoeffs::design(self.kind, self.freq_hz, self.gain_db, self.q, sample_rate_hz)
    }
}

/// A fitted parametric EQ.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParametricEq {
    /// Gain in dB applied before the bands: `-max(0, max response)` over
    /// 20 Hz–20 kHz, so the EQ never boosts anywhere in the audible band.
    pub preamp_db: f64,
    /// The bands: low shelf first, peaking bands by ascending frequency, high
    /// shelf last. Bands with |gain| < 0.1 dB are omitted.
    pub bands: Vec<ParametricBand>,
    /// RMS of (response − target) in dB over the fitted points (preamp not
    /// included).
    pub fit_rms_error_db: f64,
    /// Maximum |response − target| in dB over the fitted points (preamp not
    /// included).
    pub fit_max_error_db: f64,
}

impl ParametricEq {
    /// An EQ without bands; `rms_db` / `max_db` are the errors of doing nothing.
    fn empty(rms_db: f64, max_db: f64) -> Self {
        Self { preamp_db: 0.0, bands: Vec::new(), fit_rms_error_db: rms_db, fit_max_error_db: max_db }
    }
}

/// Summed magnitude response in dB of `bands` (in cascade, preamp not
/// included) at each of `freqs_hz` (Hz), for a filter running at
/// `sample_rate_hz` (Hz).
pub fn response_db(bands: &[ParametricBand], freqs_hz: &[f64], sample_rate_hz: f64) -> Vec<f64> {
    let coeffs: Vec<BiquadCoeffs> = bands.iter().map(|b| b.coeffs(sample_rate_hz)).collect();
    freqs_hz.iter().map(|&f| coeffs.iter().map(|c| c.magnitude_db(f, sample_rate_hz)).sum()).collect()
}

/// Fits a parametric EQ to `target_db` (dB) sampled at `freqs_hz` (Hz).
///
/// * `freqs_hz` / `target_db` – the target curve, normally a log-spaced grid
///   (about 1/6 octave, 20 Hz–20 kHz). Mismatched lengths give an empty EQ
///   with zero errors. Points with a non-finite frequency or target are
///   ignored; target values are clamped to ±100 dB.
/// * `fit_max_hz` – only points with 20 Hz ≤ f ≤ `fit_max_hz` (and below
///   Nyquist) are fitted, each with equal weight.
/// * `max_peaks` – maximum number of peaking bands (at most 10 are used).
/// * `sample_rate_hz` – sample rate (Hz) at which the bands will run.
///
/// The model is one low shelf, one high shelf and up to `max_peaks` peaking
/// bands, with frequencies in 20 Hz–min(20 kHz, 0.45·fs) and inside the
/// fitted range, |gain| ≤ 18 dB and Q in 0.3–8 (shelves 0.3–2). The result is
/// deterministic, never contains NaN, and its errors are measured over the
/// fitted points.
///
/// `preamp_db` covers 20 Hz–20 kHz; a high shelf keeps (at most) its plateau
/// gain above 20 kHz.
pub fn fit(
    freqs_hz: &[f64],
    target_db: &[f64],
    fit_max_hz: f64,
    max_peaks: usize,
    sample_rate_hz: f64,
) -> ParametricEq {
    fit_within(freqs_hz, target_db, fit_max_hz, &FitLimits::detailed(max_peaks), sample_rate_hz)
}

/// [`fit`] inside the parameter box `limits` (see [`FitLimits::broad`] for the mastering one).
pub fn fit_within(
    freqs_hz: &[f64],
    target_db: &[f64],
    fit_max_hz: f64,
    limits: &FitLimits,
    sample_rate_hz: f64,
) -> ParametricEq {
    if freqs_hz.len() != target_db.len() {
        return ParametricEq::empty(0.0, 0.0);
    }
    let Some(problem) = Problem::new(freqs_hz, target_db, fit_max_hz, sample_rate_hz, *limits) else {
        return ParametricEq::empty(0.0, 0.0);
    };
    let (rms0, max0) = problem.errors(&problem.zero_response());
    if rms0 < GOOD_ENOUGH_RMS_DB || !problem.bands_possible {
        return ParametricEq::empty(rms0, max0);
    }

    // 1. Shelves.
    let mut bands = problem.initial_shelves();
    let mut rms = problem.rms_from_cost(refine(&problem, &mut bands, 0, JOINT_ITERATIONS));

    // 2. Greedy peaking bands.
    let max_peaks = limits.max_peaks.min(MAX_PEAKS);
    let mut peaks = 0;
    while peaks < max_peaks && rms >= GOOD_ENOUGH_RMS_DB {
        let Some((trial_cost, trial)) = add_peak(&problem, &bands) else {
            break;
        };
        let trial_rms = problem.rms_from_cost(trial_cost);
        if rms - trial_rms < MIN_IMPROVEMENT_DB {
            break;
        }
        bands = trial;
        rms = trial_rms;
        peaks += 1;
    }

    // 3. Polish, drop negligible bands, re-polish once if anything was dropped.
    refine(&problem, &mut bands, 0, FINAL_ITERATIONS);
    let before = bands.len();
    bands.retain(|b| b.p[1].abs() >= MIN_BAND_GAIN_DB);
    if bands.len() != before && !bands.is_empty() {
        refine(&problem, &mut bands, 0, JOINT_ITERATIONS);
        bands.retain(|b| b.p[1].abs() >= MIN_BAND_GAIN_DB);
    }
    if limits.tidy_tolerance_db > 0.0 {
        tidy(&problem, &mut bands);
    }
    if limits.opposing_bells_octaves > 0.0 {
        part_opposing_bells(&problem, &mut bands);
    }
    if limits.bound_total {
        problem.bound_total(&mut bands);
    }

    problem.finish(&bands)
}

/// How much RMS error (dB) tidying a broad fit may cost: merging two overlapping bells into one
/// or dropping a small one is kept only if the refitted filters stay this close to the fit.
/// A broad target is an octave-smoothed music spectrum, itself uncertain by a few tenths of a
/// dB, so a tenth of a dB of fit is not worth a filter.
const TIDY_TOLERANCE_DB: f64 = 0.1;
/// Bells closer than this (octaves) and boosting or cutting alike are tried as one bell.
const MERGE_OCTAVES: f64 = 0.5;
/// Bells closer than this (octaves) are tried as one bell whatever their signs (a boost beside
/// a cut that close is two filters drawing what one draws).
const CANCEL_OCTAVES: f64 = 0.25;

/// Tidies a broad fit the way an engineer would set it: two same-signed bells within
/// [`MERGE_OCTAVES`] become one (gains added, frequency and Q averaged on a log scale, weighted
/// by gain, then everything refitted), and the smallest bells are dropped one by one, as long
/// as each step costs at most [`TIDY_TOLERANCE_DB`] of RMS error against the fit as it was.
/// The gain penalty makes two half-size twins cheaper than one band, and a greedy fit can park
/// a narrow bell beside a broad one; nobody imports either.
fn tidy(problem: &Problem, bands: &mut Vec<Band>) {
    let rms_of = |b: &[Band]| problem.errors(&problem.model(b)).0;
    let allowed = rms_of(bands) + problem.limits.tidy_tolerance_db;
    let close = MERGE_OCTAVES * std::f64::consts::LN_2;
    let very_close = CANCEL_OCTAVES * std::f64::consts::LN_2;
    loop {
        let peaks: Vec<usize> = (0..bands.len()).filter(|&i| bands[i].kind == FilterKind::Peaking).collect();
        let mut trials: Vec<Vec<Band>> = Vec::new();
        for (x, &i) in peaks.iter().enumerate() {
            for &j in &peaks[x + 1..] {
                let (a, b) = (bands[i], bands[j]);
                let apart = (a.p[0] - b.p[0]).abs();
                if (apart < close && a.p[1].signum() == b.p[1].signum()) || apart < very_close {
                    let w = a.p[1].abs() / (a.p[1].abs() + b.p[1].abs()).max(1e-12);
                    let mut t = bands.clone();
                    t[i].p = [w * a.p[0] + (1.0 - w) * b.p[0], a.p[1] + b.p[1], w * a.p[2] + (1.0 - w) * b.p[2]];
                    problem.project(&mut t[i]);
                    t.remove(j);
                    trials.push(t);
                }
            }
        }
        if let Some(&i) = peaks.iter().min_by(|&&a, &&b| bands[a].p[1].abs().total_cmp(&bands[b].p[1].abs())) {
            let mut t = bands.clone();
            t.remove(i);
            trials.push(t);
        }
        let best = trials
            .into_iter()
            .map(|mut t| {
                refine(problem, &mut t, 0, JOINT_ITERATIONS);
                (rms_of(&t), t)
            })
            .filter(|(rms, _)| *rms <= allowed)
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((_, t)) => *bands = t,
            None => return,
        }
    }
}

/// The first pair of bells (indices into `bands`) that boost and cut less than
/// [`FitLimits::opposing_bells_octaves`] apart, the pair with the smallest weaker gain first.
fn opposing_pair(problem: &Problem, bands: &[Band]) -> Option<(usize, usize)> {
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for i in 0..bands.len() {
        for j in i + 1..bands.len() {
            if problem.oppose(&bands[i], &bands[j]) {
                pairs.push((i, j));
            }
        }
    }
    let weaker = |&(i, j): &(usize, usize)| bands[i].p[1].abs().min(bands[j].p[1].abs());
    pairs.into_iter().min_by(|a, b| weaker(a).total_cmp(&weaker(b)))
}

/// Resolves every boost-and-cut pair of bells closer than [`FitLimits::opposing_bells_octaves`]
/// that [`Problem::separate`] could not part: of dropping either bell or making the two one
/// (gains added, centre and Q averaged on a log scale, weighted by gain), the refitted EQ with
/// the least cost is kept; then the next pair. Every step removes a bell, so this ends, and it
/// ends with no such pair: the fit's guarantee.
fn part_opposing_bells(problem: &Problem, bands: &mut Vec<Band>) {
    while let Some((i, j)) = opposing_pair(problem, bands) {
        let (a, b) = (bands[i], bands[j]);
        let w = a.p[1].abs() / (a.p[1].abs() + b.p[1].abs()).max(1e-12);
        let mut merged = bands.clone();
        merged[i].p = [w * a.p[0] + (1.0 - w) * b.p[0], a.p[1] + b.p[1], w * a.p[2] + (1.0 - w) * b.p[2]];
        problem.project(&mut merged[i]);
        merged.remove(j);
        let mut trials = vec![merged];
        let mut without_i = bands.clone();
        without_i.remove(i);
        let mut without_j = bands.clone();
        without_j.remove(j);
        trials.extend([without_i, without_j]);
        let best = trials
            .into_iter()
            .map(|mut t| {
                let cost = refine(problem, &mut t, 0, JOINT_ITERATIONS);
                (cost, t)
            })
            .min_by(|x, y| x.0.total_cmp(&y.0));
        match best {
            Some((_, t)) => *bands = t,
            None => return,
        }
        bands.retain(|b| b.p[1].abs() >= MIN_BAND_GAIN_DB);
    }
}

/// Adds the best of the peaking-band candidates at the residual's extrema
/// (each first fitted alone), then refines all bands jointly. Returns the new
/// cost and bands, or `None` when the residual has no extremum worth a band.
fn add_peak(problem: &Problem, bands: &[Band]) -> Option<(f64, Vec<Band>)> {
    let model = problem.model(bands);
    let residual: Vec<f64> = problem.target.iter().zip(&model).map(|(t, m)| t - m).collect();
    let mut best: Option<(f64, Vec<Band>)> = None;
    for band in problem.peak_candidates(&residual) {
        let mut trial = bands.to_vec();
        trial.push(band);
        let last = trial.len() - 1;
        let c = refine(problem, &mut trial, last, NEW_BAND_ITERATIONS);
        let better = match &best {
            Some((best_cost, _)) => c < *best_cost,
            None => true,
        };
        if better {
            best = Some((c, trial));
        }
    }
    let (_, mut trial) = best?;
    let cost = refine(problem, &mut trial, 0, JOINT_ITERATIONS);
    Some((cost, trial))
}

/// Allowed Q range for a band of `kind`.
fn q_bounds(limits: &FitLimits, kind: FilterKind) -> (f64, f64) {
    match kind {
        FilterKind::Peaking => limits.peak_q,
        FilterKind::LowShelf | FilterKind::HighShelf => limits.shelf_q,
    }
}

/// Never-panicking clamp (`f64::clamp` panics when `lo > hi`); NaN maps to `lo`.
fn clamp(v: f64, lo: f64, hi: f64) -> f64 {
    v.max(lo).min(hi.max(lo))
}

/// A band during fitting: parameters are `[ln(freq_hz), gain_db, ln(q)]`.
#[derive(Debug, Clone, Copy)]
struct Band {
    kind: FilterKind,
    p: [f64; 3],
}

impl Band {
    fn new(kind: FilterKind, freq_hz: f64, gain_db: f64, q: f64) -> Self {
        Self { kind, p: [freq_hz.ln(), gain_db, q.ln()] }
    }

    /// The public band; `exp(ln(x))` round-off is clamped back into bounds.
    fn to_public(self, limits: &FitLimits) -> ParametricBand {
        let (q_lo, q_hi) = q_bounds(limits, self.kind);
        ParametricBand {
            kind: self.kind,
            freq_hz: clamp(self.p[0].exp(), MIN_FREQ_HZ, MAX_FREQ_HZ),
            gain_db: clamp(self.p[1], -limits.max_gain_db, limits.max_gain_db),
            q: clamp(self.p[2].exp(), q_lo, q_hi),
        }
    }
}

/// `10 / ln(10)`: converts a natural log of a power ratio to dB.
const DB_PER_NEPER_POWER: f64 = 10.0 / std::f64::consts::LN_10;

/// A band's un-normalised cookbook coefficients `[b0, b1, b2, a0, a1, a2]`
/// and their derivatives with respect to `[ln f, gain dB, ln Q]`, for fast
/// evaluation of the magnitude and its gradient on the fitting grid.
///
/// The magnitude uses the cancellation-free form of the cookbook,
/// `|B|² = (b0+b1+b2)² − 4φ(b0·b1 + 4·b0·b2 + b1·b2) + 16φ²·b0·b2` with
/// `φ = sin²(w/2)`, and the ratio `|B|²/|A|²` does not depend on `a0`.
struct BandEval {
    coeffs: [f64; 6],
    grads: [[f64; 6]; 3],
}

impl BandEval {
    fn new(band: &Band, sample_rate_hz: f64) -> Self {
        let q = band.p[2].exp();
        let w0 = 2.0 * std::f64::consts::PI * band.p[0].exp() / sample_rate_hz;
        let (sin_w0, c) = w0.sin_cos();
        let alpha = sin_w0 / (2.0 * q);
        let a = 10f64.powf(band.p[1] / 40.0);
        let s = a.sqrt();
        let t = 2.0 * s * alpha;
        // Derivatives of (A, cos w0, alpha) with respect to (ln f, gain, ln Q).
        let d_a = [0.0, a * std::f64::consts::LN_10 / 40.0, 0.0];
        let d_c = [-sin_w0 * w0, 0.0, 0.0];
        let d_alpha = [c * w0 / (2.0 * q), 0.0, -alpha];
        // Coefficients and their partial derivatives with respect to A, c, alpha.
        let (coeffs, by_a, by_c, by_alpha) = match band.kind {
            FilterKind::Peaking => (
                [1.0 + alpha * a, -2.0 * c, 1.0 - alpha * a, 1.0 + alpha / a, -2.0 * c, 1.0 - alpha / a],
                [alpha, 0.0, -alpha, -alpha / (a * a), 0.0, alpha / (a * a)],
                [0.0, -2.0, 0.0, 0.0, -2.0, 0.0],
                [a, 0.0, -a, 1.0 / a, 0.0, -1.0 / a],
            ),
            FilterKind::LowShelf => (
                [
                    a * ((a + 1.0) - (a - 1.0) * c + t),
                    2.0 * a * ((a - 1.0) - (a + 1.0) * c),
                    a * ((a + 1.0) - (a - 1.0) * c - t),
                    (a + 1.0) + (a - 1.0) * c + t,
                    -2.0 * ((a - 1.0) + (a + 1.0) * c),
                    (a + 1.0) + (a - 1.0) * c - t,
                ],
                [
                    (a + 1.0) - (a - 1.0) * c + t + a * (1.0 - c + alpha / s),
                    2.0 * ((a - 1.0) - (a + 1.0) * c) + 2.0 * a * (1.0 - c),
                    (a + 1.0) - (a - 1.0) * c - t + a * (1.0 - c - alpha / s),
                    1.0 + c + alpha / s,
                    -2.0 * (1.0 + c),
                    1.0 + c - alpha / s,
                ],
                [-a * (a - 1.0), -2.0 * a * (a + 1.0), -a * (a - 1.0), a - 1.0, -2.0 * (a + 1.0), a - 1.0],
                [2.0 * a * s, 0.0, -2.0 * a * s, 2.0 * s, 0.0, -2.0 * s],
            ),
            FilterKind::HighShelf => (
                [
                    a * ((a + 1.0) + (a - 1.0) * c + t),
                    -2.0 * a * ((a - 1.0) + (a + 1.0) * c),
                    a * ((a + 1.0) + (a - 1.0) * c - t),
                    (a + 1.0) - (a - 1.0) * c + t,
                    2.0 * ((a - 1.0) - (a + 1.0) * c),
                    (a + 1.0) - (a - 1.0) * c - t,
                ],
                [
                    (a + 1.0) + (a - 1.0) * c + t + a * (1.0 + c + alpha / s),
                    -2.0 * ((a - 1.0) + (a + 1.0) * c) - 2.0 * a * (1.0 + c),
                    (a + 1.0) + (a - 1.0) * c - t + a * (1.0 + c - alpha / s),
                    1.0 - c + alpha / s,
                    2.0 * (1.0 - c),
                    1.0 - c - alpha / s,
                ],
                [a * (a - 1.0), -2.0 * a * (a + 1.0), a * (a - 1.0), -(a - 1.0), -2.0 * (a + 1.0), -(a - 1.0)],
                [2.0 * a * s, 0.0, -2.0 * a * s, 2.0 * s, 0.0, -2.0 * s],
            ),
        };
        let mut grads = [[0.0; 6]; 3];
        for (j, g) in grads.iter_mut().enumerate() {
            for (i, v) in g.iter_mut().enumerate() {
                *v = by_a[i] * d_a[j] + by_c[i] * d_c[j] + by_alpha[i] * d_alpha[j];
            }
        }
        Self { coeffs, grads }
    }

    /// `|B|²` (or `|A|²`) for coefficients `c` and its partial derivatives
    /// with respect to `c[0..3]`, at `phi = sin²(w/2)`.
    #[inline]
    fn power(c: &[f64], phi: f64) -> (f64, [f64; 3]) {
        let (c0, c1, c2) = (c[0], c[1], c[2]);
        let sum = c0 + c1 + c2;
        let phi2 = 16.0 * phi * phi;
        let p = sum * sum - 4.0 * phi * (c0 * c1 + 4.0 * c0 * c2 + c1 * c2) + phi2 * c0 * c2;
        let d = [
            2.0 * sum - 4.0 * phi * (c1 + 4.0 * c2) + phi2 * c2,
            2.0 * sum - 4.0 * phi * (c0 + c2),
            2.0 * sum - 4.0 * phi * (4.0 * c0 + c1) + phi2 * c0,
        ];
        (p.max(1e-300), d)
    }

    /// Magnitude in dB at `phi = sin²(w/2)`.
    #[inline]
    fn value_db(&self, phi: f64) -> f64 {
        let (num, _) = Self::power(&self.coeffs[..3], phi);
        let (den, _) = Self::power(&self.coeffs[3..], phi);
        DB_PER_NEPER_POWER * (num / den).ln()
    }

    /// Magnitude in dB at `phi` and its gradient with respect to
    /// `[ln f, gain dB, ln Q]`.
    #[inline]
    fn value_and_gradient_db(&self, phi: f64) -> (f64, [f64; 3]) {
        let (num, d_num) = Self::power(&self.coeffs[..3], phi);
        let (den, d_den) = Self::power(&self.coeffs[3..], phi);
        let mut grad = [0.0; 3];
        for (g, dc) in grad.iter_mut().zip(&self.grads) {
            let dn = d_num[0] * dc[0] + d_num[1] * dc[1] + d_num[2] * dc[2];
            let dd = d_den[0] * dc[3] + d_den[1] * dc[4] + d_den[2] * dc[5];
            *g = DB_PER_NEPER_POWER * (dn / num - dd / den);
        }
        (DB_PER_NEPER_POWER * (num / den).ln(), grad)
    }
}

/// The fitted points and the parameter bounds.
struct Problem {
    /// Frequency in Hz of each fitted point.
    freqs: Vec<f64>,
    /// `sin²(π·f/fs)` of each fitted point.
    phi: Vec<f64>,
    /// `ln(f)` of each fitted point.
    log_f: Vec<f64>,
    /// Target in dB of each fitted point (clamped to ±100 dB).
    target: Vec<f64>,
    /// Sample rate in Hz.
    sample_rate_hz: f64,
    /// Bounds on `ln(freq)` of every band: the fitted range intersected with
    /// 20 Hz–min(20 kHz, 0.45·fs).
    band_log_f: (f64, f64),
    /// False when the sample rate is so low that no band frequency fits in
    /// 20 Hz–0.45·fs.
    bands_possible: bool,
    /// The parameter box.
    limits: FitLimits,
    /// `√weight · (I − S)` row-major over the fitted points, where `S` averages over the
    /// octave around each point: the roughness penalty's operator (empty when it is off).
    roughness: Vec<f64>,
    /// The roughness operator applied to the target, so that the penalty of a response
    /// `target + residual` is `|R·residual + R·target|²`.
    roughness_of_target: Vec<f64>,
}

/// `√weight · (I − S)` on points at `log_f` (natural log of Hz), row-major, `S` the plain mean
/// over the points within [`ROUGHNESS_HALF_OCTAVES`] of each point (fewer at the ends of the
/// range, where a one-sided average is all a curve has). Empty for a zero weight.
fn roughness_operator(log_f: &[f64], weight: f64) -> Vec<f64> {
    let n = log_f.len();
    if !(weight.is_finite() && weight > 0.0) {
        return Vec::new();
    }
    let scale = weight.sqrt();
    let half = ROUGHNESS_HALF_OCTAVES * std::f64::consts::LN_2 + 1e-9;
    let mut r = vec![0.0; n * n];
    for i in 0..n {
        let near: Vec<usize> = (0..n).filter(|&j| (log_f[j] - log_f[i]).abs() <= half).collect();
        let share = scale / near.len() as f64;
        for j in near {
            r[i * n + j] -= share;
        }
        r[i * n + i] += scale;
    }
    r
}

/// `r·v` for a row-major square matrix `r` of `v.len()` rows.
fn mat_vec(r: &[f64], v: &[f64]) -> Vec<f64> {
    let n = v.len();
    (0..n).map(|i| dot(&r[i * n..(i + 1) * n], v)).collect()
}

impl Problem {
    fn new(freqs_hz: &[f64], target_db: &[f64], fit_max_hz: f64, sr: f64, limits: FitLimits) -> Option<Self> {
        if !(sr.is_finite() && sr > 0.0) {
            return None;
        }
        let nyquist = 0.5 * sr;
        let lowest = MIN_FREQ_HZ * (1.0 - 1e-9);
        let mut points: Vec<(f64, f64)> = freqs_hz
            .iter()
            .zip(target_db)
            .filter(|(f, t)| f.is_finite() && t.is_finite() && **f >= lowest && **f <= fit_max_hz && **f <= nyquist)
            .map(|(&f, &t)| (f, clamp(t, -TARGET_LIMIT_DB, TARGET_LIMIT_DB)))
            .collect();
        if points.is_empty() {
            return None;
        }
        // Stable sort: the residual analysis walks the points in frequency order.
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let f_min = points[0].0;
        let f_max = points[points.len() - 1].0;
        let band_hi = MAX_FREQ_HZ.min(MAX_FREQ_RATIO * sr);
        // Band frequencies stay inside the fitted range, so that no band acts
        // only where nothing constrains it.
        let lo = f_min.max(MIN_FREQ_HZ).min(band_hi).ln();
        let hi = f_max.min(band_hi).ln().max(lo);
        let log_f: Vec<f64> = points.iter().map(|(f, _)| f.ln()).collect();
        let target: Vec<f64> = points.iter().map(|(_, t)| *t).collect();
        let roughness = roughness_operator(&log_f, limits.roughness_weight);
        let roughness_of_target = if roughness.is_empty() { Vec::new() } else { mat_vec(&roughness, &target) };
        Some(Self {
            freqs: points.iter().map(|(f, _)| *f).collect(),
            phi: points
                .iter()
                .map(|(f, _)| {
                    let s = (std::f64::consts::PI * f / sr).sin();
                    s * s
                })
                .collect(),
            log_f,
            target,
            sample_rate_hz: sr,
            band_log_f: (lo, hi),
            bands_possible: band_hi > MIN_FREQ_HZ,
            limits,
            roughness,
            roughness_of_target,
        })
    }

    fn len(&self) -> usize {
        self.target.len()
    }

    fn zero_response(&self) -> Vec<f64> {
        vec![0.0; self.len()]
    }

    /// Lower and upper bounds of `[ln f, gain, ln q]` for a band of `kind`.
    fn bounds(&self, kind: FilterKind) -> ([f64; 3], [f64; 3]) {
        let (f_lo, f_hi) = self.log_f_bounds(kind);
        let (q_lo, q_hi) = q_bounds(&self.limits, kind);
        let g = self.limits.max_gain_db;
        ([f_lo, -g, q_lo.ln()], [f_hi, g, q_hi.ln()])
    }

    /// Bounds on `ln(freq)` of a band of `kind`: the fitted range, narrowed to the bells' centre
    /// range or the shelf's corner range (a range outside the fitted one collapses onto its
    /// nearer end).
    fn log_f_bounds(&self, kind: FilterKind) -> (f64, f64) {
        let (lo, hi) = self.band_log_f;
        let range = match kind {
            FilterKind::Peaking => self.limits.bell_hz,
            FilterKind::LowShelf => self.limits.low_shelf_hz,
            FilterKind::HighShelf => self.limits.high_shelf_hz,
        };
        let r_lo = clamp(range.0.ln(), lo, hi);
        let r_hi = clamp(range.1.ln(), r_lo, hi);
        (r_lo, r_hi)
    }

    /// Whether bells `a` and `b` boost and cut closer than [`FitLimits::opposing_bells_octaves`].
    /// Shelves are not held to it: a shelf acts on everything past its corner, and a bell
    /// against it (a bump kept inside a broad bass cut, a low-mid dip above a sub lift) is a
    /// shape engineers set; the roughness penalty keeps it gentle.
    fn oppose(&self, a: &Band, b: &Band) -> bool {
        let apart = self.limits.opposing_bells_octaves * std::f64::consts::LN_2;
        let bells = a.kind == FilterKind::Peaking && b.kind == FilterKind::Peaking;
        apart > 0.0 && bells && a.p[1] * b.p[1] < 0.0 && (a.p[0] - b.p[0]).abs() < apart
    }

    /// Moves the bells of `free` apart (in ln f, each kept in its bounds) until none boosts
    /// against a cut of another bell of `fixed` or `free` closer than
    /// [`FitLimits::opposing_bells_octaves`]: two free bells part symmetrically about their
    /// midpoint, a free bell steps away from a fixed one. The refinement applies it after every
    /// step, so the fit moves within the constraint rather than into it. A few rounds; a crowd
    /// that cannot be parted this way is left to [`part_opposing_bells`].
    fn separate(&self, fixed: &[Band], free: &mut [Band]) {
        let apart = self.limits.opposing_bells_octaves * std::f64::consts::LN_2;
        if apart <= 0.0 {
            return;
        }
        let away = |from: f64, x: f64| if x >= from { from + apart } else { from - apart };
        for _ in 0..4 {
            let mut moved = false;
            for i in 0..free.len() {
                for f in fixed {
                    if self.oppose(&free[i], f) {
                        free[i].p[0] = away(f.p[0], free[i].p[0]);
                        self.project(&mut free[i]);
                        moved = true;
                    }
                }
                for j in i + 1..free.len() {
                    if !self.oppose(&free[i], &free[j]) {
                        continue;
                    }
                    let mid = 0.5 * (free[i].p[0] + free[j].p[0]);
                    let (lo, hi) = if free[i].p[0] <= free[j].p[0] { (i, j) } else { (j, i) };
                    free[lo].p[0] = mid - 0.5 * apart;
                    free[hi].p[0] = mid + 0.5 * apart;
                    self.project(&mut free[lo]);
                    self.project(&mut free[hi]);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Clamps a band's parameters into its bounds.
    fn project(&self, band: &mut Band) {
        let (lo, hi) = self.bounds(band.kind);
        for j in 0..3 {
            band.p[j] = clamp(band.p[j], lo[j], hi[j]);
        }
    }

    /// Response in dB of one band at the fitted points, written into `out`.
    fn band_response_into(&self, band: &Band, out: &mut [f64]) {
        let eval = BandEval::new(band, self.sample_rate_hz);
        for (o, &phi) in out.iter_mut().zip(&self.phi) {
            *o = eval.value_db(phi);
        }
    }

    /// Response in dB of one band at the fitted points (`out`) and its
    /// derivatives with respect to `[ln f, gain, ln Q]` (`jac`, three
    /// consecutive columns of `len()` values each).
    fn band_jacobian_into(&self, band: &Band, out: &mut [f64], jac: &mut [f64]) {
        let n = self.len();
        let eval = BandEval::new(band, self.sample_rate_hz);
        let (d_freq, rest) = jac.split_at_mut(n);
        let (d_gain, d_q) = rest.split_at_mut(n);
        for (i, &phi) in self.phi.iter().enumerate() {
            let (value, grad) = eval.value_and_gradient_db(phi);
            out[i] = value;
            d_freq[i] = grad[0];
            d_gain[i] = grad[1];
            d_q[i] = grad[2];
        }
    }

    fn band_response(&self, band: &Band) -> Vec<f64> {
        let mut out = self.zero_response();
        self.band_response_into(band, &mut out);
        out
    }

    /// Summed response in dB of `bands` at the fitted points.
    fn model(&self, bands: &[Band]) -> Vec<f64> {
        let mut sum = self.zero_response();
        let mut tmp = self.zero_response();
        for band in bands {
            self.band_response_into(band, &mut tmp);
            for (s, t) in sum.iter_mut().zip(&tmp) {
                *s += t;
            }
        }
        sum
    }

    /// Weight (per dB²) of the small penalty on band gains that keeps bands
    /// with almost no influence on the fitted points from drifting to large
    /// gains (18 dB costs 0.02 dB² per 61 points, i.e. nothing measurable).
    fn gain_penalty(&self) -> f64 {
        self.limits.gain_penalty_per_point * self.len() as f64
    }

    /// The roughness penalty's residuals for a fit residual (response − target): the
    /// response's departure from its octave average, scaled by √weight (empty when off).
    fn roughness_residual(&self, residual: &[f64]) -> Vec<f64> {
        if self.roughness.is_empty() {
            return Vec::new();
        }
        let mut r = mat_vec(&self.roughness, residual);
        r.iter_mut().zip(&self.roughness_of_target).for_each(|(v, t)| *v += t);
        r
    }

    /// Sum of squares of [`Self::roughness_residual`].
    fn roughness_cost(&self, residual: &[f64]) -> f64 {
        self.roughness_residual(residual).iter().map(|v| v * v).sum()
    }

    fn rms_from_cost(&self, cost: f64) -> f64 {
        (cost / self.len().max(1) as f64).sqrt()
    }

    /// (RMS, max) of `response - target` in dB.
    fn errors(&self, response: &[f64]) -> (f64, f64) {
        let (sum_sq, max) = response.iter().zip(&self.target).fold((0.0, 0.0f64), |(s, m), (r, t)| {
            let e = r - t;
            (s + e * e, m.max(e.abs()))
        });
        (self.rms_from_cost(sum_sq), max)
    }

    /// Shelves at the frequencies (1/3-octave search, Q = 0.707) whose
    /// least-squares gains best explain the target.
    fn initial_shelves(&self) -> Vec<Band> {
        const PROBE_DB: f64 = 6.0;
        let step = SHELF_SEARCH_STEP_OCT * std::f64::consts::LN_2;
        let corners = |kind| -> Vec<f64> {
            let (lo, hi) = self.log_f_bounds(kind);
            let count = ((hi - lo) / step).floor() as usize + 1;
            (0..count).map(|k| (lo + step * k as f64).exp()).collect()
        };
        let (low_fcs, high_fcs) = (corners(FilterKind::LowShelf), corners(FilterKind::HighShelf));
        let shelf_q = clamp(SHELF_Q, self.limits.shelf_q.0, self.limits.shelf_q.1);
        let shape = |kind, fcs: &[f64]| -> Vec<Vec<f64>> {
            fcs.iter()
                .map(|&fc| {
                    let mut r = self.band_response(&Band::new(kind, fc, PROBE_DB, shelf_q));
                    r.iter_mut().for_each(|v| *v /= PROBE_DB);
                    r
                })
                .collect()
        };
        let low = shape(FilterKind::LowShelf, &low_fcs);
        let high = shape(FilterKind::HighShelf, &high_fcs);
        let max_gain = self.limits.max_gain_db;
        let t = &self.target;
        let tt = dot(t, t);
        let lt: Vec<f64> = low.iter().map(|u| dot(u, t)).collect();
        let ht: Vec<f64> = high.iter().map(|u| dot(u, t)).collect();
        let ll: Vec<f64> = low.iter().map(|u| dot(u, u)).collect();
        let hh: Vec<f64> = high.iter().map(|u| dot(u, u)).collect();

        let ridge_weight = 1e-3 * self.len() as f64;
        let mut best = (f64::INFINITY, 0, 0, 0.0, 0.0);
        for i in 0..low_fcs.len() {
            for j in 0..high_fcs.len() {
                let lh = dot(&low[i], &high[j]);
                // 2x2 normal equations with a small ridge: a shelf with no
                // influence on the fitted points gets no gain.
                let ridge = ridge_weight;
                let (a, b, d) = (ll[i] + ridge, lh, hh[j] + ridge);
                let det = a * d - b * b;
                if !(det.is_finite() && det > 0.0) {
                    continue;
                }
                let gl = clamp((d * lt[i] - b * ht[j]) / det, -max_gain, max_gain);
                let gh = clamp((a * ht[j] - b * lt[i]) / det, -max_gain, max_gain);
                let cost =
                    tt - 2.0 * (gl * lt[i] + gh * ht[j]) + gl * gl * ll[i] + 2.0 * gl * gh * lh + gh * gh * hh[j];
                if cost < best.0 {
                    best = (cost, i, j, gl, gh);
                }
            }
        }
        let (_, i, j, gl, gh) = best;
        vec![
            Band::new(FilterKind::LowShelf, low_fcs[i], gl, shelf_q),
            Band::new(FilterKind::HighShelf, high_fcs[j], gh, shelf_q),
        ]
    }

    /// Initial peaking bands at the largest local extrema of `residual`
    /// (target − model, dB), best first.
    fn peak_candidates(&self, residual: &[f64]) -> Vec<Band> {
        let n = residual.len();
        let mag = |i: usize| residual[i].abs();
        let mut extrema: Vec<usize> = (0..n)
            .filter(|&i| {
                (i == 0 || mag(i) >= mag(i - 1)) && (i + 1 == n || mag(i) >= mag(i + 1)) && mag(i) >= MIN_BAND_GAIN_DB
            })
            .collect();
        extrema.sort_by(|&a, &b| mag(b).total_cmp(&mag(a)).then(a.cmp(&b)));
        extrema.truncate(PEAK_CANDIDATES);
        extrema
            .into_iter()
            .map(|i| {
                let mut band = self.peak_at(residual, i);
                self.project(&mut band);
                band
            })
            .collect()
    }

    /// A peaking band matching the residual bump around point `i`.
    fn peak_at(&self, residual: &[f64], i: usize) -> Band {
        let n = residual.len();
        let lf = &self.log_f;
        let e = residual[i];
        // Sub-grid centre by parabolic interpolation of the residual.
        let mut centre = lf[i];
        if i > 0 && i + 1 < n {
            let (l, r) = (residual[i - 1], residual[i + 1]);
            let curvature = l - 2.0 * e + r;
            if curvature.abs() > 1e-12 {
                let offset = clamp(0.5 * (l - r) / curvature, -0.5, 0.5);
                centre += offset * 0.5 * (lf[i + 1] - lf[i - 1]);
            }
        }
        // Half-gain (in dB) crossings on either side, interpolated in ln f.
        let half = 0.5 * e.abs();
        let inside = |k: usize| residual[k].signum() == e.signum() && residual[k].abs() > half;
        let crossing = |k_in: usize, k_out: usize| {
            // Magnitudes along the sign of the bump (negative once past a sign change).
            let (a, b) = (residual[k_in] * e.signum(), residual[k_out] * e.signum());
            let t = if (a - b).abs() > 1e-12 { clamp((a - half) / (a - b), 0.0, 1.0) } else { 0.5 };
            lf[k_in] + t * (lf[k_out] - lf[k_in])
        };
        let mut left = None;
        let mut k = i;
        while k > 0 {
            if !inside(k - 1) {
                left = Some(crossing(k, k - 1));
                break;
            }
            k -= 1;
        }
        let mut right = None;
        let mut k = i;
        while k + 1 < n {
            if !inside(k + 1) {
                right = Some(crossing(k, k + 1));
                break;
            }
            k += 1;
        }
        let half_width = |edge: Option<f64>| edge.map(|x| (x - lf[i]).abs());
        let width_ln = match (half_width(left), half_width(right)) {
            (Some(l), Some(r)) => l + r,
            (Some(w), None) | (None, Some(w)) => 2.0 * w,
            (None, None) => 2.0 * std::f64::consts::LN_2,
        };
        // Cookbook bell: the half-gain (dB) bandwidth N octaves gives
        // Q = 2^(N/2) / (2^N - 1).
        let octaves = (width_ln / std::f64::consts::LN_2).max(1e-3);
        let q = 2f64.powf(octaves / 2.0) / (2f64.powf(octaves) - 1.0);
        Band { kind: FilterKind::Peaking, p: [centre, e, clamp(q, MIN_Q, MAX_Q).ln()] }
    }

    /// Final EQ: public bands in display order, errors and preamp.
    fn finish(&self, bands: &[Band]) -> ParametricEq {
        let mut public: Vec<ParametricBand> = bands.iter().map(|b| b.to_public(&self.limits)).collect();
        let rank = |k: FilterKind| match k {
            FilterKind::LowShelf => 0,
            FilterKind::Peaking => 1,
            FilterKind::HighShelf => 2,
        };
        public.sort_by(|a, b| rank(a.kind).cmp(&rank(b.kind)).then(a.freq_hz.total_cmp(&b.freq_hz)));
        // Errors of exactly what is returned (public bands, biquad evaluation).
        let (rms, max) = self.errors(&response_db(&public, &self.freqs, self.sample_rate_hz));
        ParametricEq {
            preamp_db: -self.max_response_db(&public).max(0.0),
            bands: public,
            fit_rms_error_db: rms,
            fit_max_error_db: max,
        }
    }

    /// Scales all gains down together until the summed response stays within ±`max_gain_db`
    /// over 20 Hz–20 kHz (overlapping bands may add up past what each is allowed).
    fn bound_total(&self, bands: &mut [Band]) {
        let bound = self.limits.max_gain_db;
        for _ in 0..8 {
            let public: Vec<ParametricBand> = bands.iter().map(|b| b.to_public(&self.limits)).collect();
            let up = self.max_response_db(&public);
            let negated: Vec<ParametricBand> =
                public.iter().map(|b| ParametricBand { gain_db: -b.gain_db, ..b.clone() }).collect();
            let down = self.max_response_db(&negated);
            let peak = up.max(down);
            if !(peak.is_finite() && peak > bound) {
                return;
            }
            let scale = 0.999 * bound / peak;
            bands.iter_mut().for_each(|b| b.p[1] *= scale);
        }
    }

    /// Maximum of the summed response (dB) over 20 Hz–20 kHz (and below
    /// Nyquist): a 1/48-octave grid plus every band's own frequency.
    fn max_response_db(&self, bands: &[ParametricBand]) -> f64 {
        if bands.is_empty() {
            return 0.0;
        }
        let sr = self.sample_rate_hz;
        let top = MAX_FREQ_HZ.min(0.5 * sr);
        if top <= MIN_FREQ_HZ {
            return 0.0;
        }
        let step = PREAMP_GRID_STEP_OCT * std::f64::consts::LN_2;
        let count = ((top / MIN_FREQ_HZ).ln() / step).ceil() as usize;
        let mut freqs: Vec<f64> = (0..=count).map(|k| (MIN_FREQ_HZ.ln() + step * k as f64).exp().min(top)).collect();
        freqs.extend(bands.iter().map(|b| b.freq_hz).filter(|f| (MIN_FREQ_HZ..=top).contains(f)));
        response_db(bands, &freqs, sr).into_iter().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Bounded Levenberg-Marquardt refinement of `bands[first_free..]` (the
/// earlier bands are held fixed). Returns the final cost (sum of squared
/// errors in dB²). Parameters stay within their bounds: variables sitting on
/// a bound with the gradient pushing outwards are frozen for that step, the
/// others are projected back into the box.
fn refine(problem: &Problem, bands: &mut [Band], first_free: usize, max_iterations: usize) -> f64 {
    let n = problem.len();
    let first_free = first_free.min(bands.len());
    let m = 3 * (bands.len() - first_free);
    let mu = problem.gain_penalty();
    let penalty = |bands: &[Band]| -> f64 { bands.iter().map(|b| mu * b.p[1] * b.p[1]).sum() };
    let fixed_penalty = penalty(&bands[..first_free]);

    let mut fixed = problem.model(&bands[..first_free]);
    fixed.iter_mut().zip(&problem.target).for_each(|(f, t)| *f -= t);
    // `fixed` now holds (fixed model − target); residual = fixed + free responses.
    let mut responses: Vec<Vec<f64>> = bands[first_free..].iter().map(|b| problem.band_response(b)).collect();
    let residual_of = |responses: &[Vec<f64>]| -> Vec<f64> {
        let mut r = fixed.clone();
        for resp in responses {
            r.iter_mut().zip(resp).for_each(|(ri, v)| *ri += v);
        }
        r
    };
    let mut residual = residual_of(&responses);
    let mut cost: f64 = residual.iter().map(|r| r * r).sum::<f64>()
        + fixed_penalty
        + penalty(&bands[first_free..])
        + problem.roughness_cost(&residual);
    if m == 0 {
        return cost;
    }
    let rough = !problem.roughness.is_empty();
    let mut rough_jac = if rough { vec![0.0; n * m] } else { Vec::new() };

    let mut jac = vec![0.0; n * m];
    let mut normal = vec![0.0; m * m];
    let mut grad = vec![0.0; m];
    // Levenberg-Marquardt damping (relative to the diagonal) and its growth
    // factor, updated with Nielsen's rule.
    let mut lambda = 1e-3;
    let mut growth = 2.0;

    for _ in 0..max_iterations {
        // Analytic Jacobian of the residual (also refreshes the responses).
        for (k, band) in bands[first_free..].iter().enumerate() {
            problem.band_jacobian_into(band, &mut responses[k], &mut jac[3 * k * n..3 * (k + 1) * n]);
        }
        // Normal equations JᵀJ and gradient Jᵀr.
        for a in 0..m {
            let ca = &jac[a * n..(a + 1) * n];
            grad[a] = dot(ca, &residual);
            for b in a..m {
                let cb = &jac[b * n..(b + 1) * n];
                let v = dot(ca, cb);
                normal[a * m + b] = v;
                normal[b * m + a] = v;
            }
        }
        // Roughness penalty |R·(target + residual)|²: its Jacobian is R·J.
        if rough {
            let rr = problem.roughness_residual(&residual);
            for a in 0..m {
                let col = mat_vec(&problem.roughness, &jac[a * n..(a + 1) * n]);
                rough_jac[a * n..(a + 1) * n].copy_from_slice(&col);
            }
            for a in 0..m {
                let ca = &rough_jac[a * n..(a + 1) * n];
                grad[a] += dot(ca, &rr);
                for b in a..m {
                    let v = dot(ca, &rough_jac[b * n..(b + 1) * n]);
                    normal[a * m + b] += v;
                    if b != a {
                        normal[b * m + a] += v;
                    }
                }
            }
        }
        // Gain penalty mu·g² (pseudo-residual sqrt(mu)·g).
        for (k, band) in bands[first_free..].iter().enumerate() {
            grad[3 * k + 1] += mu * band.p[1];
            normal[(3 * k + 1) * m + 3 * k + 1] += mu;
        }
        // Active bounds: frozen for this iteration.
        let mut active = vec![false; m];
        for (k, band) in bands[first_free..].iter().enumerate() {
            let (lo, hi) = problem.bounds(band.kind);
            for j in 0..3 {
                let g = grad[3 * k + j];
                let tol = 1e-12 * (1.0 + lo[j].abs().max(hi[j].abs()));
                active[3 * k + j] = (band.p[j] <= lo[j] + tol && g > 0.0) || (band.p[j] >= hi[j] - tol && g < 0.0);
            }
        }
        let max_diag = (0..m).map(|a| normal[a * m + a]).fold(0.0, f64::max);
        let floor = 1e-9 * (1.0 + max_diag);

        let mut improved = None;
        while lambda < 1e10 {
            let mut system = normal.clone();
            let mut rhs: Vec<f64> = grad.iter().map(|g| -g).collect();
            for a in 0..m {
                if active[a] {
                    for b in 0..m {
                        system[a * m + b] = 0.0;
                        system[b * m + a] = 0.0;
                    }
                    system[a * m + a] = 1.0;
                    rhs[a] = 0.0;
                } else {
                    system[a * m + a] += lambda * (normal[a * m + a] + floor);
                }
            }
            let Some(step) = solve_spd(&mut system, &rhs, m) else {
                lambda *= growth;
                growth *= 2.0;
                continue;
            };
            let mut trial: Vec<Band> = bands[first_free..].to_vec();
            for (k, band) in trial.iter_mut().enumerate() {
                for j in 0..3 {
                    band.p[j] += step[3 * k + j];
                }
                problem.project(band);
            }
            problem.separate(&bands[..first_free], &mut trial);
            let mut taken = vec![0.0; m];
            for (k, (t, b)) in trial.iter().zip(&bands[first_free..]).enumerate() {
                for j in 0..3 {
                    taken[3 * k + j] = t.p[j] - b.p[j];
                }
            }
            let trial_responses: Vec<Vec<f64>> = trial.iter().map(|b| problem.band_response(b)).collect();
            let trial_residual = residual_of(&trial_responses);
            let trial_cost: f64 = trial_residual.iter().map(|r| r * r).sum::<f64>()
                + fixed_penalty
                + penalty(&trial)
                + problem.roughness_cost(&trial_residual);
            if trial_cost.is_finite() && trial_cost < cost {
                // Gain ratio: actual reduction over the reduction predicted by
                // the linearised model |r + J·δ|².
                let mut predicted = 0.0;
                for a in 0..m {
                    let row = dot(&normal[a * m..(a + 1) * m], &taken);
                    predicted -= taken[a] * (2.0 * grad[a] + row);
                }
                let rho = if predicted > 0.0 { (cost - trial_cost) / predicted } else { 1.0 };
                lambda = (lambda * (1.0 - (2.0 * rho - 1.0).powi(3)).max(1.0 / 3.0)).max(1e-12);
                growth = 2.0;
                bands[first_free..].copy_from_slice(&trial);
                responses = trial_responses;
                residual = trial_residual;
                improved = Some(cost - trial_cost);
                cost = trial_cost;
                break;
            }
            lambda *= growth;
            growth *= 2.0;
        }
        match improved {
            Some(delta) if delta > 1e-4 * (1.0 + cost) => {}
            _ => break,
        }
    }
    cost
}

/// Dot product with four independent accumulators (the plain fold is bound
/// by the latency of one long chain of additions). Deterministic.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [0.0; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (a4.remainder(), b4.remainder());
    for (x, y) in a4.zip(b4) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Solves `a·x = b` for a symmetric positive definite `m × m` matrix `a`
/// (row-major, overwritten by its Cholesky factor). `None` if `a` is not
/// numerically positive definite or the solution is not finite.
fn solve_spd(a: &mut [f64], b: &[f64], m: usize) -> Option<Vec<f64>> {
    for j in 0..m {
        let row_j = &a[j * m..j * m + j];
        let d = a[j * m + j] - dot(row_j, row_j);
        if !(d.is_finite() && d > 0.0) {
            return None;
        }
        let d = d.sqrt();
        a[j * m + j] = d;
        for i in (j + 1)..m {
            let s = a[i * m + j] - dot(&a[i * m..i * m + j], &a[j * m..j * m + j]);
            a[i * m + j] = s / d;
        }
    }
    let mut y = vec![0.0; m];
    for i in 0..m {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * m + k] * y[k];
        }
        y[i] = s / a[i * m + i];
    }
    let mut x = vec![0.0; m];
    for i in (0..m).rev() {
        let mut s = y[i];
        for k in (i + 1)..m {
            s -= a[k * m + i] * x[k];
        }
        x[i] = s / a[i * m + i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roughness_operator_sees_no_detail_in_a_level_or_a_straight_tilt_and_all_of_a_notch() {
        let log_f: Vec<f64> = grid().iter().map(|f| f.ln()).collect();
        let r = roughness_operator(&log_f, 1.0);
        let n = log_f.len();
        // A level is its own octave average everywhere, a straight tilt (dB per octave) wherever
        // the average is two-sided (three points each side on this 1/6-octave grid).
        let level = mat_vec(&r, &vec![5.0; n]);
        assert!(level.iter().all(|v| v.abs() < 1e-9));
        let tilt: Vec<f64> = log_f.iter().map(|l| 3.0 * l / std::f64::consts::LN_2).collect();
        let read = mat_vec(&r, &tilt);
        assert!(read[3..n - 3].iter().all(|v| v.abs() < 1e-9));
        // A one-point notch of -6 dB reads -6 · (1 - 1/7) at its own point (7 points in its octave).
        let mut notch = vec![0.0; n];
        notch[30] = -6.0;
        assert!((mat_vec(&r, &notch)[30] + 6.0 * 6.0 / 7.0).abs() < 1e-9);
        // A weight scales the operator by its square root; 0 turns it off.
        let doubled = roughness_operator(&log_f, 4.0);
        assert!(doubled.iter().zip(&r).all(|(a, b)| (a - 2.0 * b).abs() < 1e-12));
        assert!(roughness_operator(&log_f, 0.0).is_empty());
    }

    const SR: f64 = 48_000.0;

    /// 61 log-spaced points from 20 Hz to 20 kHz (about 1/6 octave apart).
    fn grid() -> Vec<f64> {
        (0..61).map(|k| 20.0 * 1000f64.powf(k as f64 / 60.0)).collect()
    }

    fn band(kind: FilterKind, freq_hz: f64, gain_db: f64, q: f64) -> ParametricBand {
        ParametricBand { kind, freq_hz, gain_db, q }
    }

    fn assert_sane(eq: &ParametricEq) {
        assert!(eq.preamp_db.is_finite() && eq.preamp_db <= 0.0);
        assert!(eq.fit_rms_error_db.is_finite() && eq.fit_rms_error_db >= 0.0);
        assert!(eq.fit_max_error_db.is_finite() && eq.fit_max_error_db >= 0.0);
        assert!(eq.bands.len() <= MAX_PEAKS + 2);
        for b in &eq.bands {
            assert!(b.freq_hz.is_finite() && (MIN_FREQ_HZ..=MAX_FREQ_HZ).contains(&b.freq_hz));
            assert!(b.gain_db.is_finite() && b.gain_db.abs() <= MAX_BAND_GAIN_DB);
            assert!(b.gain_db.abs() >= MIN_BAND_GAIN_DB);
            assert!(b.q.is_finite() && (MIN_Q..=MAX_Q).contains(&b.q));
        }
    }

    /// Deterministic pseudo-random values in [-1, 1) (64-bit LCG).
    fn pseudo_random(seed: u64, count: usize) -> Vec<f64> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// Moving average over 1/3 octave (the point and its two 1/6-octave
    /// neighbours).
    fn smooth_third_octave(raw: &[f64]) -> Vec<f64> {
        (0..raw.len())
            .map(|i| {
                let lo = i.saturating_sub(1);
                let hi = (i + 1).min(raw.len() - 1);
                raw[lo..=hi].iter().sum::<f64>() / (hi - lo + 1) as f64
            })
            .collect()
    }

    /// A random-ish tonal-balance curve: a pseudo-random walk (steps up to
    /// ±1.5 dB per 1/6 octave) smoothed over 1/3 octave, mean removed and
    /// scaled down if needed to stay within ±6 dB. Like real mix/reference
    /// differences it mixes broad tilts with local bumps.
    fn random_walk_curve(seed: u64) -> Vec<f64> {
        let mut level = 0.0;
        let walk: Vec<f64> = pseudo_random(seed, 61)
            .iter()
            .map(|step| {
                level += 1.5 * step;
                level
            })
            .collect();
        let smooth = smooth_third_octave(&walk);
        let mean = smooth.iter().sum::<f64>() / smooth.len() as f64;
        let peak = smooth.iter().fold(0.0f64, |m, v| m.max((v - mean).abs()));
        let scale = (6.0 / peak.max(1e-9)).min(1.0);
        smooth.iter().map(|v| (v - mean) * scale).collect()
    }

    /// Independent pseudo-random values within ±6 dB at every 1/6-octave
    /// point, smoothed over 1/3 octave: about 20 independent bumps, more
    /// than a 12-band EQ can follow.
    fn rough_random_curve(seed: u64) -> Vec<f64> {
        let raw: Vec<f64> = pseudo_random(seed, 61).iter().map(|v| 6.0 * v).collect();
        smooth_third_octave(&raw)
    }

    /// RMS of `response_db(bands) - target` over the grid.
    fn rms_error(eq: &ParametricEq, freqs: &[f64], target: &[f64]) -> f64 {
        let response = response_db(&eq.bands, freqs, SR);
        let sum: f64 = response.iter().zip(target).map(|(r, t)| (r - t).powi(2)).sum();
        (sum / freqs.len() as f64).sqrt()
    }

    #[test]
    fn analytic_band_model_matches_the_biquad_and_its_finite_differences() {
        let freqs = grid();
        let problem = match Problem::new(&freqs, &vec![1.0; freqs.len()], 20_000.0, SR, FitLimits::detailed(MAX_PEAKS))
        {
            Some(p) => p,
            None => panic!("problem"),
        };
        let n = problem.len();
        for kind in [FilterKind::LowShelf, FilterKind::HighShelf, FilterKind::Peaking] {
            for &(f, g, q) in &[(35.0, 6.0, 0.5), (1_000.0, -12.0, 2.0), (15_000.0, 3.0, 0.9)] {
                let band = Band::new(kind, f, g, q);
                let mut values = vec![0.0; n];
                let mut jac = vec![0.0; 3 * n];
                problem.band_jacobian_into(&band, &mut values, &mut jac);
                let coeffs = BiquadCoeffs::design(kind, f, g, q, SR);
                for (i, &fi) in freqs.iter().enumerate() {
                    assert!((values[i] - coeffs.magnitude_db(fi, SR)).abs() < 1e-9);
                }
                for j in 0..3 {
                    let h = 1e-4;
                    let (mut up, mut down) = (band, band);
                    up.p[j] += h;
                    down.p[j] -= h;
                    let (vu, vd) = (problem.band_response(&up), problem.band_response(&down));
                    for i in 0..n {
                        let numeric = (vu[i] - vd[i]) / (2.0 * h);
                        let analytic = jac[j * n + i];
                        assert!(
                            (numeric - analytic).abs() < 1e-5 * (1.0 + analytic.abs()),
                            "{kind:?} param {j} at {} Hz: {numeric} vs {analytic}",
                            freqs[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn recovers_a_curve_made_from_known_bands() {
        let freqs = grid();
        let truth = [
            band(FilterKind::LowShelf, 100.0, 3.0, 0.707),
            band(FilterKind::Peaking, 1_000.0, -4.0, 1.4),
            band(FilterKind::HighShelf, 8_000.0, 2.0, 0.707),
        ];
        let target = response_db(&truth, &freqs, SR);
        let eq = fit(&freqs, &target, 20_000.0, 10, SR);
        println!("known bands: {eq:?}");
        assert_sane(&eq);
        assert!(eq.fit_rms_error_db < 0.15, "rms {}", eq.fit_rms_error_db);
        // The bell is found where it was put.
        assert!(eq.bands.iter().any(|b| b.kind == FilterKind::Peaking
            && (b.freq_hz / 1_000.0).log2().abs() < 1.0 / 6.0
            && (b.gain_db + 4.0).abs() < 0.5));
        // The curve boosts +3 dB in the bass, so the preamp takes it back.
        assert!(eq.preamp_db <= -2.9);
    }

    #[test]
    fn flat_curve_gives_no_bands() {
        let freqs = grid();
        for &level in &[0.0, 0.05, -0.05] {
            let eq = fit(&freqs, &vec![level; freqs.len()], 20_000.0, 10, SR);
            assert_sane(&eq);
            assert!(eq.bands.is_empty(), "{eq:?}");
            assert_eq!(eq.preamp_db, 0.0);
            assert!((eq.fit_rms_error_db - level.abs()).abs() < 1e-12);
        }
    }

    #[test]
    fn all_zero_curve_gives_an_empty_eq() {
        let freqs = grid();
        let eq = fit(&freqs, &vec![0.0; freqs.len()], 20_000.0, 10, SR);
        assert_eq!(
            eq,
            ParametricEq { preamp_db: 0.0, bands: Vec::new(), fit_rms_error_db: 0.0, fit_max_error_db: 0.0 }
        );
    }

    #[test]
    fn smoothed_random_curves_are_fitted_within_half_a_db() {
        let freqs = grid();
        for seed in 1..=20 {
            let target = random_walk_curve(seed);
            assert!(target.iter().all(|v| v.abs() <= 6.0 + 1e-9));
            let eq = fit(&freqs, &target, 20_000.0, 10, SR);
            println!(
                "random walk seed {seed}: rms {:.3} dB, max {:.3} dB, {} bands",
                eq.fit_rms_error_db,
                eq.fit_max_error_db,
                eq.bands.len()
            );
            assert_sane(&eq);
            assert!(eq.fit_rms_error_db < 0.5, "seed {seed}: {eq:?}");
            // The reported error is that of the returned bands.
            assert!((rms_error(&eq, &freqs, &target) - eq.fit_rms_error_db).abs() < 1e-9);
        }
    }

    #[test]
    fn rough_random_curves_are_fitted_as_well_as_twelve_bands_allow() {
        // ~20 independent 1/3-octave bumps cannot all be followed by 12
        // bands; the fit still removes most of the error (signal RMS ~2 dB).
        let freqs = grid();
        let mut total = 0.0;
        for seed in 1..=20 {
            let target = rough_random_curve(seed);
            let eq = fit(&freqs, &target, 20_000.0, 10, SR);
            println!(
                "rough seed {seed}: rms {:.3} dB, max {:.3} dB, {} bands",
                eq.fit_rms_error_db,
                eq.fit_max_error_db,
                eq.bands.len()
            );
            assert_sane(&eq);
            assert!(eq.fit_rms_error_db < 0.8, "seed {seed}: {eq:?}");
            assert!((rms_error(&eq, &freqs, &target) - eq.fit_rms_error_db).abs() < 1e-9);
            total += eq.fit_rms_error_db;
        }
        assert!(total / 20.0 < 0.6, "mean rms {}", total / 20.0);
    }

    #[test]
    fn preamp_prevents_any_boost() {
        let freqs = grid();
        let target: Vec<f64> = freqs.iter().map(|f| if (2_000.0..4_000.0).contains(f) { 6.0 } else { 0.0 }).collect();
        let eq = fit(&freqs, &target, 20_000.0, 10, SR);
        assert_sane(&eq);
        let dense: Vec<f64> = (0..=960).map(|k| 20.0 * 1000f64.powf(k as f64 / 960.0)).collect();
        let peak = response_db(&eq.bands, &dense, SR).into_iter().fold(f64::NEG_INFINITY, f64::max);
        assert!(peak > 3.0);
        assert!(peak + eq.preamp_db <= 1e-9, "{peak} {}", eq.preamp_db);
    }

    #[test]
    fn only_points_up_to_fit_max_are_fitted() {
        let freqs = grid();
        // Wild above 5 kHz, gentle below: the fit must ignore the top.
        let target: Vec<f64> =
            freqs.iter().map(|&f| if f > 5_000.0 { 40.0 } else { 2.0 * (f / 1_000.0).log10() }).collect();
        let eq = fit(&freqs, &target, 5_000.0, 10, SR);
        assert_sane(&eq);
        assert!(eq.fit_rms_error_db < 0.15, "{eq:?}");
        // No band is placed where nothing constrains it, so nothing explodes
        // above the fitted range (the tilt only reaches +1.4 dB at 5 kHz).
        assert!(eq.bands.iter().all(|b| b.freq_hz <= 5_000.0), "{eq:?}");
        assert!(eq.preamp_db > -3.0, "{eq:?}");
        // A bass-only fit leaves the top alone.
        let low = fit(&freqs, &target, 200.0, 10, SR);
        assert_sane(&low);
        assert!(low.bands.iter().all(|b| b.freq_hz <= 200.0), "{low:?}");
        let above = response_db(&low.bands, &[5_000.0, 20_000.0], SR);
        assert!(above.iter().all(|v| v.abs() < 3.5), "{above:?}");
        let bass = fit(&freqs, &target, 10.0, 10, SR);
        assert!(bass.bands.is_empty());
    }

    #[test]
    fn steps_and_degenerate_inputs_never_panic_or_produce_nan() {
        let freqs = grid();
        let step_up: Vec<f64> = freqs.iter().map(|&f| if f < 1_000.0 { -12.0 } else { 12.0 }).collect();
        let step_down: Vec<f64> = step_up.iter().map(|v| -v).collect();
        let huge = vec![1e300; freqs.len()];
        let alternating: Vec<f64> = (0..freqs.len()).map(|i| if i % 2 == 0 { 12.0 } else { -12.0 }).collect();
        for target in [&step_up, &step_down, &huge, &alternating] {
            for &sr in &[44_100.0, 48_000.0, 96_000.0, 8_000.0, 1_000.0, 30.0] {
                let eq = fit(&freqs, target, 20_000.0, 10, sr);
                assert_sane(&eq);
            }
        }
        let eq = fit(&freqs, &step_up, 20_000.0, 10, SR);
        assert!(eq.fit_rms_error_db < 3.0, "{eq:?}");

        // Length mismatch: empty.
        let eq = fit(&freqs, &step_up[..10], 20_000.0, 10, SR);
        assert_eq!(eq, ParametricEq::empty(0.0, 0.0));
        // Nothing to fit.
        assert_eq!(fit(&[], &[], 20_000.0, 10, SR), ParametricEq::empty(0.0, 0.0));
        // A single point is matched.
        let eq = fit(&[1_000.0], &[5.0], 20_000.0, 10, SR);
        assert_sane(&eq);
        assert!(eq.fit_rms_error_db < 0.1, "{eq:?}");
        // Zero peaks: shelves only.
        let eq = fit(&freqs, &step_up, 20_000.0, 0, SR);
        assert_sane(&eq);
        assert!(eq.bands.iter().all(|b| b.kind != FilterKind::Peaking));
        // Non-finite values are ignored rather than propagated.
        let mut holes = step_up.clone();
        holes[5] = f64::NAN;
        holes[6] = f64::INFINITY;
        assert_sane(&fit(&freqs, &holes, 20_000.0, 10, SR));
        assert_sane(&fit(&freqs, &step_up, f64::NAN, 10, SR));
        assert_sane(&fit(&freqs, &step_up, 20_000.0, 10, f64::NAN));
        assert_sane(&fit(&freqs, &step_up, 20_000.0, usize::MAX, 0.0));
    }

    #[test]
    fn eq_serialises_with_snake_case_kinds() {
        let freqs = grid();
        let eq = fit(&freqs, &random_walk_curve(3), 20_000.0, 10, SR);
        let json = serde_json::to_string(&eq).unwrap_or_default();
        assert!(json.contains("\"kind\":\"low_shelf\"") || json.contains("\"kind\":\"peaking\""));
        let back: Option<ParametricEq> = serde_json::from_str(&json).ok();
        assert_eq!(back.as_ref().map(|e| e.bands.len()), Some(eq.bands.len()));
    }

    #[test]
    fn fit_is_deterministic() {
        let freqs = grid();
        let target = rough_random_curve(42);
        assert_eq!(fit(&freqs, &target, 16_000.0, 10, SR), fit(&freqs, &target, 16_000.0, 10, SR));
    }
}
