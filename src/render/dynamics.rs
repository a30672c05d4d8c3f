//! Multiband compressor: mid and side are each split by an LR4 crossover; each band's detector
//! follows the band's mid signal (RMS, attack/release), and the same gain goes to the band's mid
//! and side so the stereo image stays put. Linked (broadband) settings run one detector on the
//! sum of the bands' mid powers and apply band 0's gain to the unsplit signal (no crossover phase
//! in the output). Feedback settings detect on each band's output instead of its input. Gain law
//! and detector are the ones the solver simulates ([`crate::solve::dynamics`]).
//!
//! It runs as a stream ([`Compressor`]): the song passes through in chunks of any size and the
//! output does not depend on where the chunks are cut.

use crate::dsp::crossover::Crossover4;
use crate::settings::DynamicsSettings;
use crate::solve::dynamics::{coefficient, gain_db};

/// The detectors run every sample; the gain law (a log and an exponential per band) runs once per
/// block of `CONTROL` samples, and the gain ramps linearly across the block: far finer than the
/// shortest attack (5 ms), and several times cheaper.
const CONTROL: usize = 16;

/// One sample `x` (split into `bands` by the crossover) under the band gains `g`.
///
/// The LR4 bands sum to an allpass of `x`, not to `x`: an output rebuilt from the bands turns
/// every transient's phase around the crossovers (the highs land a few milliseconds off the
/// lows, which a spectrogram comparison with the unprocessed song reads as several dB of error
/// frame by frame in the highs). Broadband (`linked`) gains are all
/// equal, so the output is `g · x`, with no phase change at all. Band gains that differ need the
/// bands; rebuilding as `g_ref · x + Σ (g_b − g_ref) · band_b` was tried and is worse where the
/// gains differ by several dB (near each crossover `1 − allpass` reaches 2), so the multiband
/// output is the bands' sum.
#[inline]
fn apply_gains(x: f64, bands: &[f64; 4], g: &[f64; 4], linked: bool) -> f64 {
    if linked {
        x * g[0]
    } else {
        bands.iter().zip(g).map(|(v, gb)| v * gb).sum::<f64>()
    }
}

/// Compresses `mid` and `side` (equal length; `side` may be empty for mono) in place.
pub fn compress(mid: &mut [f32], side: &mut [f32], sample_rate_hz: u32, settings: &DynamicsSettings) {
    let mut c = Compressor::new(sample_rate_hz, settings, side.len() == mid.len());
    if c.is_bypassed() {
        return;
    }
    let (mut m, mut s) = (Vec::with_capacity(mid.len()), Vec::with_capacity(side.len()));
    c.process(mid, side, &mut m, &mut s);
    c.finish(&mut m, &mut s);
    mid.copy_from_slice(&m);
    if side.len() == s.len() {
        side.copy_from_slice(&s);
    }
}

/// The multiband compressor as a stream: feed mid/side chunks to [`Compressor::process`], then
/// call [`Compressor::finish`]; outputs are appended in order, as many as went in.
pub struct Compressor {
    bypass: bool,
    has_side: bool,
    /// One detector on the sum of the bands' powers drives every band (broadband compression).
    linked: bool,
    /// The detectors follow the output (after the gain, before make-up), not the input.
    feedback: bool,
    xo_mid: Crossover4,
    xo_side: Crossover4,
    coeffs: [(f64, f64); 4],
    params: [(f64, f64, f64, f64); 4],
    state: [f64; 4],
    gain: [f64; 4],
    /// Samples of the control block in progress (fewer than `CONTROL`).
    pending_mid: Vec<f32>,
    pending_side: Vec<f32>,
}

impl Compressor {
    /// A compressor for `settings` at `sample_rate_hz`; `has_side`: stereo (mid and side).
    pub fn new(sample_rate_hz: u32, settings: &DynamicsSettings, has_side: bool) -> Self {
        let step = 1.0 / f64::from(sample_rate_hz.max(1));
        let mut coeffs = [(0f64, 0f64); 4];
        let mut params = [(0f64, 1f64, 0f64, 1f64); 4];
        for (i, b) in settings.bands.iter().enumerate().take(4) {
            coeffs[i] = (coefficient(b.attack_ms, step), coefficient(b.release_ms, step));
            params[i] = (b.threshold_dbfs, b.ratio, b.knee_db, 10f64.powf(b.makeup_db / 20.0));
        }
        Self {
            bypass: !settings.enabled || settings.bands.iter().all(|b| b.is_neutral()),
            has_side,
            linked: settings.linked,
            feedback: settings.feedback,
            xo_mid: Crossover4::new(settings.crossovers_hz, sample_rate_hz),
            xo_side: Crossover4::new(settings.crossovers_hz, sample_rate_hz),
            coeffs,
            params,
            state: [0.0; 4],
            gain: std::array::from_fn(|b| params[b].3),
            pending_mid: Vec::with_capacity(CONTROL),
            pending_side: Vec::with_capacity(CONTROL),
        }
    }

    /// True when the settings leave the signal untouched (the stage passes samples through).
    pub fn is_bypassed(&self) -> bool {
        self.bypass
    }

    /// Compresses a chunk (`side` empty for mono), appending the result to `mid_out`/`side_out`.
    pub fn process(&mut self, mid: &[f32], side: &[f32], mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        if self.bypass {
            mid_out.extend_from_slice(mid);
            if self.has_side {
                side_out.extend_from_slice(side);
            }
            return;
        }
        let mut i = 0;
        // Complete the block in progress first.
        if !self.pending_mid.is_empty() {
            let take = (CONTROL - self.pending_mid.len()).min(mid.len());
            self.pending_mid.extend_from_slice(&mid[..take]);
            if self.has_side {
                self.pending_side.extend_from_slice(&side[..take]);
            }
            i = take;
            if self.pending_mid.len() < CONTROL {
                return;
            }
            let (m, s) = (std::mem::take(&mut self.pending_mid), std::mem::take(&mut self.pending_side));
            self.block(&m, &s, mid_out, side_out);
            self.pending_mid = m;
            self.pending_side = s;
            self.pending_mid.clear();
            self.pending_side.clear();
        }
        while i + CONTROL <= mid.len() {
            let s = if self.has_side { &side[i..i + CONTROL] } else { &[][..] };
            self.block(&mid[i..i + CONTROL], s, mid_out, side_out);
            i += CONTROL;
        }
        self.pending_mid.extend_from_slice(&mid[i..]);
        if self.has_side {
            self.pending_side.extend_from_slice(&side[i..]);
        }
    }

    /// Compresses what is left of the last (short) control block.
    pub fn finish(&mut self, mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        if self.pending_mid.is_empty() {
            return;
        }
        let (m, s) = (std::mem::take(&mut self.pending_mid), std::mem::take(&mut self.pending_side));
        self.block(&m, &s, mid_out, side_out);
    }

    /// The gain of each band (make-up included) for the detectors' present state.
    #[allow(clippy::needless_range_loop)]
    fn gains_now(&self) -> [f64; 4] {
        let mut next = [1f64; 4];
        for b in 0..4 {
            if self.linked && b > 0 {
                next[b] = next[0];
                continue;
            }
            let (t, r, k, makeup) = self.params[b];
            next[b] = if r > 1.0 {
                10f64.powf(gain_db(10.0 * self.state[b].max(1e-20).log10(), t, r, k) / 20.0) * makeup
            } else {
                makeup
            };
        }
        next
    }

    /// Updates the detectors with one sample's band powers.
    #[inline]
    fn detect(&mut self, powers: [f64; 4]) {
        if self.linked {
            let e = powers.iter().sum::<f64>();
            let (att, rel) = self.coeffs[0];
            let a = if e > self.state[0] { att } else { rel };
            self.state[0] = a * self.state[0] + (1.0 - a) * e;
            return;
        }
        for (b, &e) in powers.iter().enumerate() {
            let (att, rel) = self.coeffs[b];
            let a = if e > self.state[b] { att } else { rel };
            self.state[b] = a * self.state[b] + (1.0 - a) * e;
        }
    }

    /// One control block (at most `CONTROL` samples). The bands are indexed in parallel arrays.
    ///
    /// Feed-forward, the detectors take in the block's input and the gain ramps to what they then
    /// read. Feedback, the gain ramps to what the detectors read at the block's start (they follow
    /// the output, which this block's gain makes), and they then take in the block's output,
    /// before make-up.
    #[allow(clippy::needless_range_loop)]
    fn block(&mut self, mid: &[f32], side: &[f32], mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        let mut bands_m = [[0f64; 4]; CONTROL];
        let mut bands_s = [[0f64; 4]; CONTROL];
        let split_side = self.has_side && !self.linked;
        let at_start = self.feedback.then(|| self.gains_now());
        for (k, &x) in mid.iter().enumerate() {
            let m = self.xo_mid.split(f64::from(x));
            bands_m[k] = m;
            bands_s[k] = if split_side { self.xo_side.split(f64::from(side[k])) } else { [0.0; 4] };
            if !self.feedback {
                self.detect(m.map(|v| v * v));
            }
        }
        let next = at_start.unwrap_or_else(|| self.gains_now());
        let makeup: [f64; 4] = std::array::from_fn(|b| self.params[if self.linked { 0 } else { b }].3.max(1e-12));
        let n = mid.len() as f64;
        for k in 0..mid.len() {
            let frac = (k + 1) as f64 / n;
            let g: [f64; 4] = std::array::from_fn(|b| self.gain[b] + (next[b] - self.gain[b]) * frac);
            if self.feedback {
                self.detect(std::array::from_fn(|b| {
                    let reduced = bands_m[k][b] * g[b] / makeup[b];
                    reduced * reduced
                }));
            }
            mid_out.push(apply_gains(f64::from(mid[k]), &bands_m[k], &g, self.linked) as f32);
            if self.has_side {
                side_out.push(apply_gains(f64::from(side[k]), &bands_s[k], &g, self.linked) as f32);
            }
        }
        self.gain = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::CompressorBand;

    const RATE: u32 = 44_100;

    /// Deterministic white noise at about −20 dBFS rms, with a level that steps every 0.4 s.
    fn stepped_noise(seconds: f64) -> Vec<f32> {
        let n = (seconds * f64::from(RATE)) as usize;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                let step = [0.0, -9.0, -3.0, -14.0, -6.0][(i / (RATE as usize * 2 / 5)) % 5];
                (0.17 * u * 10f64.powf(step / 20.0)) as f32
            })
            .collect()
    }

    fn linked(band: CompressorBand, feedback: bool) -> DynamicsSettings {
        DynamicsSettings {
            enabled: true,
            crossovers_hz: crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ,
            bands: vec![band; 4],
            linked: true,
            feedback,
        }
    }

    /// Levels of 50 ms frames, dB.
    fn frame_levels_db(x: &[f32]) -> Vec<f64> {
        x.chunks_exact(RATE as usize / 20)
            .map(|c| 10.0 * (c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / c.len() as f64).log10())
            .collect()
    }

    #[test]
    fn broadband_compression_only_scales_the_signal_and_leaves_its_phase_alone() {
        let x = stepped_noise(2.0);
        let band = CompressorBand {
            threshold_dbfs: -90.0,
            ratio: 1.3,
            knee_db: 0.0,
            attack_ms: 45.0,
            release_ms: 45.0,
            makeup_db: 6.0,
        };
        let (mut mid, mut side) = (x.clone(), x.iter().map(|v| 0.5 * v).collect::<Vec<f32>>());
        compress(&mut mid, &mut side, RATE, &linked(band, false));
        // Each output sample is its input times a gain that moves only from one 16-sample control
        // block to the next, by a small step: neighbouring samples' ratios agree closely. Rebuilt
        // from the crossover's bands, the output would be an allpass of the input and the ratios
        // would scatter.
        let ratios: Vec<f64> = x
            .iter()
            .zip(&mid)
            .skip(RATE as usize / 10)
            .filter(|(a, _)| a.abs() > 1e-3)
            .map(|(a, b)| f64::from(*b) / f64::from(*a))
            .collect();
        let worst = ratios.windows(2).map(|w| (w[1] / w[0] - 1.0).abs()).fold(0.0, f64::max);
        assert!(worst < 0.01, "output/input ratio jumps by {worst:.4} between neighbouring samples");
        for (s, m) in side.iter().zip(&mid).skip(RATE as usize / 10) {
            assert!((f64::from(*s) - 0.5 * f64::from(*m)).abs() < 1e-5, "side and mid got different gains");
        }
    }

    #[test]
    fn a_feedback_leveller_undoes_a_feed_forward_expander_closer_than_a_feed_forward_one() {
        // Expand: every dB of the 45 ms level moves 1.25 dB (gain 0.25 dB per dB around −25 dB).
        let (slope, median_db, tau_ms) = (0.25, -25.0, 45.0);
        let truth = stepped_noise(4.0);
        let a = (-1.0 / (tau_ms * 1e-3 * f64::from(RATE))).exp();
        let mut env = 0f64;
        let mix: Vec<f32> = truth
            .iter()
            .map(|&v| {
                env = a * env + (1.0 - a) * f64::from(v) * f64::from(v);
                let g_db = slope * (10.0 * env.max(1e-12).log10() - median_db);
                (f64::from(v) * 10f64.powf(g_db / 20.0)) as f32
            })
            .collect();
        let threshold = -100.0;
        // Feedback: gain −0.25 dB per dB of the output's level; feed-forward: the same static
        // curve seen from the input (slope 0.25 / 1.25 per dB of input level).
        let fb = CompressorBand {
            threshold_dbfs: threshold,
            ratio: 1.0 / (1.0 - slope),
            knee_db: 0.0,
            attack_ms: tau_ms,
            release_ms: tau_ms,
            makeup_db: 0.0,
        };
        let ff = CompressorBand { ratio: 1.0 + slope, ..fb.clone() };
        let error_db = |settings: &DynamicsSettings| {
            let (mut mid, mut side) = (mix.clone(), Vec::new());
            compress(&mut mid, &mut side, RATE, settings);
            let d: Vec<f64> =
                frame_levels_db(&mid).iter().zip(frame_levels_db(&truth)).map(|(a, b)| a - b).skip(4).collect();
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt()
        };
        let (e_fb, e_ff) = (error_db(&linked(fb, true)), error_db(&linked(ff, false)));
        let e_mix = {
            let d: Vec<f64> = frame_levels_db(&mix).iter().zip(frame_levels_db(&truth)).map(|(a, b)| a - b).collect();
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt()
        };
        eprintln!("50 ms level error against the truth: mix {e_mix:.3} dB, feed-forward {e_ff:.3}, feedback {e_fb:.3}");
        assert!(e_fb < 0.15 * e_mix, "feedback leaves {e_fb:.3} dB of the mix's {e_mix:.3}");
        assert!(e_fb < e_ff, "feedback {e_fb:.3} dB, feed-forward {e_ff:.3}");
    }
}
