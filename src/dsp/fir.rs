//! Linear-phase FIR filters: design from a magnitude curve, and fast convolution (overlap-add
//! with realfft) that returns output aligned with the input (the filter's latency removed).

use realfft::num_complex::Complex;
use realfft::RealFftPlanner;

/// Filter length for a sample rate: a power of two near 0.37 s, so the frequency resolution
/// (and the lowest frequency the EQ can shape) is the same at every rate.
pub fn fir_len(sample_rate_hz: u32) -> usize {
    let exp = (f64::from(sample_rate_hz) * 0.37).log2().round() as u32;
    1usize << exp.clamp(9, 17)
}

/// Designs a zero-phase (linear-phase after the shift) FIR of `len` taps (a power of two) whose
/// magnitude follows `gain_db(freq_hz)`, by frequency sampling and a Blackman window. The
/// filter's delay is `len / 2` samples.
pub fn design(len: usize, sample_rate_hz: u32, gain_db: impl Fn(f64) -> f64) -> Vec<f32> {
    let mut planner = RealFftPlanner::<f64>::new();
    let inverse = planner.plan_fft_inverse(len);
    let mut spectrum = inverse.make_input_vec();
    let bin_hz = f64::from(sample_rate_hz) / len as f64;
    for (k, c) in spectrum.iter_mut().enumerate() {
        let g = 10f64.powf(gain_db(k as f64 * bin_hz) / 20.0);
        *c = Complex::new(if g.is_finite() { g } else { 1.0 }, 0.0);
    }
    let mut impulse = inverse.make_output_vec();
    if inverse.process(&mut spectrum, &mut impulse).is_err() {
        let mut unit = vec![0f32; len];
        unit[len / 2] = 1.0;
        return unit;
    }
    let half = len / 2;
    (0..len)
        .map(|i| {
            let h = impulse[(i + len - half) % len] / len as f64;
            let w = 0.42 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / len as f64).cos()
                + 0.08 * (4.0 * std::f64::consts::PI * i as f64 / len as f64).cos();
            (h * w) as f32
        })
        .collect()
}

/// A FIR filter prepared for fast convolution.
pub struct FirConvolver {
    taps_len: usize,
    fft_len: usize,
    taps_spectrum: Vec<Complex<f32>>,
}

impl FirConvolver {
    /// Prepares `taps` for overlap-add convolution.
    pub fn new(taps: &[f32]) -> Self {
        let taps_len = taps.len().max(1);
        let fft_len = (taps_len * 4).next_power_of_two().max(1024);
        let mut planner = RealFftPlanner::<f32>::new();
        let fwd = planner.plan_fft_forward(fft_len);
        let mut input = fwd.make_input_vec();
        input[..taps.len()].copy_from_slice(taps);
        let mut taps_spectrum = fwd.make_output_vec();
        if fwd.process(&mut input, &mut taps_spectrum).is_err() {
            taps_spectrum.iter_mut().for_each(|c| *c = Complex::new(1.0, 0.0));
        }
        let scale = 1.0 / fft_len as f32;
        taps_spectrum.iter_mut().for_each(|c| *c *= scale);
        Self { taps_len, fft_len, taps_spectrum }
    }

    /// Convolves `input` and returns `input.len()` samples with the first `delay` samples of the
    /// full convolution dropped (pass `taps.len() / 2` to cancel a linear-phase filter's delay).
    pub fn convolve_aligned(&self, input: &[f32], delay: usize) -> Vec<f32> {
        let n = input.len();
        let mut out = vec![0f32; n];
        let block = self.fft_len - self.taps_len + 1;
        let mut planner = RealFftPlanner::<f32>::new();
        let fwd = planner.plan_fft_forward(self.fft_len);
        let inv = planner.plan_fft_inverse(self.fft_len);
        let mut time = fwd.make_input_vec();
        let mut freq = fwd.make_output_vec();
        let mut scratch_f = fwd.make_scratch_vec();
        let mut scratch_i = inv.make_scratch_vec();
        let mut start = 0;
        while start < n {
            let end = (start + block).min(n);
            time[..end - start].copy_from_slice(&input[start..end]);
            time[end - start..].iter_mut().for_each(|x| *x = 0.0);
            if fwd.process_with_scratch(&mut time, &mut freq, &mut scratch_f).is_err() {
                break;
            }
            for (f, t) in freq.iter_mut().zip(&self.taps_spectrum) {
                *f *= t;
            }
            // The DC and Nyquist bins of a real signal's spectrum must be real.
            if let Some(first) = freq.first_mut() {
                first.im = 0.0;
            }
            if let Some(last) = freq.last_mut() {
                last.im = 0.0;
            }
            if inv.process_with_scratch(&mut freq, &mut time, &mut scratch_i).is_err() {
                break;
            }
            // Full-convolution index of time[j] is start + j; output index is that minus delay.
            let valid = (end - start) + self.taps_len - 1;
            for (j, &y) in time[..valid].iter().enumerate() {
                let idx = start + j;
                if idx >= delay && idx - delay < n {
                    out[idx - delay] += y;
                }
            }
            start = end;
        }
        out
    }
}

/// Magnitude response in dB of `taps` at `freq_hz` (direct DTFT; for tests and reports).
pub fn magnitude_db(taps: &[f32], freq_hz: f64, sample_rate_hz: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq_hz / f64::from(sample_rate_hz);
    let (mut re, mut im) = (0f64, 0f64);
    for (i, &h) in taps.iter().enumerate() {
        let phase = w * i as f64;
        re += f64::from(h) * phase.cos();
        im -= f64::from(h) * phase.sin();
    }
    10.0 * (re * re + im * im).log10()
}
