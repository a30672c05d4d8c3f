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
/// envelope is `envelope`, driven by `drive` (linear): [`GainComputer`] over the whole buffer.
pub fn gain_curve(envelope: &[f32], drive: f32, sample_rate_hz: u32, s: &LimiterSettings) -> Vec<f32> {
    let mut gains = Vec::with_capacity(envelope.len());
    let mut computer = GainComputer::new(sample_rate_hz, s, drive);
    computer.push(envelope, &mut gains);
    computer.finish(&mut gains);
    gains
}

/// The limiter's gain computer, frame by frame: the gain needed to keep the driven envelope
/// under the ceiling, its minimum over the look-ahead window (a monotonic deque of candidates),
/// an instant-down exponential-up release, and a moving average over the look-ahead (a ring).
/// A frame's gain is ready once its look-ahead window has been seen, so it comes out `look`
/// frames after its envelope value went in; the state carries across calls, so any chunking
/// gives the same gains as one call over the whole envelope.
pub struct GainComputer {
    drive: f32,
    ceiling: f32,
    look: usize,
    release: f32,
    /// (index, required gain) candidates for the sliding minimum.
    deque: VecDeque<(usize, f32)>,
    pushed: usize,
    made: usize,
    /// Released gain of the last `look` frames, by index modulo `look`.
    ring: Vec<f32>,
    released: f32,
    sum: f64,
    /// The first frame's released gain, standing in for the frames before the start, so a peak
    /// in the first look-ahead is held too.
    before: f64,
}

impl GainComputer {
    /// A gain computer for `s` at `sample_rate_hz`, with the envelope driven by `drive` (linear).
    pub fn new(sample_rate_hz: u32, s: &LimiterSettings, drive: f32) -> Self {
        let look = ((s.lookahead_ms * 1e-3 * f64::from(sample_rate_hz)).round() as usize).max(1);
        Self {
            drive,
            ceiling: 10f64.powf((s.ceiling_dbtp - CEILING_MARGIN_DB) / 20.0) as f32,
            look,
            release: (-1.0 / (s.release_ms.max(1.0) * 1e-3 * f64::from(sample_rate_hz))).exp() as f32,
            deque: VecDeque::with_capacity(look + 1),
            pushed: 0,
            made: 0,
            ring: vec![1.0; look],
            released: 1.0,
            sum: 0.0,
            before: 1.0,
        }
    }

    /// Takes the next frames' undriven envelope values and appends every gain now ready.
    pub fn push(&mut self, envelope: &[f32], gains: &mut Vec<f32>) {
        for &p in envelope {
            let peak = p * self.drive;
            let required = if peak > self.ceiling { self.ceiling / peak } else { 1.0 };
            while self.deque.back().is_some_and(|&(_, v)| v >= required) {
                self.deque.pop_back();
            }
            self.deque.push_back((self.pushed, required));
            self.pushed += 1;
            if self.pushed >= self.look {
                gains.push(self.produce());
            }
        }
    }

    /// The envelope has ended: appends the gains of the frames still waiting.
    pub fn finish(&mut self, gains: &mut Vec<f32>) {
        while self.made < self.pushed {
            gains.push(self.produce());
        }
    }

    /// The gain of frame `self.made`, whose look-ahead window is complete (or ends the signal).
    fn produce(&mut self) -> f32 {
        let i = self.made;
        while self.deque.front().is_some_and(|&(k, _)| k < i) {
            self.deque.pop_front();
        }
        let minimum = self.deque.front().map_or(1.0, |&(_, v)| v);
        self.released =
            if minimum < self.released { minimum } else { minimum + (self.released - minimum) * self.release };
        let released = self.released;
        if i == 0 {
            self.before = f64::from(released);
            self.sum = self.look as f64 * self.before;
        }
        self.sum += f64::from(released);
        let slot = i % self.look;
        self.sum -= if i >= self.look { f64::from(self.ring[slot]) } else { self.before };
        self.ring[slot] = released;
        self.made += 1;
        ((self.sum / self.look as f64) as f32).min(1.0)
    }
}

/// How far under the ceiling the safety trim holds the master's measured true peak, dB: the
/// margin of the ceiling's last guard ([`crate::ceiling::NET_MARGIN_DB`]) and 0.01 dB for what
/// dither and quantisation add (at 16 bits, 1.5 LSB through the interpolator: 0.001 dB), so the
/// guard finds nothing to do on a trimmed master.
const SAFETY_MARGIN_DB: f64 = crate::ceiling::NET_MARGIN_DB + 0.01;

/// Last line of defence for the ceiling before the writer's own guard: the gain (dB, ≤ 0) that
/// brings a limited output whose true peak measured `true_peak_dbtp` (by the precise detector:
/// [`crate::render::stream::TruePeakMeter`]) to `SAFETY_MARGIN_DB` under `ceiling_dbtp`. The
/// limiter's own detector (16 taps, flat to 0.92 of Nyquist) under-reads full-band content near
/// Nyquist (clipped or square material, dense noise) by up to 1.5 dB; real music rarely needs
/// the trim.
pub fn safety_trim_db(ceiling_dbtp: f64, true_peak_dbtp: f64) -> f64 {
    let limit = ceiling_dbtp - SAFETY_MARGIN_DB;
    if true_peak_dbtp.is_finite() && true_peak_dbtp > limit {
        limit - true_peak_dbtp
    } else {
        0.0
    }
}
