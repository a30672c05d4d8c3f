//! The render chain as a stream: the mix goes through in chunks and never has to be in memory
//! whole, so a 90-minute mix masters in bounded memory.
//!
//! Each stage keeps what it needs of the past (filter state, a look-ahead, a halo of samples
//! around a window) and hands on output aligned with its input and exactly as long: the
//! linear-phase EQ drops its delay, the limiter holds samples back for its look-ahead, and the
//! window stages (saturator, true-peak envelope) run their whole-buffer code on overlapping
//! windows and keep the middle. Chunk boundaries come from the source and do not change the
//! result: every stage works internally in blocks counted from the first sample.

use crate::audio::{db_to_lin, AudioBuffer};
use crate::dsp::oversample::Oversampler;
use crate::dsp::truepeak::{peak_envelope, TruePeakDetector};
use crate::error::Result;
use crate::render::chain::{run_pipelined, Chain, Envelope, StageSpec};
use crate::render::limiter::{safety_trim_db, GainComputer, LimiterStats};
use crate::render::saturation::{saturate_with, Quality};
use crate::settings::{LimiterSettings, SaturationSettings, Settings};
use crate::source::FrameSource;

/// Frames per window of the window stages (saturator, envelope).
pub const WINDOW_FRAMES: usize = 1 << 15;

/// What receives the signal entering the limiter, chunk by chunk: the samples (planar) and their
/// true-peak envelope, aligned.
pub type PreSink<'a> = dyn FnMut(&[&[f32]], &[f32]) -> Result<()> + 'a;

/// What receives a rendered master, chunk by chunk: (first frame, planar chunk).
pub type OutputSink<'a> = dyn FnMut(usize, &[&[f32]]) -> Result<()> + 'a;

/// What a window stage runs on each window: (window, core offset, core length).
type WindowFn<'a> = dyn FnMut(&[&[f32]], usize, usize) + 'a;

/// Planar chunk storage reused from chunk to chunk.
pub type Planes = Vec<Vec<f32>>;

/// Borrows planar storage as slices.
pub fn slices(planes: &[Vec<f32>]) -> Vec<&[f32]> {
    planes.iter().map(Vec::as_slice).collect()
}

/// Runs a whole-buffer function over a stream, window by window: each window is a core of
/// [`WINDOW_FRAMES`] frames with `halo` frames of context on either side (less at the ends of the
/// signal, where the whole-buffer function sees the true edge). A stage whose output at a sample
/// depends only on inputs within `halo` of it gives, in the core, exactly what it gives on the
/// whole buffer.
struct Windowed {
    halo: usize,
    buf: Planes,
    /// Absolute frame index of `buf[..][0]`.
    buf_start: usize,
    /// Absolute frame index of the next core.
    next: usize,
    /// Frames pushed so far.
    total: usize,
}

impl Windowed {
    fn new(channels: usize, halo: usize) -> Self {
        Self { halo, buf: vec![Vec::new(); channels], buf_start: 0, next: 0, total: 0 }
    }

    /// Adds `chunk` and calls `f(window, core_offset, core_len)` for every core now complete.
    fn push(&mut self, chunk: &[&[f32]], f: &mut WindowFn<'_>) {
        for (b, c) in self.buf.iter_mut().zip(chunk) {
            b.extend_from_slice(c);
        }
        self.total += chunk.first().map_or(0, |c| c.len());
        while self.total >= self.next + WINDOW_FRAMES + self.halo {
            self.run(WINDOW_FRAMES, self.next + WINDOW_FRAMES + self.halo, f);
        }
    }

    /// Runs the remaining cores (the end of the signal is the end of the last window).
    fn finish(&mut self, f: &mut WindowFn<'_>) {
        while self.next < self.total {
            let core = WINDOW_FRAMES.min(self.total - self.next);
            self.run(core, (self.next + core + self.halo).min(self.total), f);
        }
    }

    fn run(&mut self, core: usize, end: usize, f: &mut WindowFn<'_>) {
        let start = self.next.saturating_sub(self.halo).max(self.buf_start);
        let (a, b) = (start - self.buf_start, end - self.buf_start);
        let window: Vec<&[f32]> = self.buf.iter().map(|c| &c[a..b]).collect();
        f(&window, self.next - start, core);
        self.next += core;
        let keep_from = self.next.saturating_sub(self.halo).max(self.buf_start);
        let drop = keep_from - self.buf_start;
        for c in self.buf.iter_mut() {
            c.drain(..drop);
        }
        self.buf_start = keep_from;
    }
}

/// The saturator ([`crate::render::saturation`]) as a stream of windows. Its residual at a sample
/// depends on the 8× interpolation within the oversampler's reach of it, twice (up, then down),
/// and its spans on the true-peak envelope: the halo covers all of that. Windows are independent
/// once cut, so they are saturated two at a time on two threads (a hard-driven window is one
/// long span the saturator cannot split), and handed on in order.
pub struct SaturatorStage {
    settings: SaturationSettings,
    clip_dbtp: f64,
    quality: Quality,
    windowed: Windowed,
    /// Cut windows waiting to be saturated: (window, core offset, core length).
    jobs: Vec<(AudioBuffer, usize, usize)>,
    rate: u32,
}

impl SaturatorStage {
    /// A saturator for `settings` clipping at `clip_dbtp` (the limiter ceiling).
    pub fn new(rate: u32, channels: usize, settings: &SaturationSettings, clip_dbtp: f64, quality: Quality) -> Self {
        let halo = 4 * Oversampler::new().reach() + 64 + 2 * crate::render::saturation::side_smoothing_reach(rate);
        Self {
            settings: settings.clone(),
            clip_dbtp,
            quality,
            windowed: Windowed::new(channels, halo),
            jobs: Vec::new(),
            rate,
        }
    }

    /// Saturates `chunk`, appending what is ready to `out`.
    pub fn process(&mut self, chunk: &[&[f32]], out: &mut Planes) {
        let (jobs, rate) = (&mut self.jobs, self.rate);
        self.windowed.push(chunk, &mut |w, off, len| jobs.push((window_copy(w, rate), off, len)));
        if self.jobs.len() >= 2 {
            self.run(out);
        }
    }

    /// Saturates the rest.
    pub fn finish(&mut self, out: &mut Planes) {
        let (jobs, rate) = (&mut self.jobs, self.rate);
        self.windowed.finish(&mut |w, off, len| jobs.push((window_copy(w, rate), off, len)));
        self.run(out);
    }

    fn run(&mut self, out: &mut Planes) {
        let (settings, clip, quality) = (&self.settings, self.clip_dbtp, self.quality);
        std::thread::scope(|scope| {
            let mut jobs = self.jobs.iter_mut();
            let first = jobs.next();
            for (w, _, _) in jobs {
                scope.spawn(move || saturate_with(w, settings, clip, quality));
            }
            if let Some((w, _, _)) = first {
                saturate_with(w, settings, clip, quality);
            }
        });
        for (w, off, len) in self.jobs.drain(..) {
            for (o, s) in out.iter_mut().zip(&w.channels) {
                o.extend_from_slice(&s[off..off + len]);
            }
        }
    }
}

fn window_copy(window: &[&[f32]], rate: u32) -> AudioBuffer {
    AudioBuffer { sample_rate_hz: rate, channels: window.iter().map(|w| w.to_vec()).collect() }
}

/// Adds the 4× true-peak envelope ([`peak_envelope`]) to a stream: hands on the samples with
/// their envelope, both aligned.
pub struct EnvelopeStage {
    windowed: Windowed,
}

impl EnvelopeStage {
    /// An envelope stage for `channels` channels.
    pub fn new(channels: usize) -> Self {
        Self { windowed: Windowed::new(channels, 32) }
    }

    /// Appends the samples of the completed windows to `out` and their envelope to `env`.
    pub fn process(&mut self, chunk: &[&[f32]], out: &mut Planes, env: &mut Vec<f32>) {
        self.windowed.push(chunk, &mut |w, off, len| envelope_window(w, off, len, out, env));
    }

    /// Appends the rest.
    pub fn finish(&mut self, out: &mut Planes, env: &mut Vec<f32>) {
        self.windowed.finish(&mut |w, off, len| envelope_window(w, off, len, out, env));
    }
}

fn envelope_window(window: &[&[f32]], off: usize, len: usize, out: &mut Planes, env: &mut Vec<f32>) {
    let e = peak_envelope(window);
    env.extend_from_slice(&e[off..off + len]);
    for (o, w) in out.iter_mut().zip(window) {
        o.extend_from_slice(&w[off..off + len]);
    }
}

/// Renders the chain before the limiter over the whole of `source` (the saturator at `quality`,
/// or left out for `None`), calling `f` with aligned chunks of the signal and its true-peak
/// envelope.
pub fn render_pre(
    source: &dyn FrameSource,
    settings: &Settings,
    quality: Option<Quality>,
    f: &mut PreSink<'_>,
) -> Result<()> {
    let channels = source.channel_count();
    let spec = StageSpec { sample_rate_hz: source.sample_rate_hz(), channels };
    let (mut tone, mut peaks) = Chain::pre_limiter_parts(spec, settings, quality);
    peaks.push(Box::new(Envelope::new(spec)), channels + 1);
    run_pipelined(source, &mut tone, &mut peaks, &mut |out| hand_on(out, f))
}

/// Hands the audio planes and the envelope plane of `out` to `f`, then empties them.
fn hand_on(out: &mut Planes, f: &mut PreSink<'_>) -> Result<()> {
    if let Some((env, audio)) = out.split_last() {
        if !env.is_empty() {
            f(&slices(audio), env)?;
        }
    }
    out.iter_mut().for_each(Vec::clear);
    Ok(())
}

/// Renders `settings` onto `source` (the whole chain, the saturator 8× oversampled) and calls
/// `f(first_frame, chunk)` with the master. Two reads of the mix: the first measures the limited
/// output's true peak for the safety trim ([`crate::render::limiter::safety_trim_db`]), the
/// second applies it on the way out. Returns the limiter's statistics.
pub fn render_stream(source: &dyn FrameSource, settings: &Settings, f: &mut OutputSink<'_>) -> Result<LimiterStats> {
    let (rate, channels) = (source.sample_rate_hz(), source.channel_count());
    let spec = StageSpec { sample_rate_hz: rate, channels };
    let mut trim_db = 0.0;
    if settings.limiter.enabled {
        let (mut tone, mut peaks) = Chain::whole_parts(spec, settings, 0.0);
        let mut meter = TruePeakMeter::new(channels);
        run_pipelined(source, &mut tone, &mut peaks, &mut |out| {
            meter.push(&slices(out));
            out.iter_mut().for_each(Vec::clear);
            Ok(())
        })?;
        trim_db = safety_trim_db(settings.limiter.ceiling_dbtp, meter.true_peak_dbtp());
    }
    let (mut tone, mut peaks) = Chain::whole_parts(spec, settings, trim_db);
    let mut written = 0;
    run_pipelined(source, &mut tone, &mut peaks, &mut |out| {
        if out.first().is_none_or(Vec::is_empty) {
            return Ok(());
        }
        f(written, &slices(out))?;
        written += out[0].len();
        out.iter_mut().for_each(Vec::clear);
        Ok(())
    })?;
    Ok(peaks.limiter_stats().unwrap_or_default())
}

/// The true-peak limiter as a stream: the gain comes from [`GainComputer`] (the one the loop's
/// decimated estimates use through [`crate::render::limiter::gain_curve`]), whose state carries
/// across chunks, so the gain is the whole-buffer gain sample for sample. The samples wait
/// `look-ahead` frames for their gain; the output is `sample × (drive × gain) × trim`.
pub struct StreamLimiter {
    enabled: bool,
    /// Frames the gain lags the envelope (the look-ahead), 0 when disabled.
    latency: usize,
    drive: f32,
    trim: f32,
    gain: GainComputer,
    held: Planes,
    gains: Vec<f32>,
    stats: GainStats,
    /// The gains applied since the last [`Self::tapped`], when tapped.
    tap: Option<Vec<f32>>,
}

impl StreamLimiter {
    /// A limiter for `s` at `rate`, driven by `s.drive_db`, its output scaled by
    /// `s.output_trim_db` and `trim_db` (the safety trim measured on top of it, ≤ 0).
    pub fn new(rate: u32, channels: usize, s: &LimiterSettings, trim_db: f64) -> Self {
        let drive = db_to_lin(s.drive_db) as f32;
        let look = ((s.lookahead_ms * 1e-3 * f64::from(rate)).round() as usize).max(1);
        Self {
            enabled: s.enabled,
            latency: if s.enabled { look - 1 } else { 0 },
            drive,
            trim: db_to_lin(s.output_trim_db + trim_db) as f32,
            gain: GainComputer::new(rate, s, drive),
            held: vec![Vec::new(); channels],
            gains: Vec::new(),
            stats: GainStats::new(rate),
            tap: None,
        }
    }

    /// Keeps the gains as they are applied (frame `i` of the output is the input's frame `i`
    /// times `drive * gain[i] * trim`), for [`Self::tapped`]. A disabled limiter applies none.
    pub fn tap_gains(&mut self) {
        self.tap = Some(Vec::new());
    }

    /// The gains applied since the last call (empty it when taken), when tapped.
    pub fn tapped(&mut self) -> Option<&mut Vec<f32>> {
        self.tap.as_mut()
    }

    /// Limits `pre` (whose true-peak envelope, undriven, is `env`), appending what is ready.
    pub fn process(&mut self, pre: &[&[f32]], env: &[f32], out: &mut Planes) {
        if !self.enabled {
            for (o, p) in out.iter_mut().zip(pre) {
                o.extend(p.iter().map(|x| x * self.drive * self.trim));
            }
            env.iter().for_each(|_| self.stats.add(1.0));
            return;
        }
        for (h, p) in self.held.iter_mut().zip(pre) {
            h.extend_from_slice(p);
        }
        self.gain.push(env, &mut self.gains);
        self.apply(out);
    }

    /// Limits the held-back rest.
    pub fn finish(&mut self, out: &mut Planes) {
        if !self.enabled {
            return;
        }
        self.gain.finish(&mut self.gains);
        self.apply(out);
    }

    /// Frames the output lags the input inside the limiter (its look-ahead): the output is
    /// aligned with the input, the last frames arrive with [`Self::finish`].
    pub fn latency_frames(&self) -> usize {
        self.latency
    }

    /// Statistics of the gain so far (complete after [`Self::finish`]).
    pub fn stats(&self) -> LimiterStats {
        self.stats.stats()
    }

    fn apply(&mut self, out: &mut Planes) {
        let k = self.gains.len();
        for &g in &self.gains {
            self.stats.add(g);
        }
        if let Some(t) = self.tap.as_mut() {
            t.extend_from_slice(&self.gains);
        }
        for (o, h) in out.iter_mut().zip(self.held.iter_mut()) {
            o.extend(h[..k].iter().zip(&self.gains).map(|(x, g)| x * (self.drive * g) * self.trim));
            h.drain(..k);
        }
        self.gains.clear();
    }
}

/// Gain-reduction statistics gathered as the gain streams past: the deepest reduction per
/// 100 ms block, and a histogram (0.001 dB bins) of every 8th frame's reduction for the
/// 99.9th percentile.
struct GainStats {
    block: usize,
    in_block: usize,
    block_min: f32,
    series: Vec<f32>,
    index: usize,
    histogram: DbHistogram,
}

impl GainStats {
    fn new(rate: u32) -> Self {
        Self {
            block: (rate / 10).max(1) as usize,
            in_block: 0,
            block_min: 1.0,
            series: Vec::new(),
            index: 0,
            histogram: DbHistogram::new(0.0, 0.001, 120_000),
        }
    }

    #[inline]
    fn add(&mut self, g: f32) {
        self.block_min = self.block_min.min(g);
        self.in_block += 1;
        if self.in_block == self.block {
            self.series.push(-20.0 * self.block_min.max(1e-6).log10());
            self.in_block = 0;
            self.block_min = 1.0;
        }
        if self.index % 8 == 0 {
            self.histogram.add(-20.0 * f64::from(g.max(1e-6)).log10());
        }
        self.index += 1;
    }

    fn stats(&self) -> LimiterStats {
        let mut series = self.series.clone();
        if self.in_block > 0 {
            series.push(-20.0 * self.block_min.max(1e-6).log10());
        }
        let max = series.iter().fold(0f32, |a, &b| a.max(b));
        let loud = self.histogram.quantile(0.999);
        LimiterStats {
            max_gain_reduction_db: f64::from(max),
            loud_gain_reduction_db: if loud.is_finite() { loud.max(0.0) } else { 0.0 },
            gain_reduction_series_db: series,
        }
    }
}

/// A histogram of levels in dB with fixed bins, for quantiles of streams too long to sort.
#[derive(Debug, Clone)]
pub struct DbHistogram {
    lo_db: f64,
    step_db: f64,
    counts: Vec<u64>,
    total: u64,
}

impl DbHistogram {
    /// `bins` bins of `step_db` from `lo_db`; values outside land in the end bins.
    pub fn new(lo_db: f64, step_db: f64, bins: usize) -> Self {
        Self { lo_db, step_db, counts: vec![0; bins.max(1)], total: 0 }
    }

    /// Counts one value (dB; −∞ counts in the lowest bin).
    #[inline]
    pub fn add(&mut self, db: f64) {
        let k = ((db - self.lo_db) / self.step_db).floor();
        let k = if k.is_nan() || k < 0.0 { 0 } else { (k as usize).min(self.counts.len() - 1) };
        self.counts[k] += 1;
        self.total += 1;
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The level (dB, the centre of its bin) under which a fraction `q` of the values lie: the
    /// value a sort would put at index `floor(count × q)`; −∞ when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NEG_INFINITY;
        }
        let idx = ((self.total as f64 * q) as u64).min(self.total - 1);
        let mut seen = 0;
        for (k, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > idx {
                return self.lo_db + (k as f64 + 0.5) * self.step_db;
            }
        }
        self.lo_db + self.counts.len() as f64 * self.step_db
    }
}

/// The 99.9th-percentile level of a true-peak envelope, streamed: maxima of blocks of 8 frames
/// (counted from the first frame) into a 0.01 dB histogram. Matches
/// [`crate::dsp::truepeak::envelope_quantile_db`] to within half a bin.
pub struct EnvelopeQuantile {
    histogram: DbHistogram,
    block_max: f32,
    in_block: usize,
}

impl Default for EnvelopeQuantile {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvelopeQuantile {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self { histogram: DbHistogram::new(-200.0, 0.01, 26_000), block_max: 0.0, in_block: 0 }
    }

    /// Adds envelope values.
    pub fn push(&mut self, env: &[f32]) {
        for &e in env {
            self.block_max = self.block_max.max(e);
            self.in_block += 1;
            if self.in_block == 8 {
                self.histogram.add(20.0 * f64::from(self.block_max.max(1e-10)).log10());
                self.block_max = 0.0;
                self.in_block = 0;
            }
        }
    }

    /// The level (dB) that the loudest `1 − q` of the envelope's blocks exceed.
    pub fn quantile_db(&self, q: f64) -> f64 {
        let mut h = self.histogram.clone();
        if self.in_block > 0 {
            h.add(20.0 * f64::from(self.block_max.max(1e-10)).log10());
        }
        h.quantile(q)
    }
}

/// The true peak of a stream as the safety trim judges it: the precise detector
/// ([`crate::dsp::truepeak::TruePeakDetector`], 4× with a 48-tap interpolator cut at Nyquist
/// and a parabolic reading between points) on every sample. The one the written output is held
/// to by [`crate::ceiling`], so a trim it sets leaves that last guard nothing to do.
pub struct TruePeakMeter {
    detector: TruePeakDetector,
}

impl TruePeakMeter {
    /// A meter for `channels` channels.
    pub fn new(channels: usize) -> Self {
        Self { detector: TruePeakDetector::new(channels) }
    }

    /// Measures a chunk.
    pub fn push(&mut self, chunk: &[&[f32]]) {
        if chunk.first().is_none_or(|c| c.is_empty()) {
            return;
        }
        self.detector.push(chunk);
    }

    /// The true peak of everything pushed, dBTP.
    pub fn true_peak_dbtp(self) -> f64 {
        self.detector.peak_dbtp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::fir::StreamConvolver;
    use crate::dsp::fir::{design, fir_len};
    use crate::render::limiter::CEILING_MARGIN_DB;
    use std::collections::VecDeque;

    /// The limiter's gain as first written, for a whole buffer in three passes (sliding minimum,
    /// release, moving average): the specification the streamed gain computer is held to.
    fn three_pass_gain_curve(envelope: &[f32], drive: f32, sample_rate_hz: u32, s: &LimiterSettings) -> Vec<f32> {
        let n = envelope.len();
        let ceiling = 10f64.powf((s.ceiling_dbtp - CEILING_MARGIN_DB) / 20.0) as f32;
        let look = ((s.lookahead_ms * 1e-3 * f64::from(sample_rate_hz)).round() as usize).max(1);
        // 1. required gain, 2. sliding minimum over [i, i + look − 1] (monotonic deque)
        let required = |p: f32| {
            let peak = p * drive;
            if peak > ceiling {
                ceiling / peak
            } else {
                1.0
            }
        };
        let mut out = vec![1f32; n];
        let mut deque: VecDeque<(usize, f32)> = VecDeque::with_capacity(look + 1);
        for j in 0..n + look - 1 {
            if let Some(&p) = envelope.get(j) {
                let r = required(p);
                while deque.back().is_some_and(|&(_, v)| v >= r) {
                    deque.pop_back();
                }
                deque.push_back((j, r));
            }
            if j + 1 >= look {
                let i = j + 1 - look;
                while deque.front().is_some_and(|&(k, _)| k < i) {
                    deque.pop_front();
                }
                if i < n {
                    out[i] = deque.front().map_or(1.0, |&(_, v)| v);
                }
            }
        }
        // 3. release: instant down, exponential up
        let a = (-1.0 / (s.release_ms.max(1.0) * 1e-3 * f64::from(sample_rate_hz))).exp() as f32;
        let mut r = 1f32;
        for v in out.iter_mut() {
            r = if *v < r { *v } else { *v + (r - *v) * a };
            *v = r;
        }
        // 4. moving average over the previous `look` values. Values before the start count as the
        //    first window's minimum, so a peak in the first look-ahead is held too.
        let before = f64::from(out.first().copied().unwrap_or(1.0));
        let mut ring = vec![0f32; look];
        let mut sum = look as f64 * before;
        for (i, v) in out.iter_mut().enumerate() {
            let released = *v;
            sum += f64::from(released);
            let slot = i % look;
            sum -= if i >= look { f64::from(ring[slot]) } else { before };
            ring[slot] = released;
            *v = ((sum / look as f64) as f32).min(1.0);
        }
        out
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
                // A loud burst every so often, so the limiter has work.
                u * if (i / 3000) % 5 == 0 { 3.0 } else { 0.6 }
            })
            .collect()
    }

    /// Settings that switch every stage on: a tilted EQ with width, a multiband compressor, a
    /// saturator driven into its knee and a limiter.
    fn every_stage_on(mix: &AudioBuffer) -> Settings {
        let mix_profile = crate::analysis::analyze(mix, "mix", false);
        let mut reference = mix.clone();
        for (c, ch) in reference.channels.iter_mut().enumerate() {
            let mut lp = 0f32;
            for x in ch.iter_mut() {
                lp += 0.3 * (*x - lp);
                *x = 2.0 * (*x - 0.5 * lp) * if c == 0 { 1.0 } else { 0.6 };
            }
        }
        let reference_profile = crate::analysis::analyze(&reference, "ref", false);
        let (mut s, _) = crate::solve::solve(&mix_profile, &reference_profile, &Default::default());
        s.dynamics.enabled = true;
        s.dynamics.linked = false;
        for (i, b) in s.dynamics.bands.iter_mut().enumerate() {
            *b = crate::settings::CompressorBand {
                threshold_dbfs: -30.0,
                ratio: 1.5 + i as f64 * 0.5,
                knee_db: 6.0,
                attack_ms: 10.0,
                release_ms: 150.0,
                makeup_db: 2.0,
            };
        }
        s.saturation.enabled = true;
        s.saturation.drive_db = 6.0;
        s.limiter.enabled = true;
        s.limiter.drive_db = 6.0;
        s
    }

    /// `chain` run over `mix` on this thread, all its output.
    fn render_one_thread(chain: &mut Chain, mix: &AudioBuffer) -> Planes {
        let mut out: Planes = vec![Vec::new(); mix.channel_count()];
        mix.stream(&mut |chunk| {
            chain.process(chunk, &mut out);
            Ok(())
        })
        .expect("one thread");
        chain.finish(&mut out);
        out
    }

    /// `front` then `back` run over `mix` by [`run_pipelined`], all the output.
    fn render_two_threads(front: &mut Chain, back: &mut Chain, mix: &AudioBuffer) -> Planes {
        let mut got: Planes = vec![Vec::new(); mix.channel_count()];
        run_pipelined(mix, front, back, &mut |out| {
            for (g, o) in got.iter_mut().zip(out.iter_mut()) {
                g.append(o);
            }
            Ok(())
        })
        .expect("two threads");
        got
    }

    #[test]
    fn the_chain_cut_across_two_threads_renders_the_bits_of_one_thread() {
        let mix = crate::analysis::test_audio::music(44_100, 2, 6.0, 7);
        let s = every_stage_on(&mix);
        let spec = StageSpec { sample_rate_hz: 44_100, channels: 2 };
        let mut one = Chain::whole(spec, &s, -0.5);
        assert!(one.describe().len() >= 7, "every stage present: {:?}", one.describe());
        let want = render_one_thread(&mut one, &mix);
        let (mut tone, mut peaks) = Chain::whole_parts(spec, &s, -0.5);
        let got = render_two_threads(&mut tone, &mut peaks, &mix);
        assert_eq!(want[0].len(), mix.frames());
        assert!(want == got, "the two-thread render differs from the one-thread render");
        assert_eq!(one.limiter_stats(), peaks.limiter_stats());
    }

    #[test]
    fn the_chain_cut_inside_the_multiband_compressor_renders_the_bits_of_one_thread() {
        for (channels, feedback) in [(2, false), (2, true), (1, false)] {
            let mix = crate::analysis::test_audio::music(44_100, channels, 6.0, 9);
            let mut s = every_stage_on(&mix);
            s.dynamics.feedback = feedback;
            let spec = StageSpec { sample_rate_hz: 44_100, channels };
            let mut one = Chain::pre_limiter(spec, &s, None);
            let want = render_one_thread(&mut one, &mix);
            // Without the saturator the cut falls between the compressor's detectors and its
            // split.
            let (mut tone, mut peaks) = Chain::pre_limiter_parts(spec, &s, None);
            assert!(tone.describe().iter().any(|(n, _)| *n == "compressor detectors"), "{:?}", tone.describe());
            assert!(peaks.describe().iter().any(|(n, _)| *n == "compressor split"), "{:?}", peaks.describe());
            assert_eq!(tone.latency_frames() + peaks.latency_frames(), one.latency_frames());
            let got = render_two_threads(&mut tone, &mut peaks, &mix);
            assert_eq!(got[0].len(), mix.frames());
            assert!(want == got, "{channels} channels, feedback {feedback}: the cut render differs");
        }
    }

    #[test]
    fn a_long_chunk_is_handed_over_in_order_in_pieces_of_at_most_piece_samples() {
        use crate::render::chain::{hand_over, PIECE_SAMPLES};
        let long: Vec<f32> = (0..PIECE_SAMPLES + 123).map(|i| i as f32).collect();
        let (mut got, mut largest) = (vec![Vec::new(), Vec::new()], 0);
        hand_over(
            2,
            |emit| {
                let mut out: Planes = vec![long.clone(), long.iter().map(|v| -v).collect()];
                emit(&mut out)?;
                assert!(out.iter().all(Vec::is_empty), "emit leaves a cleared buffer");
                let mut short: Planes = vec![vec![1.0; 10], vec![2.0; 10]];
                emit(&mut short)
            },
            &mut |planes| {
                largest = largest.max(planes[0].len());
                for (g, p) in got.iter_mut().zip(planes.iter()) {
                    g.extend_from_slice(p);
                }
                Ok(())
            },
        )
        .expect("hand over");
        assert!(2 * largest <= PIECE_SAMPLES, "{largest} frames of two planes in one piece");
        assert_eq!(got[0][..long.len()], long[..]);
        assert_eq!(got[1][..long.len()], long.iter().map(|v| -v).collect::<Vec<f32>>()[..]);
        assert_eq!(got[0][long.len()..], [1.0; 10]);
        assert_eq!(got[1].len(), long.len() + 10);
    }

    #[test]
    fn a_failing_consumer_stops_the_two_thread_render_with_its_own_error() {
        let mix = crate::analysis::test_audio::music(44_100, 2, 8.0, 8);
        let s = every_stage_on(&mix);
        let spec = StageSpec { sample_rate_hz: 44_100, channels: 2 };
        let (mut tone, mut peaks) = Chain::pre_limiter_parts(spec, &s, Some(Quality::Draft));
        let mut calls = 0;
        let r = run_pipelined(&mix, &mut tone, &mut peaks, &mut |out| {
            out.iter_mut().for_each(Vec::clear);
            calls += 1;
            Err(crate::error::Error::Unsupported("disk full".into()))
        });
        assert_eq!(calls, 1, "the consumer is not called again after it failed");
        assert!(matches!(r, Err(crate::error::Error::Unsupported(m)) if m == "disk full"));
    }

    #[test]
    fn the_streamed_limiter_gain_is_the_whole_buffer_gain_whatever_the_chunking() {
        let x = noise(70_001, 1);
        let env: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let s = LimiterSettings {
            enabled: true,
            drive_db: 6.0,
            ceiling_dbtp: -1.0,
            lookahead_ms: 5.0,
            release_ms: 80.0,
            target_lufs: -10.0,
            output_trim_db: 0.0,
        };
        let whole = three_pass_gain_curve(&env, db_to_lin(6.0) as f32, 44_100, &s);
        let want: Vec<f32> = x.iter().zip(&whole).map(|(x, g)| x * (db_to_lin(6.0) as f32 * g)).collect();
        for chunk in [1usize, 97, 4096, 70_001] {
            let mut lim = StreamLimiter::new(44_100, 1, &s, 0.0);
            let mut out = vec![Vec::new()];
            for (c, e) in x.chunks(chunk).zip(env.chunks(chunk)) {
                lim.process(&[c], e, &mut out);
            }
            lim.finish(&mut out);
            assert_eq!(out[0], want, "chunk {chunk}");
        }
    }

    #[test]
    fn the_streamed_envelope_and_fir_match_the_whole_buffer_versions() {
        let x = noise(100_003, 2);
        let y = noise(100_003, 3);
        let whole = peak_envelope(&[&x, &y]);
        let mut stage = EnvelopeStage::new(2);
        let (mut out, mut env) = (vec![Vec::new(), Vec::new()], Vec::new());
        for (a, b) in x.chunks(5000).zip(y.chunks(5000)) {
            stage.process(&[a, b], &mut out, &mut env);
        }
        stage.finish(&mut out, &mut env);
        assert_eq!(env, whole);
        assert_eq!(out[0], x);

        let taps = design(fir_len(44_100), 44_100, |f| if f < 1000.0 { 6.0 } else { -3.0 });
        let want = crate::dsp::fir::FirConvolver::new(&taps).convolve_aligned(&x, taps.len() / 2);
        for chunk in [333usize, 100_003] {
            let mut conv = StreamConvolver::new(&taps, taps.len() / 2);
            let mut got = Vec::new();
            for c in x.chunks(chunk) {
                conv.process(c, &mut got);
            }
            conv.finish(&mut got);
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn histogram_quantiles_land_in_the_right_bin() {
        let mut h = DbHistogram::new(0.0, 0.01, 1000);
        for k in 0..1000 {
            h.add(f64::from(k) * 0.005);
        }
        assert!((h.quantile(0.5) - 2.5).abs() <= 0.01);
        assert!((h.quantile(0.999) - 4.995).abs() <= 0.01);
    }
}
