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
    let has_side = side.len() == mid.len();
    for i in 0..mid.len() {
        let m = xo_mid.split(f64::from(mid[i]));
        let s = if has_side { xo_side.split(f64::from(side[i])) } else { [0.0; 4] };
        let (mut out_m, mut out_s) = (0f64, 0f64);
        for b in 0..4 {
            let x = m[b] * m[b];
            let (att, rel) = coeffs[b];
            let a = if x > state[b] { att } else { rel };
            state[b] = a * state[b] + (1.0 - a) * x;
            let (t, r, k, makeup) = params[b];
            let g = if r > 1.0 {
                10f64.powf(gain_db(10.0 * state[b].max(1e-20).log10(), t, r, k) / 20.0) * makeup
            } else {
                makeup
            };
            out_m += m[b] * g;
            out_s += s[b] * g;
        }
        mid[i] = out_m as f32;
        if has_side {
            side[i] = out_s as f32;
        }
    }
}
