//! Inter-sample (true) peak detection by 4× polyphase oversampling.
//!
//! The limiter needs, for every sample, the largest magnitude the reconstructed waveform reaches
//! between it and the next sample. That envelope scales linearly with gain, so it is computed once
//! for the signal entering the limiter and reused for every drive the loudness loop tries.

/// Oversampling factor.
pub const OVERSAMPLING: usize = 4;
/// Taps per polyphase branch.
const TAPS_PER_PHASE: usize = 16;

/// The three fractional-delay branches (1/4, 2/4, 3/4 of a sample) of a Kaiser-windowed sinc
/// interpolator, each `TAPS_PER_PHASE` taps, applied to samples n−7..=n+8.
fn branches() -> [[f32; TAPS_PER_PHASE]; OVERSAMPLING - 1] {
    let beta = 8.0;
    let half = TAPS_PER_PHASE as f64 / 2.0;
    let cutoff = 0.92; // of the original Nyquist: flat to 20 kHz at 44.1 kHz
    let mut out = [[0f32; TAPS_PER_PHASE]; OVERSAMPLING - 1];
    for (p, branch) in out.iter_mut().enumerate() {
        let frac = (p + 1) as f64 / OVERSAMPLING as f64;
        let mut sum = 0.0;
        let mut tmp = [0f64; TAPS_PER_PHASE];
        for (k, t) in tmp.iter_mut().enumerate() {
            // Tap k multiplies sample n + k − 7; its distance from the interpolation point.
            let x = (k as f64 - (half - 1.0)) - frac;
            let sinc = if x.abs() < 1e-12 {
                1.0
            } else {
                (std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            let r = x / half;
            let win = if r.abs() <= 1.0 { bessel_i0(beta * (1.0 - r * r).sqrt()) / bessel_i0(beta) } else { 0.0 };
            *t = sinc * win;
            sum += *t;
        }
        for (b, t) in branch.iter_mut().zip(tmp) {
            *b = (t / sum) as f32;
        }
    }
    out
}

pub(crate) fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    for k in 1..50 {
        term *= (x / (2.0 * k as f64)).powi(2);
        sum += term;
        if term < 1e-12 * sum {
            break;
        }
    }
    sum
}

/// For each frame, the largest |value| over all channels of the sample and of the three
/// interpolated points after it: the true-peak envelope, linear.
pub fn peak_envelope(channels: &[&[f32]]) -> Vec<f32> {
    let n = channels.first().map_or(0, |c| c.len());
    let mut env = vec![0f32; n];
    let br = branches();
    let before = TAPS_PER_PHASE / 2 - 1;
    let mut padded = vec![0f32; n + TAPS_PER_PHASE];
    for ch in channels {
        padded[before..before + n].copy_from_slice(ch);
        for i in 0..n {
            let window = &padded[i..i + TAPS_PER_PHASE];
            let mut m = ch[i].abs();
            for b in &br {
                let v: f32 = window.iter().zip(b).map(|(x, c)| x * c).sum();
                m = m.max(v.abs());
            }
            env[i] = env[i].max(m);
        }
    }
    env
}

/// Largest true peak of `channels` in dBTP (by this module's 4× interpolator).
pub fn true_peak_db(channels: &[&[f32]]) -> f64 {
    let peak = peak_envelope(channels).iter().fold(0f32, |a, &b| a.max(b));
    20.0 * f64::from(peak).log10()
}

/// The level (dB) that the loudest `1 − q` of a true-peak envelope exceeds, taken over blocks of
/// 8 frames (each block's maximum) so one transient counts once; −∞ for an empty envelope. The
/// limiting depth and the saturator's drive are both judged at `q = 0.999`.
pub fn envelope_quantile_db(env: &[f32], q: f64) -> f64 {
    const BLOCK: usize = 8;
    if env.is_empty() {
        return f64::NEG_INFINITY;
    }
    let mut v: Vec<f32> = env.chunks(BLOCK).map(|c| c.iter().fold(0f32, |a, &b| a.max(b))).collect();
    let idx = (((v.len() as f64) * q) as usize).min(v.len() - 1);
    let (_, x, _) = v.select_nth_unstable_by(idx, f32::total_cmp);
    20.0 * f64::from(x.max(1e-10)).log10()
}
