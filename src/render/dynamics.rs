//! Multiband compressor: mid and side are each split by an LR4 crossover; each band's detector
//! follows the band's mid signal (RMS, attack/release), and the same gain goes to the band's mid
//! and side so the stereo image stays put. Linked (broadband) settings run one detector on the
//! sum of the bands' mid powers and give every band band 0's gain. Gain law and detector are the ones the solver
//! simulates ([`crate::solve::dynamics`]).
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

    /// One control block (at most `CONTROL` samples). The bands are indexed in parallel arrays.
    #[allow(clippy::needless_range_loop)]
    fn block(&mut self, mid: &[f32], side: &[f32], mid_out: &mut Vec<f32>, side_out: &mut Vec<f32>) {
        let mut bands_m = [[0f64; 4]; CONTROL];
        let mut bands_s = [[0f64; 4]; CONTROL];
        for (k, &x) in mid.iter().enumerate() {
            let m = self.xo_mid.split(f64::from(x));
            bands_m[k] = m;
            bands_s[k] = if self.has_side { self.xo_side.split(f64::from(side[k])) } else { [0.0; 4] };
            if self.linked {
                let e = m.iter().map(|v| v * v).sum::<f64>();
                let (att, rel) = self.coeffs[0];
                let a = if e > self.state[0] { att } else { rel };
                self.state[0] = a * self.state[0] + (1.0 - a) * e;
                continue;
            }
            for b in 0..4 {
                let e = m[b] * m[b];
                let (att, rel) = self.coeffs[b];
                let a = if e > self.state[b] { att } else { rel };
                self.state[b] = a * self.state[b] + (1.0 - a) * e;
            }
        }
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
        let n = mid.len() as f64;
        for k in 0..mid.len() {
            let frac = (k + 1) as f64 / n;
            let (mut out_m, mut out_s) = (0f64, 0f64);
            for b in 0..4 {
                let g = self.gain[b] + (next[b] - self.gain[b]) * frac;
                out_m += bands_m[k][b] * g;
                out_s += bands_s[k][b] * g;
            }
            mid_out.push(out_m as f32);
            if self.has_side {
                side_out.push(out_s as f32);
            }
        }
        self.gain = next;
    }
}
