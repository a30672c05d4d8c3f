//! Long-term average spectrum of mid and side on a fixed log-frequency grid.
//!
//! Welch's method (Hann window, 50 % overlap) with a window of about 0.74 s at any sample rate,
//! then integrated exactly into 1/6-octave bands from 20 Hz to 20 kHz. Because the grid is fixed
//! in Hz, a 48 kHz reference compares with a 44.1 kHz mix band by band.
//!
//! Levels are band power in dB relative to a full-scale sine (a 1 kHz sine at −20 dBFS reads
//! −20 dB in the 1 kHz band); pink noise therefore reads flat.

use realfft::RealFftPlanner;

/// Bands per octave of the analysis grid.
pub const BANDS_PER_OCTAVE: f64 = 6.0;
/// Number of bands: centres 20 Hz · 2^(k/6), k = 0..=60 (20 Hz to 20.5 kHz).
pub const BAND_COUNT: usize = 61;
/// Lowest band centre in Hz.
pub const LOWEST_BAND_HZ: f64 = 20.0;
/// Level written for bands without energy (and above Nyquist), in dB.
pub const FLOOR_DB: f64 = -150.0;

/// Centre frequencies of the grid in Hz.
pub fn grid_hz() -> Vec<f64> {
    (0..BAND_COUNT).map(|k| LOWEST_BAND_HZ * 2f64.powf(k as f64 / BANDS_PER_OCTAVE)).collect()
}

/// Lower and upper edge of the band centred at `centre_hz`, in Hz.
pub fn band_edges_hz(centre_hz: f64) -> (f64, f64) {
    let half = 2f64.powf(0.5 / BANDS_PER_OCTAVE);
    (centre_hz / half, centre_hz * half)
}

/// One-sided power spectrum (mean-square contribution per FFT bin), averaged over the signal.
#[derive(Debug, Clone)]
pub struct PowerSpectrum {
    /// Bin spacing in Hz.
    pub bin_hz: f64,
    /// Mean-square power in each bin; summing all bins gives the signal's mean square.
    pub power: Vec<f64>,
}

/// FFT length used for a sample rate: a power of two near 0.74 s, shortened for short signals.
pub fn fft_len(sample_rate_hz: u32, frames: usize) -> usize {
    let target = (f64::from(sample_rate_hz) * 0.74).log2().round() as u32;
    let mut n = 1usize << target.clamp(8, 18);
    while n > 256 && n > frames {
        n /= 2;
    }
    n
}

/// Welch power spectra of several signals of equal length at once (sharing the FFT plan).
pub fn welch(signals: &[&[f32]], sample_rate_hz: u32) -> Vec<PowerSpectrum> {
    let frames = signals.first().map_or(0, |s| s.len());
    let n = fft_len(sample_rate_hz, frames);
    let hop = n / 2;
    let window: Vec<f32> =
        (0..n).map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32).collect();
    let w2: f64 = window.iter().map(|w| f64::from(*w) * f64::from(*w)).sum();
    let mut planner = RealFftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(n);
    let mut input = fft.make_input_vec();
    let mut output = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let bins = n / 2 + 1;
    let mut result = Vec::with_capacity(signals.len());
    for signal in signals {
        let mut acc = vec![0f64; bins];
        let mut count = 0usize;
        let mut start = 0usize;
        loop {
            let end = (start + n).min(signal.len());
            if start >= end {
                break;
            }
            for (i, slot) in input.iter_mut().enumerate() {
                *slot = signal.get(start + i).map_or(0.0, |x| x * window[i]);
            }
            if fft.process_with_scratch(&mut input, &mut output, &mut scratch).is_err() {
                break;
            }
            for (a, c) in acc.iter_mut().zip(&output) {
                *a += f64::from(c.norm_sqr());
            }
            count += 1;
            if end == signal.len() {
                break;
            }
            start += hop;
        }
        let norm = 1.0 / (n as f64 * w2 * count.max(1) as f64);
        let power =
            acc.iter().enumerate().map(|(k, p)| p * norm * if k == 0 || k == bins - 1 { 1.0 } else { 2.0 }).collect();
        result.push(PowerSpectrum { bin_hz: f64::from(sample_rate_hz) / n as f64, power });
    }
    result
}

/// Integrates a power spectrum into the fixed grid: each bin covers ±half a bin around its
/// centre and contributes in proportion to its overlap with a band. Returns dB re full-scale sine.
pub fn band_levels_db(spectrum: &PowerSpectrum, grid: &[f64]) -> Vec<f64> {
    let df = spectrum.bin_hz;
    let last = spectrum.power.len().saturating_sub(1);
    let nyquist = df * last as f64;
    grid.iter()
        .map(|&fc| {
            let (lo, hi) = band_edges_hz(fc);
            if lo >= nyquist {
                return FLOOR_DB;
            }
            let first_bin = ((lo / df) - 0.5).floor().max(0.0) as usize;
            let last_bin = (((hi / df) + 0.5).ceil() as usize).min(last);
            let mut sum = 0.0;
            for k in first_bin..=last_bin {
                let b_lo = (k as f64 - 0.5) * df;
                let b_hi = (k as f64 + 0.5) * df;
                let overlap = (b_hi.min(hi) - b_lo.max(lo)).max(0.0);
                sum += spectrum.power[k] * overlap / df;
            }
            power_to_db(sum)
        })
        .collect()
}

/// Mean-square power to dB relative to a full-scale sine (whose mean square is 1/2).
pub fn power_to_db(mean_square: f64) -> f64 {
    if mean_square > 0.0 {
        (10.0 * (2.0 * mean_square).log10()).max(FLOOR_DB)
    } else {
        FLOOR_DB
    }
}

/// Frequency in Hz above which a spectrum has no content: the upper edge of the highest band
/// within 60 dB of the loudest band between 200 Hz and 8 kHz. Lossy encoders cut off at 15–19 kHz
/// and leave nothing above, natural roll-off stays well inside 60 dB.
pub fn content_cutoff_hz(grid: &[f64], levels_db: &[f64], nyquist_hz: f64) -> f64 {
    let reference = grid
        .iter()
        .zip(levels_db)
        .filter(|(f, _)| (200.0..=8000.0).contains(*f))
        .map(|(_, l)| *l)
        .fold(FLOOR_DB, f64::max);
    let threshold = reference - 60.0;
    let top = grid
        .iter()
        .zip(levels_db)
        .filter(|(_, l)| **l > threshold && reference > FLOOR_DB)
        .map(|(f, _)| band_edges_hz(*f).1)
        .fold(0.0, f64::max);
    top.min(nyquist_hz)
}
