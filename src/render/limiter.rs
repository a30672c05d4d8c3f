//! True-peak look-ahead limiter.
//!
//! For every sample the gain needed to keep the 4× oversampled peak under the ceiling is known
//! from the true-peak envelope. That requirement is turned into a smooth gain curve in three
//! passes: a sliding minimum over the look-ahead window, an exponential release, and a moving
//! average over the same window. The moving average of minima taken over windows that all contain
//! sample n can never exceed the gain sample n needs, so the ceiling holds by construction, and
//! the gain ramps over the whole look-ahead instead of jumping (no clicks).

use std::collections::VecDeque;

use crate::settings::LimiterSettings;

/// Safety margin below the ceiling the limiter aims at, dB: covers the difference between this
/// detector and other 4× true-peak meters.
pub const CEILING_MARGIN_DB: f64 = 0.25;

/// What the limiter did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LimiterStats {
    /// Largest gain reduction, dB (≥ 0).
    pub max_gain_reduction_db: f64,
    /// Gain reduction exceeded by only 0.1 % of the samples, dB (how hard the limiter works on
    /// the music, as opposed to a lone transient).
    pub loud_gain_reduction_db: f64,
    /// Largest gain reduction in each 100 ms block, dB, for plots.
    pub gain_reduction_series_db: Vec<f32>,
}

/// The limiter's gain (linear, ≤ 1) for every sample, for an input whose undriven true-peak
/// envelope is `envelope`, driven by `drive` (linear). One vector is allocated (the result): the
/// sliding minimum keeps its candidates in a deque, and the moving average its window in a ring.
pub fn gain_curve(envelope: &[f32], drive: f32, sample_rate_hz: u32, s: &LimiterSettings) -> Vec<f32> {
    let n = envelope.len();
    let ceiling = 10f64.powf((s.ceiling_dbtp - CEILING_MARGIN_DB) / 20.0) as f32;
    let look = ((s.lookahead_ms * 1e-3 * f64::from(sample_rate_hz)).round() as usize).max(1);
    // 1. required gain, 2. sliding minimum over [i, i + look − 1] (monotonic deque)
    let required = |p: f32| {
        let peak = p * drive;
        if peak > ceiling {
            ceiling / peak
        } else {
            1.0
        }
    };
    let mut out = vec![1f32; n];
    let mut deque: VecDeque<(usize, f32)> = VecDeque::with_capacity(look + 1);
    for j in 0..n + look - 1 {
        if let Some(&p) = envelope.get(j) {
            let r = required(p);
            while deque.back().is_some_and(|&(_, v)| v >= r) {
                deque.pop_back();
            }
            deque.push_back((j, r));
        }
        if j + 1 >= look {
            let i = j + 1 - look;
            while deque.front().is_some_and(|&(k, _)| k < i) {
                deque.pop_front();
            }
            if i < n {
                out[i] = deque.front().map_or(1.0, |&(_, v)| v);
            }
        }
    }
    // 3. release: instant down, exponential up
    let a = (-1.0 / (s.release_ms.max(1.0) * 1e-3 * f64::from(sample_rate_hz))).exp() as f32;
    let mut r = 1f32;
    for v in out.iter_mut() {
        r = if *v < r { *v } else { *v + (r - *v) * a };
        *v = r;
    }
    // 4. moving average over the previous `look` values. Values before the start count as the
    //    first window's minimum, so a peak in the first look-ahead is held too.
    let before = f64::from(out.first().copied().unwrap_or(1.0));
    let mut ring = vec![0f32; look];
    let mut sum = look as f64 * before;
    for (i, v) in out.iter_mut().enumerate() {
        let released = *v;
        sum += f64::from(released);
        let slot = i % look;
        sum -= if i >= look { f64::from(ring[slot]) } else { before };
        ring[slot] = released;
        *v = ((sum / look as f64) as f32).min(1.0);
    }
    out
}

/// How far under the ceiling the safety trim holds the master's measured true peak, dB.
const SAFETY_MARGIN_DB: f64 = 0.05;

/// The level above which the close 8× meter of the safety trim interpolates, dBFS: inter-sample
/// overs of more than 2 dB above both neighbouring samples need strong content near Nyquist, so
/// the stretches below it are left to the BS.1770 meter.
pub fn safety_meter_floor_dbfs(ceiling_dbtp: f64) -> f64 {
    ceiling_dbtp - SAFETY_MARGIN_DB - 2.0
}

/// Last line of defence for the ceiling: the gain (dB, ≤ 0) that brings a limited output whose
/// true peak measured `true_peak_dbtp` (the BS.1770 meter and a closer 8× meter, whichever reads
/// higher: [`crate::render::stream::TruePeakMeter`]) to `SAFETY_MARGIN_DB` under `ceiling_dbtp`.
/// Real music rarely needs it (the limiter aims 0.25 dB under); full-band noise right up to
/// Nyquist can overshoot the limiter's own 4× detector by a few tenths of a dB.
pub fn safety_trim_db(ceiling_dbtp: f64, true_peak_dbtp: f64) -> f64 {
    let limit = ceiling_dbtp - SAFETY_MARGIN_DB;
    if true_peak_dbtp.is_finite() && true_peak_dbtp > limit {
        limit - true_peak_dbtp
    } else {
        0.0
    }
}
