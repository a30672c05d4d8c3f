//! Multiband compressor: mid and side are each split by an LR4 crossover; each band's detector
//! follows the band's mid signal (RMS, attack/release), and the same gain goes to the band's mid
//! and side so the stereo image stays put. Gain law and detector are the ones the solver
//! simulates ([`crate::solve::dynamics`]).

use crate::dsp::crossover::Crossover4;
use crate::settings::DynamicsSettings;
use crate::solve::dynamics::{coefficient, gain_db};

/// Compresses `mid` and `side` (equal length; `side` may be empty for mono) in place.
pub fn compress(mid: &mut [f32], side: &mut [f32], sample_rate_hz: u32, settings: &DynamicsSettings) {
    if !settings.enabled || settings.bands.iter().all(|b| b.is_neutral()) {
        return;
    }
    let step = 1.0 / f64::from(sample_rate_hz);
    let mut xo_mid = Crossover4::new(settings.crossovers_hz, sample_rate_hz);
    let mut xo_side = Crossover4::new(settings.crossovers_hz, sample_rate_hz);
    let mut coeffs = [(0f64, 0f64); 4];
    let mut params = [(0f64, 1f64, 0f64, 1f64); 4];
    for (i, b) in settings.bands.iter().enumerate().take(4) {
        coeffs[i] = (coefficient(b.attack_ms, step), coefficient(b.release_ms, step));
        params[i] = (b.threshold_dbfs, b.ratio, b.knee_db, 10f64.powf(b.makeup_db / 20.0));
    }
    let mut state = [0f64; 4];
    let mut gain: [f64; 4] = std::array::from_fn(|b| params[b].3);
    let has_side = side.len() == mid.len();
    // The detectors run every sample; the gain law (a log and an exponential per band) runs once
    // per block of CONTROL samples, and the gain ramps linearly across the block: far finer than
    // the shortest attack (5 ms), and several times cheaper.
    const CONTROL: usize = 16;
    let mut bands_m = [[0f64; 4]; CONTROL];
    let mut bands_s = [[0f64; 4]; CONTROL];
    let mut start = 0;
    while start < mid.len() {
        let end = (start + CONTROL).min(mid.len());
        for i in start..end {
            let m = xo_mid.split(f64::from(mid[i]));
            bands_m[i - start] = m;
            bands_s[i - start] = if has_side { xo_side.split(f64::from(side[i])) } else { [0.0; 4] };
            for b in 0..4 {
                let x = m[b] * m[b];
                let (att, rel) = coeffs[b];
                let a = if x > state[b] { att } else { rel };
                state[b] = a * state[b] + (1.0 - a) * x;
            }
        }
        let mut next = [1f64; 4];
        for b in 0..4 {
            let (t, r, k, makeup) = params[b];
            next[b] = if r > 1.0 {
                10f64.powf(gain_db(10.0 * state[b].max(1e-20).log10(), t, r, k) / 20.0) * makeup
            } else {
                makeup
            };
        }
        let n = (end - start) as f64;
        for i in start..end {
            let frac = (i - start + 1) as f64 / n;
            let (mut out_m, mut out_s) = (0f64, 0f64);
            for b in 0..4 {
                let g = gain[b] + (next[b] - gain[b]) * frac;
                out_m += bands_m[i - start][b] * g;
                out_s += bands_s[i - start][b] * g;
            }
            mid[i] = out_m as f32;
            if has_side {
                side[i] = out_s as f32;
            }
        }
        gain = next;
        start = end;
    }
}
