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
    let mut w = Welch::new(sample_rate_hz, signals.len(), Some(frames));
    w.push(signals);
    w.finish()
}

/// Welch's method (Hann window, 50 % overlap, [`fft_len`] points) on several signals of equal
/// length pushed chunk by chunk, holding at most one window of each signal.
///
/// The frames start at 0, n/2, n, …; every complete frame is transformed as soon as its samples
/// have arrived, and at the end the first frame not yet transformed is zero-padded and
/// transformed too, unless the last complete frame ended exactly at the end of the signal.
///
/// The FFT length depends on the signal's length when that is shorter than the target window (a
/// power of two near 0.74 s, [`fft_len`]): given the length, it is fixed at once; without it the
/// start of the signals is held back until a target window's worth has arrived (then the length
/// can no longer matter) or until [`Welch::finish`].
pub struct Welch {
    sample_rate_hz: u32,
    /// Frames pushed so far.
    frames: usize,
    /// The FFT and window, once the FFT length is known.
    plan: Option<WelchPlan>,
    /// Per signal, the samples from `next_start` on (fewer than the FFT length once planned).
    pending: Vec<Vec<f32>>,
    /// Absolute frame index of `pending[_][0]`: the start of the next frame.
    next_start: usize,
    /// Absolute frame index where the last transformed frame ended (0 before the first).
    last_end: usize,
    /// Per signal, Σ |X_k|² over the transformed frames.
    acc: Vec<Vec<f64>>,
    /// Frames transformed per signal.
    count: usize,
}

/// The FFT plan, window and buffers of one FFT length.
struct WelchPlan {
    n: usize,
    window: Vec<f32>,
    /// Σ window², for the normalisation.
    w2: f64,
    fft: std::sync::Arc<dyn realfft::RealToComplex<f32>>,
    input: Vec<f32>,
    output: Vec<realfft::num_complex::Complex<f32>>,
    scratch: Vec<realfft::num_complex::Complex<f32>>,
}

impl WelchPlan {
    fn new(n: usize) -> Self {
        let window: Vec<f32> =
            (0..n).map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32).collect();
        let w2 = window.iter().map(|w| f64::from(*w) * f64::from(*w)).sum();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n);
        let (input, output, scratch) = (fft.make_input_vec(), fft.make_output_vec(), fft.make_scratch_vec());
        Self { n, window, w2, fft, input, output, scratch }
    }

    /// Adds |X_k|² of the windowed frame `head ++ tail` (zero-padded to n) to `acc`.
    fn add_frame(&mut self, head: &[f32], tail: &[f32], acc: &mut [f64]) {
        // Head, then tail, then zeros: plain slice loops, which vectorise.
        let h = head.len().min(self.input.len());
        let (input_head, rest) = self.input.split_at_mut(h);
        for ((slot, &x), &w) in input_head.iter_mut().zip(head).zip(&self.window) {
            *slot = x * w;
        }
        let t = tail.len().min(rest.len());
        let (input_tail, zeros) = rest.split_at_mut(t);
        for ((slot, &x), &w) in input_tail.iter_mut().zip(tail).zip(&self.window[h..]) {
            *slot = x * w;
        }
        zeros.fill(0.0);
        // Cannot fail: the buffers were made by this plan.
        if self.fft.process_with_scratch(&mut self.input, &mut self.output, &mut self.scratch).is_ok() {
            for (a, c) in acc.iter_mut().zip(&self.output) {
                *a += f64::from(c.norm_sqr());
            }
        }
    }
}

impl Welch {
    /// Spectra of `signal_count` signals at `sample_rate_hz`; `total_frames` is their length if
    /// known (a wrong length only changes the FFT length of signals shorter than ~0.74 s).
    pub fn new(sample_rate_hz: u32, signal_count: usize, total_frames: Option<usize>) -> Self {
        let mut w = Self {
            sample_rate_hz,
            frames: 0,
            plan: None,
            pending: vec![Vec::new(); signal_count],
            next_start: 0,
            last_end: 0,
            acc: vec![Vec::new(); signal_count],
            count: 0,
        };
        if let Some(total) = total_frames {
            w.plan_fft(fft_len(sample_rate_hz, total));
        }
        w
    }

    fn plan_fft(&mut self, n: usize) {
        self.acc.iter_mut().for_each(|a| *a = vec![0.0; n / 2 + 1]);
        self.plan = Some(WelchPlan::new(n));
    }

    /// Feeds one chunk of every signal (equal lengths, any length).
    ///
    /// # Panics
    /// If `chunk` does not hold one slice per signal, or the slices differ in length.
    pub fn push(&mut self, chunk: &[&[f32]]) {
        let len = chunk.first().map_or(0, |c| c.len());
        assert!(
            chunk.len() == self.pending.len() && chunk.iter().all(|c| c.len() == len),
            "Welch::push: one slice per signal, all of the same length"
        );
        self.frames += len;
        if self.plan.is_none() {
            let target = fft_len(self.sample_rate_hz, usize::MAX);
            if self.frames < target {
                self.pending.iter_mut().zip(chunk).for_each(|(p, c)| p.extend_from_slice(c));
                return;
            }
            self.plan_fft(target);
        }
        let Some(plan) = self.plan.as_mut() else { return };
        let (n, hop) = (plan.n, plan.n / 2);
        let available = self.pending.first().map_or(0, Vec::len) + len;
        let mut offset = 0;
        while offset + n <= available {
            for ((pending, c), acc) in self.pending.iter().zip(chunk).zip(&mut self.acc) {
                let (head, tail) = frame_parts(pending, c, offset, n);
                plan.add_frame(head, tail, acc);
            }
            self.count += 1;
            self.last_end = self.next_start + offset + n;
            offset += hop;
        }
        for (pending, c) in self.pending.iter_mut().zip(chunk) {
            if offset <= pending.len() {
                pending.drain(..offset);
                pending.extend_from_slice(c);
            } else {
                let from = offset - pending.len();
                pending.clear();
                pending.extend_from_slice(&c[from..]);
            }
        }
        self.next_start += offset;
    }

    /// The power spectra of everything pushed (zeros for silence or no audio).
    pub fn finish(mut self) -> Vec<PowerSpectrum> {
        if self.plan.is_none() {
            self.plan_fft(fft_len(self.sample_rate_hz, self.frames));
            // Transforms what was held back (now that the length is known).
            let held = std::mem::replace(&mut self.pending, vec![Vec::new(); self.acc.len()]);
            let planes: Vec<&[f32]> = held.iter().map(Vec::as_slice).collect();
            self.frames -= planes.first().map_or(0, |p| p.len());
            self.push(&planes);
        }
        let Some(mut plan) = self.plan.take() else { return Vec::new() };
        if self.last_end < self.frames && self.next_start < self.frames {
            for (pending, acc) in self.pending.iter().zip(&mut self.acc) {
                plan.add_frame(pending, &[], acc);
            }
            self.count += 1;
        }
        let bins = plan.n / 2 + 1;
        let norm = 1.0 / (plan.n as f64 * plan.w2 * self.count.max(1) as f64);
        let bin_hz = f64::from(self.sample_rate_hz) / plan.n as f64;
        self.acc
            .into_iter()
            .map(|acc| {
                let power = acc
                    .iter()
                    .enumerate()
                    .map(|(k, p)| p * norm * if k == 0 || k == bins - 1 { 1.0 } else { 2.0 })
                    .collect();
                PowerSpectrum { bin_hz, power }
            })
            .collect()
    }
}

/// The frame of `n` samples starting `offset` into `pending ++ chunk`, as the part inside
/// `pending` and the part inside `chunk` (either may be empty).
fn frame_parts<'a>(pending: &'a [f32], chunk: &'a [f32], offset: usize, n: usize) -> (&'a [f32], &'a [f32]) {
    let end = offset + n;
    let head = pending.get(offset.min(pending.len())..end.min(pending.len())).unwrap_or(&[]);
    let tail_start = offset.saturating_sub(pending.len()).min(chunk.len());
    let tail_end = end.saturating_sub(pending.len()).min(chunk.len());
    (head, chunk.get(tail_start..tail_end).unwrap_or(&[]))
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
