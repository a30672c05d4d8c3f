//! Dynamics restored from the same music.
//!
//! When the reference is the same music as the mix (the finished track a mix was un-mastered
//! from, an earlier master of this very mix), the level-motion statistics of [`super::dynamics`]
//! are a blunt yardstick: the reference says, moment by moment, what level each band should
//! have. So the gain that turns the mix into the reference is read per 20 ms chunk and band
//! (reference level over mix level, after aligning the two), and the compressor whose gain law
//! explains it best is fitted to it.
//!
//! A compressor whose threshold sits under the music's quiet passages applies
//! `(1/ratio − 1) · (level − threshold) + make-up` dB: a line in the detector's level. So for
//! each pair of detector times the wanted gain (dB) is regressed on the detector's level (dB),
//! with one intercept per band (a static gain per band is the EQ's business, not the
//! compressor's):
//! - **broadband**: one detector on the whole mid and one slope for every band (what undoes a
//!   level expander without moving the tonal balance);
//! - **multiband**: each band its own detector, times and slope.
//!
//! The yardstick is the rms of what the fitted gain leaves unexplained, in dB, with each band
//! weighted by the third-octave bands it spans (as a spectrogram distance weighs them). The
//! stage is used only when its gain explains clearly more of the wanted gain than static gains
//! do: measured against the truth, so it never compresses where the reference did not.

use crate::analysis::dynamics::{power_db, BandEnvelopes};
use crate::analysis::loudness::percentile_sorted;
use crate::settings::{limits, CompressorBand, DynamicsSettings};
use crate::solve::dynamics::{
    detector_levels_db, gain_track_for, neutral, neutral_band, sum_series, MAX_MEAN_REDUCTION_DB,
};

/// 5 ms envelope blocks per chunk the wanted gain is read on (20 ms): short enough to follow a
/// 20 ms detector, long enough that a block's noise does not swamp the reading.
const CHUNK_BLOCKS: usize = 4;
/// Detector times tried, (attack, release) ms: symmetric RMS windows (what an expander or a
/// leveller uses) and the attack-under-release pairs of ordinary compressors.
const TIMES_MS: [(f64, f64); 20] = [
    (5.0, 5.0),
    (10.0, 10.0),
    (20.0, 20.0),
    (45.0, 45.0),
    (100.0, 100.0),
    (200.0, 200.0),
    (400.0, 400.0),
    (1000.0, 1000.0),
    (5.0, 45.0),
    (5.0, 120.0),
    (5.0, 300.0),
    (15.0, 120.0),
    (15.0, 300.0),
    (15.0, 800.0),
    (45.0, 300.0),
    (45.0, 800.0),
    (120.0, 300.0),
    (120.0, 800.0),
    (300.0, 800.0),
    (300.0, 2000.0),
];
/// Steepest slope fitted, dB of gain per dB of level: a 2:1 ratio. Restoring a master rarely
/// needs more; a steeper fit is the regression chasing something else.
const MIN_SLOPE: f64 = -0.5;
/// A slope gentler than this (1.05:1) does nothing audible: the band stays off.
const NEGLIGIBLE_SLOPE: f64 = -0.045;
/// Chunks quieter than this under the band's loud level (99th percentile) are not read: their
/// level is noise and leakage, and a spectrogram distance gates them out too.
const ACTIVE_RANGE_DB: f32 = 45.0;
/// The stage must lower the unexplained gain by this share of the static fit's ...
const MIN_SHARE: f64 = 0.1;
/// ... and by this much, dB rms.
const MIN_GAIN_DB: f64 = 0.1;
/// Multiband must improve on broadband by this share and this much again.
const MULTIBAND_SHARE: f64 = 0.05;
const MULTIBAND_GAIN_DB: f64 = 0.05;
/// Lowest and highest frequency the band weights count, Hz (the span a listener's spectrogram
/// distance reads).
const WEIGHT_SPAN_HZ: (f64, f64) = (40.0, 16_000.0);
/// Longest stretch the two are aligned on (from the middle), chunks: 3 minutes.
const ALIGN_MAX_CHUNKS: usize = 9_000;
/// Largest offset searched between mix and reference, chunks (10 s).
const ALIGN_MAX_LAG_CHUNKS: usize = 500;
/// Alignment must reach this correlation of level changes.
const ALIGN_MIN_CORRELATION: f64 = 0.5;
/// Fewest active chunks a band is fitted on (4 s).
const MIN_CHUNKS: usize = 200;

/// What the restoration fit found.
#[derive(Debug, Clone)]
pub struct Restoration {
    /// The compressor to render (disabled when static gains explain the reference as well).
    pub dynamics: DynamicsSettings,
    /// Rms of the wanted gain around one static gain per band, dB.
    pub static_residual_db: f64,
    /// Rms of what the chosen gain leaves unexplained, dB.
    pub residual_db: f64,
    /// Offset of the reference against the mix, 5 ms blocks (positive: the reference is late).
    pub lag_blocks: isize,
    /// One line for the user: what was chosen and why.
    pub note: String,
}

/// One compressor fitted to one or more bands.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LineFit {
    /// Index into [`TIMES_MS`].
    times: usize,
    /// Gain slope, dB per dB of detector level (≤ 0).
    slope: f64,
    /// Weighted mean square of what the line leaves unexplained, dB² (per band, weighted sum).
    residual_sq: f64,
}

/// The mix's and the reference's readings on the aligned chunks of one band.
struct BandReading {
    /// Chunk indices (into the mix's chunks) that are active in both.
    active: Vec<usize>,
    /// Wanted gain of each active chunk, dB, mean removed.
    wanted_db: Vec<f64>,
    /// The mean that was removed, dB.
    mean_db: f64,
    /// Weight of the band (third-octave bands it spans).
    weight: f64,
}

/// Fits the compressor that turns the mix into the reference. `mix_bands` are the mix's 5 ms
/// band mean squares as the compressor will see them (after the EQ's gain in each band);
/// `reference` the reference's envelopes. `None` when the two cannot be read side by side
/// (different block rates or bands, too short, no alignment found): the caller then solves on
/// statistics.
pub fn restore(mix_bands: &[Vec<f32>], mix_edges_hz: [f64; 5], reference: &BandEnvelopes) -> Option<Restoration> {
    if reference.bands.len() != mix_bands.len()
        || mix_bands.is_empty()
        || mix_edges_hz.iter().zip(&reference.edges_hz).any(|(a, b)| (a - b).abs() > 1e-6 * a.abs().max(1.0))
    {
        return None;
    }
    let ref_bands: Vec<&[f32]> = reference.bands.iter().map(|b| b.mean_square.as_slice()).collect();
    let mix_broad = sum_series(mix_bands.iter().map(Vec::as_slice));
    let ref_broad = sum_series(ref_bands.iter().copied());
    let lag = align_blocks(&mix_broad, &ref_broad)?;
    let n_chunks = mix_broad.len() / CHUNK_BLOCKS;
    let readings: Vec<BandReading> = mix_bands
        .iter()
        .zip(&ref_bands)
        .enumerate()
        .map(|(b, (m, r))| read_band(m, r, lag, n_chunks, band_weight(mix_edges_hz[b], mix_edges_hz[b + 1])))
        .collect();
    if readings.iter().all(|r| r.active.len() < MIN_CHUNKS) {
        return None;
    }
    let total_weight: f64 = readings.iter().filter(|r| r.active.len() >= MIN_CHUNKS).map(|r| r.weight).sum();
    let static_sq: f64 = readings
        .iter()
        .filter(|r| r.active.len() >= MIN_CHUNKS)
        .map(|r| r.weight * mean_square(&r.wanted_db))
        .sum::<f64>()
        / total_weight;

    // What the compressor's output should be: the reference, each band at the mix's own mean
    // level (a feedback detector follows it).
    let ideal: Vec<Vec<f32>> = mix_bands
        .iter()
        .zip(&ref_bands)
        .zip(&readings)
        .map(|((m, r), reading)| ideal_output(m, r, lag, reading.mean_db))
        .collect();
    let ideal_broad = sum_series(ideal.iter().map(Vec::as_slice));

    // Both topologies, each with one line for all bands (broadband) and one per band.
    let mut best: Option<(f64, Choice)> = None;
    let mut report = Vec::with_capacity(2);
    // The detectors' chunk levels at every time constant, broadband then per band: most of the
    // fit's work, pure, and independent between the topologies, so the feedback one is read on
    // a second thread.
    type Levels = (Vec<Vec<f64>>, Vec<Vec<Vec<f64>>>);
    let levels_of = |broad: &[f32], bands: &[Vec<f32>]| -> Levels {
        (
            TIMES_MS.iter().map(|&t| chunk_levels_db(broad, t)).collect(),
            bands.iter().map(|m| TIMES_MS.iter().map(|&t| chunk_levels_db(m, t)).collect()).collect(),
        )
    };
    let (forward_levels, feedback_levels) = std::thread::scope(|scope| {
        let feedback = scope.spawn(|| levels_of(&ideal_broad, &ideal));
        let forward = levels_of(&mix_broad, mix_bands);
        // A panic on the second thread is a bug: it goes on here as it would have alone.
        (forward, feedback.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    for feedback in [false, true] {
        let (broad_levels, band_levels) = if feedback { &feedback_levels } else { &forward_levels };
        let broadband = fit_line(&readings, |_, t| &broad_levels[t]);
        let per_band: Vec<Option<LineFit>> = readings
            .iter()
            .enumerate()
            .map(|(b, r)| {
                (r.active.len() >= MIN_CHUNKS)
                    .then(|| fit_line(std::slice::from_ref(r), |_, t| &band_levels[b][t]))
                    .flatten()
                    .filter(|f| f.slope < NEGLIGIBLE_SLOPE)
            })
            .collect();
        let multiband_sq: f64 = readings
            .iter()
            .zip(&per_band)
            .filter(|(r, _)| r.active.len() >= MIN_CHUNKS)
            .map(|(r, f)| f.map_or(r.weight * mean_square(&r.wanted_db), |f| f.residual_sq))
            .sum::<f64>()
            / total_weight;
        let broad_ok = broadband
            .filter(|f| f.slope < NEGLIGIBLE_SLOPE)
            .filter(|f| clearly_better(f.residual_sq / total_weight, static_sq, MIN_SHARE, MIN_GAIN_DB));
        let multi_ok = per_band.iter().any(Option::is_some)
            && clearly_better(multiband_sq, static_sq, MIN_SHARE, MIN_GAIN_DB)
            && broad_ok.is_none_or(|f| {
                clearly_better(multiband_sq, f.residual_sq / total_weight, MULTIBAND_SHARE, MULTIBAND_GAIN_DB)
            });
        let topology = if feedback { "feedback" } else { "feed-forward" };
        report.push(format!(
            "{topology}: broadband {}, multiband {:.2} dB",
            broadband.map_or("none".to_string(), |f| format!(
                "{:.2}:1 at {} {:.2} dB",
                ratio_of(f.slope),
                times_text(f.times),
                (f.residual_sq / total_weight).sqrt()
            )),
            multiband_sq.sqrt()
        ));
        let choice = if multi_ok {
            Some((multiband_sq, Choice::Multiband(per_band, feedback)))
        } else {
            broad_ok.map(|f| (f.residual_sq / total_weight, Choice::Broadband(f, feedback)))
        };
        if let Some((sq, c)) = choice {
            if best.as_ref().is_none_or(|(b, _)| sq < *b) {
                best = Some((sq, c));
            }
        }
    }
    let crossovers = [mix_edges_hz[1], mix_edges_hz[2], mix_edges_hz[3]];
    let fits = report.join("; ");
    let Some((residual_sq, choice)) = best else {
        let note = format!(
            "dynamics: off: the reference is the same music and no compressor explains its level better than static band gains ({rms_static:.2} dB unexplained; {fits})",
            rms_static = static_sq.sqrt()
        );
        return Some(Restoration {
            dynamics: neutral(crossovers),
            static_residual_db: static_sq.sqrt(),
            residual_db: static_sq.sqrt(),
            lag_blocks: lag,
            note,
        });
    };
    let (dynamics, what) = match choice {
        Choice::Multiband(per_band, feedback) => {
            let bands: Vec<CompressorBand> = per_band
                .iter()
                .enumerate()
                .map(|(b, f)| {
                    let detector = if feedback { &ideal[b] } else { &mix_bands[b] };
                    f.map_or_else(|| neutral_band(b), |f| compressor_for(detector, &mix_bands[b], f, feedback))
                })
                .collect();
            let on: Vec<String> = bands
                .iter()
                .enumerate()
                .filter(|(_, b)| b.ratio > 1.0)
                .map(|(i, b)| format!("band {} {:.2}:1 at {}", i + 1, b.ratio, times_text_of(b)))
                .collect();
            let what = format!("multiband{} ({})", topology_text(feedback), on.join(", "));
            (DynamicsSettings { enabled: true, crossovers_hz: crossovers, bands, linked: false, feedback }, what)
        }
        Choice::Broadband(f, feedback) => {
            let detector = if feedback { &ideal_broad } else { &mix_broad };
            let band = compressor_for(detector, &mix_broad, f, feedback);
            let what = format!("broadband{} {:.2}:1 at {}", topology_text(feedback), band.ratio, times_text_of(&band));
            let bands = vec![band; 4];
            (DynamicsSettings { enabled: true, crossovers_hz: crossovers, bands, linked: true, feedback }, what)
        }
    };
    let (rms_static, residual_db) = (static_sq.sqrt(), residual_sq.sqrt());
    let note = format!(
        "dynamics: restoring from the same music: {what}: the gain that turns the mix into the reference moves {rms_static:.2} dB around static band gains, {residual_db:.2} dB around this compressor's ({fits})"
    );
    Some(Restoration { dynamics, static_residual_db: rms_static, residual_db, lag_blocks: lag, note })
}

/// Which chain a topology's fits make, if any.
enum Choice {
    Broadband(LineFit, bool),
    Multiband(Vec<Option<LineFit>>, bool),
}

fn topology_text(feedback: bool) -> &'static str {
    if feedback {
        " feedback"
    } else {
        ""
    }
}

/// True when the rms of `sq` is under the rms of `base` by `share` of it and by `db`.
fn clearly_better(sq: f64, base: f64, share: f64, db: f64) -> bool {
    let (a, b) = (sq.sqrt(), base.sqrt());
    a <= (1.0 - share) * b && b - a >= db
}

/// What one band of the compressor should put out, 5 ms mean squares: the reference (shifted by
/// `lag_blocks`) brought to the mix's mean level (`mean_gain_db`: the reference's mean level over
/// the mix's); the mix's own where the reference does not reach.
fn ideal_output(mix: &[f32], reference: &[f32], lag_blocks: isize, mean_gain_db: f64) -> Vec<f32> {
    let scale = 10f64.powf(-mean_gain_db / 10.0) as f32;
    mix.iter().enumerate().map(|(i, &m)| reference_at(reference, i, lag_blocks).map_or(m, |r| r * scale)).collect()
}

/// The reference's block that lines up with the mix's block `i` (`None` past its ends).
fn reference_at(reference: &[f32], i: usize, lag_blocks: isize) -> Option<f32> {
    let j = i as isize + lag_blocks;
    if j >= 0 {
        reference.get(j.unsigned_abs()).copied()
    } else {
        None
    }
}

/// Ratio of a gain slope (dB/dB).
fn ratio_of(slope: f64) -> f64 {
    1.0 / (1.0 + slope)
}

fn times_text(t: usize) -> String {
    let (a, r) = TIMES_MS[t];
    if a == r {
        format!("{a:.0} ms")
    } else {
        format!("{a:.0}/{r:.0} ms")
    }
}

fn times_text_of(b: &CompressorBand) -> String {
    if b.attack_ms == b.release_ms {
        format!("{:.0} ms", b.attack_ms)
    } else {
        format!("{:.0}/{:.0} ms", b.attack_ms, b.release_ms)
    }
}

/// The compressor band of a fitted line: threshold under the detector's quietest active levels,
/// down to the settings' floor ([`limits::THRESHOLD_DBFS`]) at most, so the gain law is the fitted
/// line over everything heard (a feedback detector reads the output before make-up, lower by up
/// to the largest mean reduction); no knee; make-up that keeps
/// the energy of `input` (the series the gain applies to, which a feed-forward `detector` is).
fn compressor_for(detector: &[f32], input: &[f32], fit: LineFit, feedback: bool) -> CompressorBand {
    let (attack_ms, release_ms) = TIMES_MS[fit.times];
    let mut levels = Vec::with_capacity(detector.len());
    detector_levels_db(detector, attack_ms, release_ms, &mut levels);
    let mut sorted: Vec<f64> = levels.iter().map(|&v| f64::from(v)).filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let loud = percentile_sorted(&sorted, 0.99);
    let floor = loud - f64::from(ACTIVE_RANGE_DB);
    let quiet = sorted.iter().copied().find(|&v| v >= floor).unwrap_or(floor);
    let below = if feedback { 3.0 + MAX_MEAN_REDUCTION_DB } else { 3.0 };
    let mut band = CompressorBand {
        // Within what a settings file may hold, so that the settings reapply; a band quieter than
        // that floor is near silence, and the make-up below keeps the law's line where it is heard.
        threshold_dbfs: (quiet - below).clamp(limits::THRESHOLD_DBFS.0, limits::THRESHOLD_DBFS.1),
        ratio: ratio_of(fit.slope),
        knee_db: 0.0,
        attack_ms,
        release_ms,
        makeup_db: 0.0,
    };
    let mut gains = Vec::with_capacity(input.len());
    gain_track_for(input, &band, feedback, &mut gains);
    let e_in: f64 = input.iter().map(|&v| f64::from(v)).sum();
    let e_out: f64 = input.iter().zip(&gains).map(|(&v, &g)| f64::from(v) * f64::from(g)).sum();
    if e_in > 0.0 && e_out > 0.0 {
        band.makeup_db = (10.0 * (e_in / e_out).log10()).clamp(0.0, MAX_MEAN_REDUCTION_DB);
    }
    band
}

/// The best line over `readings` for any pair of detector times: `levels(b, t)` gives band `b`'s
/// detector level per chunk for times `t`. One slope for all the bands, one intercept each.
/// Returns the weighted residual (not yet divided by the total weight).
fn fit_line<'a>(readings: &[BandReading], levels: impl Fn(usize, usize) -> &'a Vec<f64>) -> Option<LineFit> {
    let mut best: Option<LineFit> = None;
    for t in 0..TIMES_MS.len() {
        // Per band: centred levels; then the pooled slope.
        let (mut sxy, mut sxx) = (0f64, 0f64);
        let mut centred: Vec<Vec<f64>> = Vec::with_capacity(readings.len());
        for (b, r) in readings.iter().enumerate() {
            if r.active.len() < MIN_CHUNKS {
                centred.push(Vec::new());
                continue;
            }
            let l = levels(b, t);
            let xs: Vec<f64> = r.active.iter().map(|&i| l[i]).collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let xs: Vec<f64> = xs.into_iter().map(|x| x - mean).collect();
            let w = r.weight / xs.len() as f64;
            for (x, y) in xs.iter().zip(&r.wanted_db) {
                sxy += w * x * y;
                sxx += w * x * x;
            }
            centred.push(xs);
        }
        if sxx <= 1e-9 {
            continue;
        }
        let slope = (sxy / sxx).clamp(MIN_SLOPE, 0.0);
        let residual_sq: f64 = readings
            .iter()
            .zip(&centred)
            .filter(|(r, _)| r.active.len() >= MIN_CHUNKS)
            .map(|(r, xs)| {
                let sq: f64 = xs.iter().zip(&r.wanted_db).map(|(x, y)| (y - slope * x).powi(2)).sum();
                r.weight * sq / xs.len() as f64
            })
            .sum();
        if best.is_none_or(|b| residual_sq < b.residual_sq) {
            best = Some(LineFit { times: t, slope, residual_sq });
        }
    }
    best
}

/// Power summed over each chunk, dB (a silent chunk reads very low, not −∞).
fn chunk_db(series: &[f32]) -> Vec<f32> {
    series.chunks_exact(CHUNK_BLOCKS).map(|c| power_db(c.iter().sum::<f32>().max(1e-20)) as f32).collect()
}

/// Detector level per chunk (the mean of its blocks' levels, dB) for detector times `times`.
fn chunk_levels_db(series: &[f32], times: (f64, f64)) -> Vec<f64> {
    let mut levels = Vec::with_capacity(series.len());
    detector_levels_db(series, times.0, times.1, &mut levels);
    levels
        .chunks_exact(CHUNK_BLOCKS)
        .map(|c| c.iter().map(|&v| f64::from(v)).sum::<f64>() / CHUNK_BLOCKS as f64)
        .collect()
}

/// Weight of a band from `low_hz` to `high_hz`: the third-octave bands it spans within
/// [`WEIGHT_SPAN_HZ`].
fn band_weight(low_hz: f64, high_hz: f64) -> f64 {
    let (lo, hi) = (low_hz.max(WEIGHT_SPAN_HZ.0), high_hz.min(WEIGHT_SPAN_HZ.1));
    if hi > lo {
        3.0 * (hi / lo).log2()
    } else {
        0.0
    }
}

fn mean_square(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64
    }
}

/// One band's wanted gain (reference over mix, dB, mean removed) on the chunks active in both.
fn read_band(mix: &[f32], reference: &[f32], lag_blocks: isize, n_chunks: usize, weight: f64) -> BandReading {
    let mix_db = chunk_db(mix);
    // The reference shifted by the lag, chunked on the mix's chunk grid.
    let shifted: Vec<f32> =
        (0..n_chunks * CHUNK_BLOCKS).map(|i| reference_at(reference, i, lag_blocks).unwrap_or(f32::NAN)).collect();
    let ref_db = chunk_db(&shifted);
    let loud = |db: &[f32]| {
        let mut v: Vec<f64> = db.iter().filter(|x| x.is_finite()).map(|&x| f64::from(x)).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f32::NEG_INFINITY
        } else {
            percentile_sorted(&v, 0.99) as f32
        }
    };
    let (mix_floor, ref_floor) = (loud(&mix_db) - ACTIVE_RANGE_DB, loud(&ref_db) - ACTIVE_RANGE_DB);
    let active: Vec<usize> = (0..n_chunks.min(mix_db.len()).min(ref_db.len()))
        .filter(|&i| mix_db[i] > mix_floor && ref_db[i] > ref_floor && ref_db[i].is_finite())
        .collect();
    let wanted: Vec<f64> = active.iter().map(|&i| f64::from(ref_db[i] - mix_db[i])).collect();
    let mean = if wanted.is_empty() { 0.0 } else { wanted.iter().sum::<f64>() / wanted.len() as f64 };
    BandReading { active, wanted_db: wanted.into_iter().map(|w| w - mean).collect(), mean_db: mean, weight }
}

/// Offset of `reference` against `mix` in 5 ms blocks (positive: the reference is late): the
/// best correlation of their chunk-to-chunk level changes within ±10 s, refined to the block.
/// `None` when no offset correlates clearly.
fn align_blocks(mix: &[f32], reference: &[f32]) -> Option<isize> {
    let steps = |db: Vec<f32>| -> Vec<f64> { db.windows(2).map(|w| f64::from(w[1] - w[0])).collect() };
    let (a, b) = (steps(chunk_db(mix)), steps(chunk_db(reference)));
    let lag = best_offset(&a, &b, ALIGN_MAX_LAG_CHUNKS, ALIGN_MAX_CHUNKS)?;
    if lag.1 < ALIGN_MIN_CORRELATION {
        return None;
    }
    // Refine at the block: level changes from block to block, around the chunk lag.
    let block_steps = |s: &[f32]| -> Vec<f64> {
        s.windows(2).map(|w| power_db(w[1].max(1e-20)) - power_db(w[0].max(1e-20))).collect()
    };
    let (a, b) = (block_steps(mix), block_steps(reference));
    let centre = lag.0 * CHUNK_BLOCKS as isize;
    let reach = CHUNK_BLOCKS as isize;
    let best = (centre - reach..=centre + reach)
        .filter_map(|l| correlation_at(&a, &b, l, ALIGN_MAX_CHUNKS * CHUNK_BLOCKS).map(|r| (l, r)))
        .max_by(|x, y| x.1.total_cmp(&y.1))?;
    Some(best.0)
}

/// Best offset of `b` against `a` within ±`max_lag` and its correlation.
fn best_offset(a: &[f64], b: &[f64], max_lag: usize, max_len: usize) -> Option<(isize, f64)> {
    let max_lag = max_lag as isize;
    (-max_lag..=max_lag)
        .filter_map(|l| correlation_at(a, b, l, max_len).map(|r| (l, r)))
        .max_by(|x, y| x.1.total_cmp(&y.1))
}

/// Correlation of `a[i]` with `b[i + lag]` over at most `max_len` points around the middle of
/// their overlap; `None` when they overlap too little or either is flat.
fn correlation_at(a: &[f64], b: &[f64], lag: isize, max_len: usize) -> Option<f64> {
    let start_a = if lag < 0 { lag.unsigned_abs() } else { 0 };
    let start_b = if lag > 0 { lag.unsigned_abs() } else { 0 };
    let n = a.len().saturating_sub(start_a).min(b.len().saturating_sub(start_b));
    if n < 2 * MIN_CHUNKS {
        return None;
    }
    let take = n.min(max_len);
    let skip = (n - take) / 2;
    let (x, y) = (&a[start_a + skip..start_a + skip + take], &b[start_b + skip..start_b + skip + take]);
    let len = take as f64;
    let (mx, my) = (x.iter().sum::<f64>() / len, y.iter().sum::<f64>() / len);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (p, q) in x.iter().zip(y) {
        let (dp, dq) = (p - mx, q - my);
        sxy += dp * dq;
        sxx += dp * dp;
        syy += dq * dq;
    }
    (sxx > 1e-12 && syy > 1e-12).then(|| sxy / (sxx * syy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::dynamics::BandEnvelope;
    use crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ;

    const EDGES_HZ: [f64; 5] =
        [0.0, DEFAULT_CROSSOVERS_HZ[0], DEFAULT_CROSSOVERS_HZ[1], DEFAULT_CROSSOVERS_HZ[2], 22_050.0];

    /// 60 s of four bands' 5 ms mean squares: a level that wanders (phrases of 0.1–2 s, ±10 dB)
    /// under a per-block flutter, each band at its own level.
    fn finished_track() -> Vec<Vec<f32>> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut unit = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let n = 12_000;
        let mut level = 0.0;
        let phrase: Vec<f64> = (0..n)
            .map(|i| {
                if i % 40 == 0 && unit() < 0.5 {
                    level = (unit() - 0.5) * 20.0;
                }
                level
            })
            .collect();
        [-20.0, -18.0, -26.0, -34.0]
            .iter()
            .map(|base| phrase.iter().map(|l| 10f64.powf((base + l + (unit() - 0.5) * 3.0) / 10.0) as f32).collect())
            .collect()
    }

    /// `bands` with a broadband expander applied: every dB of the 45 ms level (of the bands'
    /// sum) around its median moves `1 + slope` dB.
    fn expanded(bands: &[Vec<f32>], slope: f64) -> Vec<Vec<f32>> {
        let sum = sum_series(bands.iter().map(Vec::as_slice));
        let mut levels = Vec::new();
        detector_levels_db(&sum, 45.0, 45.0, &mut levels);
        let mut sorted: Vec<f64> = levels.iter().map(|&v| f64::from(v)).collect();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        bands
            .iter()
            .map(|b| {
                b.iter()
                    .zip(&levels)
                    .map(|(&p, &l)| p * 10f64.powf(slope * (f64::from(l) - median) / 10.0) as f32)
                    .collect()
            })
            .collect()
    }

    fn envelopes_of(bands: &[Vec<f32>]) -> BandEnvelopes {
        BandEnvelopes {
            edges_hz: EDGES_HZ,
            bands: bands
                .iter()
                .map(|b| BandEnvelope { peak: b.iter().map(|p| p.sqrt()).collect(), mean_square: b.clone() })
                .collect(),
        }
    }

    #[test]
    fn an_expanded_mix_is_restored_by_one_broadband_compressor_of_the_inverse_slope() {
        let truth = finished_track();
        let mix = expanded(&truth, 0.25);
        let r = restore(&mix, EDGES_HZ, &envelopes_of(&truth)).expect("the two read side by side");
        assert!(r.dynamics.enabled && r.dynamics.linked, "{}", r.note);
        // Feed-forward the inverse is 1.25:1 (0.2 dB per dB of the mix's level), feedback 1.33:1
        // (0.25 dB per dB of the output's).
        let ratio = r.dynamics.bands[0].ratio;
        let expected = if r.dynamics.feedback { 1.0 / 0.75 } else { 1.25 };
        assert!((ratio - expected).abs() < 0.05, "ratio {ratio:.3}, expected {expected:.3}: {}", r.note);
        assert!(r.residual_db < 0.3 * r.static_residual_db, "{}", r.note);
        assert_eq!(r.lag_blocks, 0);
    }

    #[test]
    fn a_reference_whose_level_moves_like_the_mix_leaves_the_compressor_off() {
        let truth = finished_track();
        // The same music 6 dB quieter and 0.5 s late: nothing for a compressor to do.
        let mix: Vec<Vec<f32>> = truth.iter().map(|b| b.iter().map(|p| p * 0.25).collect()).collect();
        let late: Vec<Vec<f32>> =
            truth.iter().map(|b| std::iter::repeat_n(1e-9, 100).chain(b.iter().copied()).collect()).collect();
        let r = restore(&mix, EDGES_HZ, &envelopes_of(&late)).expect("the two read side by side");
        assert!(!r.dynamics.enabled, "{}", r.note);
        assert_eq!(r.lag_blocks, 100, "the reference is 100 blocks late");
    }

    #[test]
    fn a_very_quiet_expanded_mix_gets_settings_a_settings_file_may_hold() {
        // The same expanded track 60 dB down: its quiet passages sit near -100 dBFS, under the
        // settings' threshold floor. The fitted compressor must still be one a settings file
        // accepts (`Settings::validate` checks these limits, so that `refmaster apply` reapplies
        // it), and still restore the motion.
        let truth: Vec<Vec<f32>> = finished_track().iter().map(|b| b.iter().map(|p| p * 1e-6).collect()).collect();
        let mix = expanded(&truth, 0.25);
        let r = restore(&mix, EDGES_HZ, &envelopes_of(&truth)).expect("the two read side by side");
        assert!(r.dynamics.enabled, "{}", r.note);
        let (lo, hi) = limits::THRESHOLD_DBFS;
        for b in &r.dynamics.bands {
            assert!((lo..=hi).contains(&b.threshold_dbfs), "threshold {} outside {lo}..{hi}", b.threshold_dbfs);
        }
    }
}
