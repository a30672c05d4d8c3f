//! Multiband compressor: each band's detector follows the band's mid signal (RMS, attack/release)
//! from an LR4 crossover, and the same gain goes to the band's mid and side so the stereo image
//! stays put. Linked (broadband) settings run one detector on the sum of the bands' mid powers and
//! apply band 0's gain to the unsplit signal. Feedback settings detect on each band's output
//! instead of its input. Gain law and detector are the ones the solver simulates
//! ([`crate::solve::dynamics`]).
//!
//! The output is never rebuilt from the LR4 bands: they sum to an allpass of the input, not to the
//! input, and a master rebuilt from them turns every transient's phase around the crossovers (the
//! highs land a few milliseconds off the lows, which a spectrogram comparison with the
//! unprocessed song reads as several dB of error frame by frame in the highs). Broadband gains
//! scale the signal itself. Multiband gains go to a linear-phase split ([`LinearPhaseSplit`]) whose
//! bands have the LR4 bands' magnitudes and sum back to the input exactly: bands with equal gains
//! give the input back, sample for sample, and unequal gains shape the spectrum without turning
//! its phase.
//!
//! It runs as a stream ([`Compressor`]): the song passes through in chunks of any size and the
//! output does not depend on where the chunks are cut. The split is most of the work and needs
//! only the input and the gains, so a chain may run it on another thread than the detectors
//! ([`Compressor::detach_split`], [`Compressor::detect`], [`LinearPhaseSplit::process`]): the same
//! samples either way.

use crate::dsp::crossover::Crossover4;
use crate::dsp::fir::{design, ConvolverBank};
use crate::settings::DynamicsSettings;
use crate::solve::dynamics::{coefficient, gain_db};

/// The detectors run every sample; the gain law (a log and an exponential per band) runs once per
/// block of `CONTROL` samples, and the gain ramps linearly across the block: far finer than the
/// shortest attack (5 ms), and several times cheaper.
const CONTROL: usize = 16;

/// Zero-phase magnitude, dB, of an LR4 low-pass at `crossover_hz`: 1 / (1 + (f/fc)⁴). The LR4
/// high-pass's is (f/fc)⁴ / (1 + (f/fc)⁴): the two add up to exactly one, so a linear-phase
/// low-pass of this magnitude and the input minus it split the signal as the LR4 pair does, with
/// nothing lost.
fn lr4_lowpass_db(freq_hz: f64, crossover_hz: f64) -> f64 {
    -20.0 * (1.0 + (freq_hz / crossover_hz.max(1.0)).powi(4)).log10()
}

/// Taps of the split's low-passes: ten periods of the lowest crossover (an LR4's impulse response
/// has decayed by some 60 dB after three), a power of two.
fn split_len(sample_rate_hz: u32, lowest_crossover_hz: f64) -> usize {
    let want = f64::from(sample_rate_hz) * 10.0 / lowest_crossover_hz.max(10.0);
    (want.ceil() as usize).next_power_of_two().clamp(256, 1 << 16)
}

/// Linear-phase four-band split of the multiband output. Three linear-phase low-passes with the
/// LR4 magnitudes at the crossovers give the bands as differences (low = LP₁, LP₂ − LP₁,
/// LP₃ − LP₂, x − LP₃), so the bands' sum is the input, delayed by the filters' half length, which
/// the stream holds back and drops (the stage's latency). The output under band gains g is
/// `g₃·x + (g₀ − g₁)·LP₁ + (g₁ − g₂)·LP₂ + (g₂ − g₃)·LP₃`.
///
/// It is most of the multiband compressor's work and needs only the input and the gains, so a
/// chain may run it on another thread than the detectors ([`Compressor::detach_split`]).
pub struct LinearPhaseSplit {
    /// The three low-passes, per plane (mid, then side): one bank, so each block of a plane is
    /// transformed once for all three.
    lowpass: Vec<ConvolverBank>,
    /// Low-pass output not yet combined, per plane and crossover.
    low: Vec<[Vec<f32>; 3]>,
    /// Input not yet combined, per plane.
    input: Vec<Vec<f32>>,
    /// The band gains (make-up included) of the samples not yet combined, as the weights of the
    /// output's four terms: `[g₃, g₀ − g₁, g₁ − g₂, g₂ − g₃]`, one plane each (so the combination
    /// runs down plain slices).
    weights: [Vec<f32>; 4],
    latency: usize,
}

impl LinearPhaseSplit {
    fn new(crossovers_hz: [f64; 3], sample_rate_hz: u32, planes: usize) -> Self {
        let lowest = crossovers_hz.iter().copied().fold(f64::INFINITY, f64::min);
        let len = split_len(sample_rate_hz, lowest);
        let taps: Vec<Vec<f32>> =
            crossovers_hz.iter().map(|&fc| design(len, sample_rate_hz, |f| lr4_lowpass_db(f, fc))).collect();
        Self {
            lowpass: (0..planes).map(|_| ConvolverBank::new(&[&taps[0], &taps[1], &taps[2]], len / 2)).collect(),
            low: (0..planes).map(|_| std::array::from_fn(|_| Vec::new())).collect(),
            input: vec![Vec::new(); planes],
            weights: std::array::from_fn(|_| Vec::new()),
            latency: len / 2,
        }
    }

    /// Takes in a chunk of the input planes (mid, and side for stereo).
    fn take_in(&mut self, planes: &[&[f32]]) {
        for (p, x) in planes.iter().enumerate().take(self.input.len()) {
            self.input[p].extend_from_slice(x);
            self.lowpass[p].process(x, &mut self.low[p]);
        }
    }

    /// Frames the split holds back: its low-passes' linear-phase delay.
    pub fn latency_frames(&self) -> usize {
        self.latency
    }

    /// Takes in a chunk of the detached compressor's output ([`Compressor::detect`]): the input
    /// planes, then the four weight planes. Appends to `mid_out`/`side_out` what is ready.
    pub fn process(&mut self, input: &[&[f32]], mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        let planes = self.input.len();
        if input.len() < planes + 4 {
            return;
        }
        self.take_in(&input[..planes]);
        for (w, x) in self.weights.iter_mut().zip(&input[planes..]) {
            w.extend_from_slice(x);
        }
        self.emit(mid_out, side_out);
    }

    /// Appends what the split still holds: after this it has handed on as many frames as it
    /// took in.
    pub fn finish(&mut self, mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        self.flush();
        self.emit(mid_out, side_out);
    }

    /// Flushes the low-passes' tails.
    fn flush(&mut self) {
        for (bank, outs) in self.lowpass.iter_mut().zip(self.low.iter_mut()) {
            bank.finish(outs);
        }
    }

    /// Appends every sample whose low-passes and gains are both ready.
    fn emit(&mut self, mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        let ready = self.low.iter().flatten().map(Vec::len).chain([self.weights[0].len()]).min().unwrap_or(0);
        if ready == 0 {
            return;
        }
        let [w3, w0, w1, w2] = self.weights.each_ref().map(|w| &w[..ready]);
        for (p, out) in [mid_out, side_out].into_iter().enumerate().take(self.input.len()) {
            let [l1, l2, l3] = self.low[p].each_ref().map(|l| &l[..ready]);
            let x = &self.input[p][..ready];
            let at = out.len();
            out.resize(at + ready, 0.0);
            let out = &mut out[at..];
            for i in 0..ready {
                out[i] = w3[i] * x[i] + w0[i] * l1[i] + w1[i] * l2[i] + w2[i] * l3[i];
            }
        }
        for p in 0..self.input.len() {
            self.input[p].drain(..ready);
            self.low[p].iter_mut().for_each(|l| {
                l.drain(..ready);
            });
        }
        self.weights.iter_mut().for_each(|w| {
            w.drain(..ready);
        });
    }
}

/// Appends the band gains of `n` samples (`gains[b][k]`, band `b`, sample `k`) to `weights` as
/// the split's weights ([`LinearPhaseSplit`]'s `[g₃, g₀ − g₁, g₁ − g₂, g₂ − g₃]`).
fn push_weights(weights: &mut [Vec<f32>; 4], gains: &[[f32; CONTROL]; 4], n: usize) {
    let [g0, g1, g2, g3] = gains.each_ref().map(|g| &g[..n]);
    let [w3, w0, w1, w2] = weights;
    w3.extend_from_slice(g3);
    w0.extend(g0.iter().zip(g1).map(|(a, b)| a - b));
    w1.extend(g1.iter().zip(g2).map(|(a, b)| a - b));
    w2.extend(g2.iter().zip(g3).map(|(a, b)| a - b));
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
    /// The detectors' band split (the output never uses it: see the module's doc).
    xo_mid: Crossover4,
    /// The multiband output's split (`None` when linked, bypassed or detached).
    split: Option<LinearPhaseSplit>,
    /// Weights for the split computed and not yet handed to it (or, detached, on).
    weights: [Vec<f32>; 4],
    /// Detached: the input planes not yet handed on with their weights.
    held: Vec<Vec<f32>>,
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
        let bypass = !settings.enabled || settings.bands.iter().all(|b| b.is_neutral());
        let planes = if has_side { 2 } else { 1 };
        Self {
            bypass,
            has_side,
            linked: settings.linked,
            feedback: settings.feedback,
            xo_mid: Crossover4::new(settings.crossovers_hz, sample_rate_hz),
            split: (!bypass && !settings.linked)
                .then(|| LinearPhaseSplit::new(settings.crossovers_hz, sample_rate_hz, planes)),
            weights: std::array::from_fn(|_| Vec::new()),
            held: vec![Vec::new(); planes],
            coeffs,
            params,
            state: [0.0; 4],
            gain: std::array::from_fn(|b| params[b].3),
            pending_mid: Vec::with_capacity(CONTROL),
            pending_side: Vec::with_capacity(CONTROL),
        }
    }

    /// Per-band gains rather than one (neither linked nor bypassed): they go to the split.
    fn multiband(&self) -> bool {
        !self.bypass && !self.linked
    }

    /// True when the settings leave the signal untouched (the stage passes samples through).
    pub fn is_bypassed(&self) -> bool {
        self.bypass
    }

    /// Frames the compressor holds back (the multiband split's linear-phase delay; none when
    /// broadband or bypassed). The output stays aligned with the input.
    pub fn latency_frames(&self) -> usize {
        self.split.as_ref().map_or(0, |s| s.latency)
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
        if let Some(split) = self.split.as_mut() {
            split.take_in(&[mid, side]);
        }
        self.run_blocks(mid, side, mid_out, side_out);
        self.emit(mid_out, side_out);
    }

    /// Takes the multiband split out of the compressor, to run on another thread: the compressor
    /// then only detects ([`Self::detect`]) and the split applies its gains
    /// ([`LinearPhaseSplit::process`]), the same samples as the two together. `None` (and the
    /// compressor unchanged) when there is no split: broadband, bypassed, or already detached.
    pub fn detach_split(&mut self) -> Option<LinearPhaseSplit> {
        self.split.take()
    }

    /// A detached compressor's half ([`Self::detach_split`]): takes in a chunk of `input` (mid,
    /// and side for stereo) and appends to `out` the input planes, then the four weight planes,
    /// for every frame whose gains are known (whole control blocks).
    pub fn detect(&mut self, input: &[&[f32]], out: &mut [Vec<f32>]) {
        let Some(&mid) = input.first() else { return };
        let side = input.get(1).copied().unwrap_or(&[]);
        for (h, x) in self.held.iter_mut().zip(input) {
            h.extend_from_slice(x);
        }
        // Multiband, the detectors write no samples (empty vectors do not allocate).
        self.run_blocks(mid, side, &mut Vec::new(), &mut Vec::new());
        self.hand_on_detected(out);
    }

    /// Flushes a detached compressor: [`Self::detect`] for the last (short) control block.
    pub fn finish_detect(&mut self, out: &mut [Vec<f32>]) {
        self.flush_block(&mut Vec::new(), &mut Vec::new());
        self.hand_on_detected(out);
    }

    fn hand_on_detected(&mut self, out: &mut [Vec<f32>]) {
        let n = self.weights[0].len();
        let planes = self.held.len();
        for (o, h) in out.iter_mut().zip(self.held.iter_mut()) {
            o.extend_from_slice(&h[..n]);
            h.drain(..n);
        }
        for (o, w) in out.iter_mut().skip(planes).zip(self.weights.iter_mut()) {
            o.extend_from_slice(w);
            w.clear();
        }
    }

    /// Runs the detectors over a chunk, control block by control block (the block in progress
    /// first, the rest of the chunk kept for the next): broadband, the scaled samples go to
    /// `mid_out`/`side_out`; multiband, the gains go to [`Self::weights`].
    fn run_blocks(&mut self, mid: &[f32], side: &[f32], mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
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
            self.flush_block(mid_out, side_out);
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

    /// Runs the block in progress, however short, and empties it.
    fn flush_block(&mut self, mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        if self.pending_mid.is_empty() {
            return;
        }
        let (m, s) = (std::mem::take(&mut self.pending_mid), std::mem::take(&mut self.pending_side));
        self.block(&m, &s, mid_out, side_out);
        self.pending_mid = m;
        self.pending_side = s;
        self.pending_mid.clear();
        self.pending_side.clear();
    }

    /// Hands the gains computed so far to the multiband split and on what it has ready
    /// (nothing to do when broadband).
    fn emit(&mut self, mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        if let Some(split) = self.split.as_mut() {
            for (w, x) in split.weights.iter_mut().zip(self.weights.iter_mut()) {
                w.extend_from_slice(x);
                x.clear();
            }
            split.emit(mid_out, side_out);
        }
    }

    /// Compresses what is left of the last (short) control block.
    pub fn finish(&mut self, mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        self.flush_block(mid_out, side_out);
        if let Some(split) = self.split.as_mut() {
            split.flush();
        }
        self.emit(mid_out, side_out);
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

    /// Updates the detectors `state` with one sample's band powers.
    #[inline(always)]
    fn follow(&self, state: &mut [f64; 4], powers: [f64; 4]) {
        if self.linked {
            let e = powers.iter().sum::<f64>();
            let (att, rel) = self.coeffs[0];
            let a = if e > state[0] { att } else { rel };
            state[0] = a * state[0] + (1.0 - a) * e;
            return;
        }
        // Both candidates, then a select: the coefficient chosen by a comparison would put a
        // load on the chain that runs from one sample's state to the next.
        for ((s, &e), &(att, rel)) in state.iter_mut().zip(&powers).zip(&self.coeffs) {
            let rising = att * *s + (1.0 - att) * e;
            let falling = rel * *s + (1.0 - rel) * e;
            *s = if e > *s { rising } else { falling };
        }
    }

    /// One control block (at most `CONTROL` samples). The bands are indexed in parallel arrays.
    ///
    /// Feed-forward, the detectors take in the block's input and the gain ramps to what they then
    /// read. Feedback, the gain ramps to what the detectors read at the block's start (they follow
    /// the output, which this block's gain makes), and they then take in the block's output,
    /// before make-up. Broadband, the gain scales the block and it is handed on; multiband, the
    /// gains go to the linear-phase split, which hands on the samples when its filters have them.
    #[allow(clippy::needless_range_loop)]
    fn block(&mut self, mid: &[f32], side: &[f32], mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        let mut bands_m = [[0f64; 4]; CONTROL];
        let at_start = self.feedback.then(|| self.gains_now());
        self.xo_mid.split_each(mid, |k, m| bands_m[k] = m);
        // The detectors' state stays in registers across the block.
        let mut state = self.state;
        if !self.feedback {
            for m in &bands_m[..mid.len()] {
                self.follow(&mut state, m.map(|v| v * v));
            }
        }
        // Feed-forward, the gain is read off the state the block left.
        self.state = state;
        let next = at_start.unwrap_or_else(|| self.gains_now());
        let makeup: [f64; 4] = std::array::from_fn(|b| self.params[if self.linked { 0 } else { b }].3.max(1e-12));
        let n = mid.len() as f64;
        // The block's gains, band by band, for the multiband split.
        let mut gains = [[0f32; CONTROL]; 4];
        let multiband = self.multiband();
        for k in 0..mid.len() {
            let frac = (k + 1) as f64 / n;
            let g: [f64; 4] = std::array::from_fn(|b| self.gain[b] + (next[b] - self.gain[b]) * frac);
            if self.feedback {
                self.follow(
                    &mut state,
                    std::array::from_fn(|b| {
                        let reduced = bands_m[k][b] * g[b] / makeup[b];
                        reduced * reduced
                    }),
                );
            }
            if multiband {
                for (band, v) in gains.iter_mut().zip(g) {
                    band[k] = v as f32;
                }
            } else {
                mid_out.push((f64::from(mid[k]) * g[0]) as f32);
                if self.has_side {
                    side_out.push((f64::from(side[k]) * g[0]) as f32);
                }
            }
        }
        // Feedback, the detectors followed the block's output just above.
        self.state = state;
        if multiband {
            push_weights(&mut self.weights, &gains, mid.len());
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

    /// Multiband settings whose bands never compress (threshold far above the signal) but apply
    /// their make-up: static band gains, dB.
    fn static_bands(makeup_db: [f64; 4]) -> DynamicsSettings {
        DynamicsSettings {
            enabled: true,
            crossovers_hz: crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ,
            bands: makeup_db
                .iter()
                .map(|&m| CompressorBand {
                    threshold_dbfs: 0.0,
                    ratio: 2.0,
                    knee_db: 6.0,
                    attack_ms: 10.0,
                    release_ms: 100.0,
                    makeup_db: m,
                })
                .collect(),
            linked: false,
            feedback: false,
        }
    }

    #[test]
    fn multiband_gains_are_linear_phase_an_impulse_comes_out_symmetric_where_it_went_in() {
        // Bands 0, −3, +3, +6 dB: the output is the input through a zero-phase filter (its delay
        // is held back), so an impulse's response is symmetric about the impulse. An output rebuilt
        // from LR4 bands would be causal and phase-turned: one-sided about the impulse.
        let n = 60_000;
        let at = n / 2;
        let mut mid = vec![0f32; n];
        mid[at] = 0.01;
        let mut side = mid.clone();
        compress(&mut mid, &mut side, RATE, &static_bands([0.0, -3.0, 3.0, 6.0]));
        let peak = mid.iter().enumerate().fold((0, 0f32), |b, (i, &v)| if v.abs() > b.1.abs() { (i, v) } else { b });
        assert_eq!(peak.0, at, "the impulse moved from {at} to {}", peak.0);
        let energy: f64 = mid.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let asym: f64 = (1..at).map(|k| f64::from(mid[at + k] - mid[at - k]).powi(2)).sum();
        assert!(asym < 1e-8 * energy, "asymmetric energy {:.3e} of {energy:.3e}", asym);
        // Side gets the mid's band gains.
        for (s, m) in side.iter().zip(&mid) {
            assert!((s - m).abs() < 1e-7, "side and mid got different band gains");
        }
    }

    #[test]
    fn multiband_bands_with_equal_gains_give_the_input_back_sample_for_sample() {
        let x = stepped_noise(1.0);
        let (mut mid, mut side) = (x.clone(), x.iter().map(|v| -0.3 * v).collect::<Vec<f32>>());
        let side_in = side.clone();
        compress(&mut mid, &mut side, RATE, &static_bands([2.0; 4]));
        let g = 10f32.powf(2.0 / 20.0);
        assert_eq!(mid.len(), x.len());
        for ((&y, &v), (&ys, &vs)) in mid.iter().zip(&x).zip(side.iter().zip(&side_in)) {
            assert!((y - g * v).abs() < 1e-5 * 0.17 * g, "mid {y} against {}", g * v);
            assert!((ys - g * vs).abs() < 1e-5 * 0.17 * g, "side {ys} against {}", g * vs);
        }
    }

    #[test]
    fn multiband_output_does_not_depend_on_where_the_chunks_are_cut() {
        let x = stepped_noise(1.5);
        let band = |ratio: f64, makeup_db: f64| CompressorBand {
            threshold_dbfs: -40.0,
            ratio,
            knee_db: 6.0,
            attack_ms: 5.0,
            release_ms: 60.0,
            makeup_db,
        };
        let settings = DynamicsSettings {
            bands: vec![band(1.5, 1.0), band(2.0, 3.0), band(1.2, 0.5), band(3.0, 4.0)],
            ..static_bands([0.0; 4])
        };
        let whole = {
            let (mut m, mut s) = (x.clone(), x.clone());
            compress(&mut m, &mut s, RATE, &settings);
            m
        };
        for chunk in [1usize, 777, 4096] {
            let mut c = Compressor::new(RATE, &settings, true);
            let (mut m, mut s) = (Vec::new(), Vec::new());
            for part in x.chunks(chunk) {
                c.process(part, part, &mut m, &mut s);
            }
            c.finish(&mut m, &mut s);
            assert_eq!(m, whole, "chunks of {chunk} gave a different output");
        }
    }
}
