//! True-peak look-ahead limiter.
//!
//! For every sample the gain needed to keep the 4× oversampled peak under the ceiling is known
//! from the true-peak envelope. That requirement is turned into a smooth gain curve in three
//! passes: a sliding minimum over the look-ahead window, an exponential release, and a moving
//! average over the same window. The moving average of minima taken over windows that all contain
//! sample n can never exceed the gain sample n needs, so the ceiling holds by construction, and
//! the gain ramps over the whole look-ahead instead of jumping (no clicks).

use std::collections::VecDeque;

use crate::audio::AudioBuffer;
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

/// Applies drive and limiting to `audio` in place, then the [`safety_trim`]. `envelope` is the
/// true-peak envelope of the undriven input ([`crate::dsp::truepeak::peak_envelope`]).
pub fn limit(audio: &mut AudioBuffer, envelope: &[f32], s: &LimiterSettings) -> LimiterStats {
    let drive = 10f64.powf(s.drive_db / 20.0) as f32;
    let rate = audio.sample_rate_hz;
    if !s.enabled {
        for ch in audio.channels.iter_mut() {
            ch.iter_mut().for_each(|x| *x *= drive);
        }
        let block = (rate / 10).max(1) as usize;
        return LimiterStats {
            max_gain_reduction_db: 0.0,
            loud_gain_reduction_db: 0.0,
            gain_reduction_series_db: vec![0.0; envelope.len().div_ceil(block)],
        };
    }
    let gain = gain_curve(envelope, drive, rate, s);
    let _trim_db = finish(audio, drive, &gain, s);
    stats(&gain, rate)
}

/// The limiter's output stage for an already computed gain curve: `drive × gain[i]` on every
/// channel, then the [`safety_trim`]. [`limit`] and the loudness loop both end here, so a
/// re-render reproduces the loop's master bit for bit.
/// Returns the safety trim applied, dB (≤ 0).
pub fn finish(audio: &mut AudioBuffer, drive: f32, gain: &[f32], s: &LimiterSettings) -> f64 {
    apply_gain(&mut audio.channels, drive, gain);
    safety_trim(audio, s.ceiling_dbtp)
}

/// [`finish`] without the safety trim, for the closed loop's intermediate passes: they are only
/// measured (spectrum), never written, and the trim's 8× meter is the slowest step of the stage.
pub fn finish_untrimmed(audio: &mut AudioBuffer, drive: f32, gain: &[f32]) {
    apply_gain(&mut audio.channels, drive, gain);
}

/// Multiplies every channel by `drive × gain[i]` (the limiter's output stage).
fn apply_gain(channels: &mut [Vec<f32>], drive: f32, gain: &[f32]) {
    for ch in channels.iter_mut() {
        for (x, g) in ch.iter_mut().zip(gain) {
            *x *= drive * g;
        }
    }
}

/// Gain-reduction statistics of a gain curve.
pub fn stats(gain: &[f32], sample_rate_hz: u32) -> LimiterStats {
    let block = (sample_rate_hz / 10).max(1) as usize;
    let series: Vec<f32> =
        gain.chunks(block).map(|c| -20.0 * c.iter().fold(1f32, |a, &b| a.min(b)).max(1e-6).log10()).collect();
    let max = series.iter().fold(0f32, |a, &b| a.max(b));
    // The 0.1 % quantile of the gain, on every 8th sample (the curve moves over milliseconds).
    let mut sub: Vec<f32> = gain.iter().step_by(8).copied().collect();
    let loud = if sub.is_empty() {
        0.0
    } else {
        let idx = (((sub.len() as f64) * 0.001) as usize).min(sub.len() - 1);
        let (_, g, _) = sub.select_nth_unstable_by(idx, f32::total_cmp);
        -20.0 * f64::from(g.max(1e-6)).log10()
    };
    LimiterStats {
        max_gain_reduction_db: f64::from(max),
        loud_gain_reduction_db: loud.max(0.0),
        gain_reduction_series_db: series,
    }
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

/// Last line of defence for the ceiling: measures the output's true peak with the BS.1770 meter
/// (the `ebur128` crate, as independent tools do) and with a closer 8× meter
/// ([`crate::dsp::truepeak::precise_true_peak`], which agrees with sox's 8× resampling and with
/// ffmpeg where 4× meters under-read) and, if either is over `ceiling_dbtp - 0.05`, scales the
/// whole output down by the excess. Real music rarely needs it (the limiter aims 0.25 dB under);
/// full-band noise right up to Nyquist can overshoot the limiter's own 4x detector by a few
/// tenths of a dB. Deterministic, so a re-render reproduces it. Returns the
/// trim applied in dB (0 when none).
pub fn safety_trim(audio: &mut AudioBuffer, ceiling_dbtp: f64) -> f64 {
    let limit = ceiling_dbtp - 0.05;
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    // Inter-sample overs of more than 2 dB above both neighbouring samples need strong content
    // near Nyquist; the stretches below that floor are left to the BS.1770 meter.
    let floor = 10f64.powf((limit - 2.0) / 20.0) as f32;
    let precise = 20.0 * f64::from(crate::dsp::truepeak::precise_true_peak(&planes, floor)).log10();
    let tp = crate::analysis::loudness::true_peak_dbtp(audio).max(precise);
    if !tp.is_finite() || tp <= limit {
        return 0.0;
    }
    let trim_db = limit - tp;
    let g = 10f64.powf(trim_db / 20.0) as f32;
    for ch in audio.channels.iter_mut() {
        ch.iter_mut().for_each(|x| *x *= g);
    }
    trim_db
}
