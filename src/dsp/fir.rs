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

/// A linear-phase FIR run as a stream: chunks of any size in, the filtered signal out, aligned
/// with the input (the filter's `delay` dropped from the front, the tail flushed by
/// [`StreamConvolver::finish`]) and as long as the input. Same blocks and the same summation
/// order as [`FirConvolver::convolve_aligned`], so both give the same samples.
pub struct StreamConvolver(ConvolverBank);

impl StreamConvolver {
    /// Prepares `taps`; the output drops the first `delay` samples of the full convolution (pass
    /// `taps.len() / 2` for a linear-phase filter).
    pub fn new(taps: &[f32], delay: usize) -> Self {
        Self(ConvolverBank::new(&[taps], delay))
    }

    /// Filters `input`, appending whatever output is ready to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.0.process(input, std::slice::from_mut(out));
    }

    /// Flushes the filter's tail: after this, `out` has received exactly as many samples as went
    /// in.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        self.0.finish(std::slice::from_mut(out));
    }
}

/// Several FIR filters of one length run as streams on the same input (the bands of a
/// linear-phase split): each block's input is transformed once and every filter's output comes
/// from that one spectrum, so `n` filters cost one forward transform and `n` inverse ones instead
/// of `n` of each. Each output is the same samples a [`StreamConvolver`] of its filter gives.
pub struct ConvolverBank {
    taps_len: usize,
    fft_len: usize,
    /// Each filter's spectrum, scaled by `1 / fft_len`.
    taps_spectra: Vec<Vec<Complex<f32>>>,
    fwd: std::sync::Arc<dyn realfft::RealToComplex<f32>>,
    inv: std::sync::Arc<dyn realfft::ComplexToReal<f32>>,
    time: Vec<f32>,
    /// The block's spectrum, and one filter's product with it.
    spectrum: Vec<Complex<f32>>,
    freq: Vec<Complex<f32>>,
    scratch_f: Vec<Complex<f32>>,
    scratch_i: Vec<Complex<f32>>,
    /// Input of the block in progress.
    pending: Vec<f32>,
    /// Each filter's overlap-add accumulator (`fft_len` long; its head is the next output).
    overlaps: Vec<Vec<f32>>,
    /// Samples still to drop from the front of the full convolution.
    skip: usize,
    taken: usize,
    given: usize,
}

impl ConvolverBank {
    /// Prepares the filters `taps` (all of one length); the outputs drop the first `delay`
    /// samples of the full convolution (pass half the length for linear-phase filters).
    pub fn new(taps: &[&[f32]], delay: usize) -> Self {
        let convs: Vec<FirConvolver> = taps.iter().map(|t| FirConvolver::new(t)).collect();
        let (taps_len, fft_len) = convs.first().map_or((1, 1024), |c| (c.taps_len, c.fft_len));
        debug_assert!(convs.iter().all(|c| c.taps_len == taps_len), "a bank's filters share one length");
        let mut planner = RealFftPlanner::<f32>::new();
        let fwd = planner.plan_fft_forward(fft_len);
        let inv = planner.plan_fft_inverse(fft_len);
        let (time, spectrum, freq) = (fwd.make_input_vec(), fwd.make_output_vec(), fwd.make_output_vec());
        let (scratch_f, scratch_i) = (fwd.make_scratch_vec(), inv.make_scratch_vec());
        let block = fft_len - taps_len + 1;
        Self {
            overlaps: vec![vec![0.0; fft_len]; convs.len()],
            taps_spectra: convs.into_iter().map(|c| c.taps_spectrum).collect(),
            taps_len,
            fft_len,
            pending: Vec::with_capacity(block),
            fwd,
            inv,
            time,
            spectrum,
            freq,
            scratch_f,
            scratch_i,
            skip: delay,
            taken: 0,
            given: 0,
        }
    }

    fn block_len(&self) -> usize {
        self.fft_len - self.taps_len + 1
    }

    /// Filters `input`, appending whatever output is ready to `outs` (one per filter).
    pub fn process(&mut self, input: &[f32], outs: &mut [Vec<f32>]) {
        self.taken += input.len();
        let block = self.block_len();
        let mut rest = input;
        while !rest.is_empty() {
            let take = (block - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == block {
                self.run_block(outs);
            }
        }
    }

    /// Flushes the filters' tails: after this, each output has received exactly as many samples
    /// as went in.
    pub fn finish(&mut self, outs: &mut [Vec<f32>]) {
        let block = self.block_len();
        // The last partial block padded with silence, then silent blocks until the delayed tail
        // is out (a block of zeros transforms to exact zeros: nothing is added but the tail).
        while self.given < self.taken {
            self.pending.resize(block, 0.0);
            self.run_block(outs);
        }
        self.pending.clear();
    }

    fn run_block(&mut self, outs: &mut [Vec<f32>]) {
        let n = self.pending.len();
        self.time[..n].copy_from_slice(&self.pending);
        self.time[n..].iter_mut().for_each(|x| *x = 0.0);
        self.pending.clear();
        if self.fwd.process_with_scratch(&mut self.time, &mut self.spectrum, &mut self.scratch_f).is_err() {
            return;
        }
        let skip = self.skip.min(n);
        self.skip -= skip;
        let emit = (n - skip).min(self.taken - self.given);
        let valid = n + self.taps_len - 1;
        for ((taps, overlap), out) in self.taps_spectra.iter().zip(self.overlaps.iter_mut()).zip(outs.iter_mut()) {
            for ((f, x), t) in self.freq.iter_mut().zip(&self.spectrum).zip(taps) {
                *f = x * t;
            }
            if let Some(first) = self.freq.first_mut() {
                first.im = 0.0;
            }
            if let Some(last) = self.freq.last_mut() {
                last.im = 0.0;
            }
            if self.inv.process_with_scratch(&mut self.freq, &mut self.time, &mut self.scratch_i).is_err() {
                return;
            }
            for (o, y) in overlap.iter_mut().zip(&self.time[..valid]) {
                *o += y;
            }
            // The first `n` accumulated values are complete: no later block reaches them.
            out.extend_from_slice(&overlap[skip..skip + emit]);
            overlap.copy_within(n.., 0);
            let len = overlap.len();
            overlap[len - n..].iter_mut().for_each(|x| *x = 0.0);
        }
        self.given += emit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bank_gives_each_filter_the_samples_its_own_stream_convolver_gives() {
        let rate = 44_100;
        let x: Vec<f32> = (0..60_000u32).map(|i| ((i as f32 * 0.37).sin() + (i as f32 * 0.011).cos()) * 0.3).collect();
        let len = 4096;
        let taps: Vec<Vec<f32>> = [120.0, 1000.0, 5000.0]
            .iter()
            .map(|&fc| design(len, rate, |f| -20.0 * (1.0 + (f / fc).powi(4)).log10()))
            .collect();
        let mut bank = ConvolverBank::new(&[&taps[0], &taps[1], &taps[2]], len / 2);
        let mut outs = vec![Vec::new(); 3];
        for c in x.chunks(4096) {
            bank.process(c, &mut outs);
        }
        bank.finish(&mut outs);
        for (t, got) in taps.iter().zip(&outs) {
            let mut one = StreamConvolver::new(t, len / 2);
            let mut want = Vec::new();
            for c in x.chunks(1000) {
                one.process(c, &mut want);
            }
            one.finish(&mut want);
            assert_eq!(got.len(), x.len());
            assert_eq!(got, &want, "a bank's output differs from its filter's own convolver");
        }
    }
}
