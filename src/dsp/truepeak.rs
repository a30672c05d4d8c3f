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

/// Taps per branch of the precise detector ([`TruePeakDetector`]).
pub const PRECISE_TAPS: usize = 48;
/// Frames of context each side of a sample that the precise detector's interpolation weighs.
pub const PRECISE_REACH: usize = PRECISE_TAPS / 2 + 1;

/// The three fractional-delay branches (1/4, 2/4, 3/4 of a sample) of the precise detector: a
/// Kaiser-windowed (β = 7) sinc cut off at the original Nyquist frequency, `PRECISE_TAPS` taps
/// applied to samples n − 23 ..= n + 24. Cut at Nyquist (not below it, as a BS.1770 meter's short
/// filter is), so full-band content right up to Nyquist (squares, clipped masters, sweeps) is
/// interpolated rather than filtered away before its peaks are read.
fn precise_branches() -> [[f32; PRECISE_TAPS]; OVERSAMPLING - 1] {
    let beta = 7.0;
    let half = PRECISE_TAPS as f64 / 2.0;
    let mut out = [[0f32; PRECISE_TAPS]; OVERSAMPLING - 1];
    for (p, branch) in out.iter_mut().enumerate() {
        let frac = (p + 1) as f64 / OVERSAMPLING as f64;
        let mut taps = [0f64; PRECISE_TAPS];
        for (k, t) in taps.iter_mut().enumerate() {
            let x = (k as f64 - (half - 1.0)) - frac;
            let sinc = (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x);
            let r = x / half;
            let win = if r.abs() <= 1.0 { bessel_i0(beta * (1.0 - r * r).sqrt()) / bessel_i0(beta) } else { 0.0 };
            *t = sinc * win;
        }
        // Unity gain at DC: the truncated sinc's branches sum to a little over 1.
        let sum: f64 = taps.iter().sum();
        for (b, t) in branch.iter_mut().zip(taps) {
            *b = (t / sum) as f32;
        }
    }
    out
}

/// Dot product of two `PRECISE_TAPS`-long arrays in eight independent lanes (vectorises; fixed
/// summation order, so deterministic).
#[inline]
fn dot_taps(a: &[f32], b: &[f32; PRECISE_TAPS]) -> f32 {
    let a = &a[..PRECISE_TAPS];
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// The peak of the parabola through three equally spaced values whose middle one is the largest
/// in magnitude (a closer reading of a maximum that falls between oversampled points: a 4×
/// grid alone under-reads a tone near Nyquist by up to 0.7 dB).
#[inline]
fn parabola_peak(y0: f32, y1: f32, y2: f32) -> f32 {
    let (a0, a1, a2) = (y0.abs(), y1.abs(), y2.abs());
    if a1 < a0 || a1 < a2 {
        return a1;
    }
    let curvature = y0 - 2.0 * y1 + y2;
    if curvature == 0.0 || (y0 * y1 < 0.0) || (y1 * y2 < 0.0) {
        return a1;
    }
    let p = y1 - (y0 - y2) * (y0 - y2) / (8.0 * curvature);
    p.abs().max(a1).min(a1 * 1.5)
}

/// A true-peak detector written for refmaster's ceiling: 4× polyphase oversampling with a
/// 48-tap-per-branch interpolator cut at Nyquist, and a parabolic reading of each maximum
/// between the oversampled points. On the adversarial ceiling signals (clipped noise, squares,
/// impulses, sweeps to Nyquist, after mastering) it reads within 0.1 dB under a 16×,
/// 64-tap-per-branch meter (and never lower than ffmpeg's `ebur128=peak=true`, whose short
/// filter rolls off below Nyquist): see `tests/ceiling.rs`.
///
/// Per frame `n` it reports the largest magnitude of the reconstructed waveform from the
/// sample `n` to just before `n + 1`; the signal is taken as silent before its first sample
/// and after its last, so the overshoot of a file that starts or ends loud is counted too.
#[derive(Debug, Clone)]
pub struct PeakInterpolator {
    branches: [[f32; PRECISE_TAPS]; OVERSAMPLING - 1],
}

impl Default for PeakInterpolator {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakInterpolator {
    /// The interpolator (filter designed once).
    pub fn new() -> Self {
        Self { branches: precise_branches() }
    }

    /// The three interpolated points between `ctx[i]` and `ctx[i + 1]`; `ctx` must hold
    /// `PRECISE_TAPS / 2 − 1` samples before `i` and `PRECISE_TAPS / 2` after it.
    #[inline]
    fn points(&self, ctx: &[f32], i: usize) -> [f32; 3] {
        let w = &ctx[i + 1 - PRECISE_TAPS / 2..];
        [dot_taps(w, &self.branches[0]), dot_taps(w, &self.branches[1]), dot_taps(w, &self.branches[2])]
    }

    /// Writes the true peak (linear) of frames `first .. first + out.len()` of `ctx` into `out`,
    /// where `ctx` holds at least [`PRECISE_REACH`] samples of context before `first` and after
    /// the last frame (zeros where the signal has none).
    pub fn frame_peaks(&self, ctx: &[f32], first: usize, out: &mut [f32]) {
        if out.is_empty() {
            return;
        }
        let mut prev = self.points(ctx, first - 1)[2];
        for (k, o) in out.iter_mut().enumerate() {
            let i = first + k;
            let [p1, p2, p3] = self.points(ctx, i);
            let (x0, x1) = (ctx[i], ctx[i + 1]);
            let mut m = x0.abs().max(p1.abs()).max(p2.abs()).max(p3.abs());
            m = m
                .max(parabola_peak(prev, x0, p1))
                .max(parabola_peak(x0, p1, p2))
                .max(parabola_peak(p1, p2, p3))
                .max(parabola_peak(p2, p3, x1));
            *o = m;
            prev = p3;
        }
    }
}

impl PeakInterpolator {
    /// The largest true peak (linear) of the first [`PRECISE_REACH`] frames of a signal whose
    /// first samples are `head`, with the signal mirrored before its start (`x[−1 − j] = x[j]`)
    /// instead of silent. Resamplers extend a stream that way at its ends (ffmpeg's
    /// libswresample, which its `ebur128=peak=true` meter upsamples with, reflects the last
    /// samples when it flushes), so a file that ends on a loud transient reads higher there
    /// than the silent extension gives. Pass the reversed last samples for the end (the
    /// interpolator is symmetric in time).
    pub fn mirrored_edge_peak(&self, head: &[f32]) -> f32 {
        let m = PRECISE_REACH;
        let used = &head[..head.len().min(3 * m)];
        let mut ctx: Vec<f32> = (0..m).rev().map(|j| used.get(j).copied().unwrap_or(0.0)).collect();
        ctx.extend_from_slice(used);
        ctx.extend(std::iter::repeat_n(0.0, m + 1));
        let mut out = vec![0f32; used.len().min(m) + 1];
        self.frame_peaks(&ctx, m - 1, &mut out);
        out.iter().fold(0f32, |a, &v| a.max(v))
    }
}

/// The largest true peak (linear) of a stream of planar chunks, by [`PeakInterpolator`]: the
/// meter of the safety trim and of the written output. Chunking does not change the reading.
#[derive(Debug, Clone)]
pub struct TruePeakDetector {
    interp: PeakInterpolator,
    /// Per channel: the first `3 · PRECISE_REACH` samples, and the last ones, for the
    /// mirrored reading of the edges ([`PeakInterpolator::mirrored_edge_peak`]).
    head: Vec<Vec<f32>>,
    tail: Vec<Vec<f32>>,
    /// Per channel: the samples not yet read, after `PRECISE_REACH` of context.
    buf: Vec<Vec<f32>>,
    peak: f32,
    scratch: Vec<f32>,
}

impl TruePeakDetector {
    /// A detector for `channels` channels (silence before the first sample).
    pub fn new(channels: usize) -> Self {
        Self {
            interp: PeakInterpolator::new(),
            head: vec![Vec::new(); channels],
            tail: vec![Vec::new(); channels],
            buf: vec![vec![0.0; PRECISE_REACH]; channels],
            peak: 0.0,
            scratch: Vec::new(),
        }
    }

    /// Reads a chunk (one slice per channel, equal lengths).
    pub fn push(&mut self, chunk: &[&[f32]]) {
        let keep = 3 * PRECISE_REACH;
        for (((b, h), t), c) in self.buf.iter_mut().zip(&mut self.head).zip(&mut self.tail).zip(chunk) {
            b.extend_from_slice(c);
            if h.len() < keep {
                h.extend_from_slice(&c[..c.len().min(keep - h.len())]);
            }
            t.extend_from_slice(&c[c.len().saturating_sub(keep)..]);
            let excess = t.len().saturating_sub(keep);
            t.drain(..excess);
        }
        self.scan(false);
    }

    /// The true peak of everything pushed (silence before the first and after the last
    /// sample), linear.
    pub fn peak(mut self) -> f32 {
        self.scan(true);
        self.peak
    }

    /// The true peak of the first and last [`PRECISE_REACH`] frames with the signal mirrored
    /// beyond its ends (as resamplers extend it), linear. Kept apart from [`Self::peak`]: a
    /// transient on the last sample can read several dB higher mirrored, which is the writer's
    /// guard's to lower locally ([`crate::ceiling`]), never a reason to trim a whole master.
    pub fn mirrored_edges_peak(&self) -> f32 {
        let mut peak = 0f32;
        for (h, t) in self.head.iter().zip(&self.tail) {
            let reversed: Vec<f32> = t.iter().rev().copied().collect();
            peak = peak.max(self.interp.mirrored_edge_peak(h)).max(self.interp.mirrored_edge_peak(&reversed));
        }
        peak
    }

    /// The true peak of everything pushed, dBTP.
    pub fn peak_dbtp(self) -> f64 {
        20.0 * f64::from(self.peak()).log10()
    }

    fn scan(&mut self, last: bool) {
        for b in self.buf.iter_mut() {
            if last {
                b.extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
            }
            // Frames PRECISE_REACH - 1 (the interval before the first sample, at the start) up
            // to those with a full right context.
            let first = PRECISE_REACH - 1;
            let Some(n) = b.len().checked_sub(first + PRECISE_REACH) else { continue };
            if n == 0 {
                continue;
            }
            self.scratch.resize(n, 0.0);
            self.interp.frame_peaks(b, first, &mut self.scratch);
            self.peak = self.scratch.iter().fold(self.peak, |a, &v| a.max(v));
            b.drain(..n);
        }
    }
}

/// Largest true peak of `channels` in dBTP by the precise detector ([`TruePeakDetector`]).
pub fn precise_true_peak_db(channels: &[&[f32]]) -> f64 {
    let mut d = TruePeakDetector::new(channels.len());
    d.push(channels);
    d.peak_dbtp()
}

#[cfg(test)]
mod precise_tests {
    use super::*;

    /// A 1000-frame raised-cosine fade in and out over `n` frames: a tone that starts or stops
    /// abruptly overshoots at its edges (as it should), which is not what these tests measure.
    fn faded(i: usize, n: usize) -> f64 {
        let edge = i.min(n - 1 - i) as f64 / 1000.0;
        if edge >= 1.0 {
            1.0
        } else {
            0.5 - 0.5 * (std::f64::consts::PI * edge).cos()
        }
    }

    #[test]
    fn the_precise_detector_reads_a_quarter_rate_sine_at_45_degrees_3_db_over_its_samples() {
        let x: Vec<f32> = (0..4800)
            .map(|i| {
                (faded(i, 4800) * (std::f64::consts::FRAC_PI_2 * i as f64 + std::f64::consts::FRAC_PI_4).sin()) as f32
            })
            .collect();
        let sample_peak = 20.0 * f64::from(x.iter().fold(0f32, |a, v| a.max(v.abs()))).log10();
        let tp = precise_true_peak_db(&[&x]);
        assert!((sample_peak + 3.01).abs() < 0.01, "{sample_peak}");
        assert!(tp.abs() < 0.05, "{tp}");
    }

    #[test]
    fn the_precise_detector_reads_tones_to_near_nyquist_within_a_tenth_of_a_db() {
        for f in [997.0, 5_000.0, 15_000.0, 19_000.0, 20_500.0] {
            for phase in [0.0, 0.3, 1.1] {
                let x: Vec<f32> = (0..8820)
                    .map(|i| {
                        (0.5 * faded(i, 8820) * (2.0 * std::f64::consts::PI * f * i as f64 / 44_100.0 + phase).sin())
                            as f32
                    })
                    .collect();
                let tp = precise_true_peak_db(&[&x]);
                assert!((tp + 6.0206).abs() < 0.1, "{f} Hz, phase {phase}: {tp}");
            }
        }
    }

    #[test]
    fn the_streamed_reading_does_not_depend_on_the_chunking_and_counts_the_edges() {
        let x: Vec<f32> = (0..10_001).map(|i| (i as f32 * 0.37).sin() * (i as f32 * 0.001).cos()).collect();
        let whole = precise_true_peak_db(&[&x]);
        for chunk in [1usize, 31, 4096] {
            let mut d = TruePeakDetector::new(1);
            for c in x.chunks(chunk) {
                d.push(&[c]);
            }
            assert_eq!(d.peak_dbtp(), whole, "chunks of {chunk}");
        }
        // A file that starts on a full-scale doublet overshoots before its first sample.
        let edge = [1.0f32, -1.0, 0.0, 0.0];
        assert!(precise_true_peak_db(&[&edge]) > 0.5);
    }
}
