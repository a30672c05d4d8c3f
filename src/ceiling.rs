//! The last guard of the true-peak ceiling, in the writing path: every sample is quantised
//! (TPDF dither, as [`crate::encode`] writes it) and the true peak of the quantised waveform is
//! measured by the precise detector ([`crate::dsp::truepeak::PeakInterpolator`]) before the
//! sample is written. A frame whose true peak would pass `ceiling − NET_MARGIN_DB` gets a short,
//! smooth gain dip (flat over the interpolator's reach, raised-cosine ramps of
//! [`RAMP_MS`] each side), its neighbourhood is quantised again with the same dither and
//! measured again, until it holds. Never a hard clip: a clip's corner makes new inter-sample
//! peaks, a gain dip does not.
//!
//! The render already holds the ceiling (the limiter, then the safety trim measured with the
//! same detector), so on a correct render the net only measures and changes nothing, bit for
//! bit. It exists so that the guarantee does not depend on the solver, the limiter or the trim
//! being right; what it did is reported ([`NetStats`]) so that it never acts silently.

use crate::dsp::truepeak::{PeakInterpolator, PRECISE_REACH};
use crate::encode::DitherRng;

/// How far under the ceiling the net holds the written true peak by its detector, dB: the
/// detector reads up to 0.09 dB under a 16× 64-tap meter on the adversarial signals of
/// `tests/ceiling.rs` (clipped full-band noise at 192 kHz is the worst), so 0.15 dB keeps every
/// meter that test uses, and ffmpeg's, at or under the ceiling.
pub const NET_MARGIN_DB: f64 = 0.15;
/// Length of each ramp of a gain dip, ms.
pub const RAMP_MS: f64 = 2.0;
/// How far under the net's limit a dip aims, dB (so a dip is not re-done for a rounding).
const DIP_AIM_DB: f64 = 0.02;

/// The output format the net quantises to before it measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantiser {
    /// Integer PCM of this many bits, TPDF-dithered, clamped to the integer range.
    Int(u32),
    /// 32-bit float (no dither).
    Float,
}

/// What the net did to a written stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetStats {
    /// Gain dips applied (0 on a correct render).
    pub dips: usize,
    /// Deepest dip, dB (≥ 0).
    pub max_reduction_db: f64,
    /// Frames written below unity gain.
    pub frames_lowered: usize,
    /// The largest true peak of what was written, by the net's detector, dBTP.
    pub written_true_peak_dbtp: f64,
}

/// The streaming net: frames go in as floating point, come out quantised (as integers, or as
/// the float samples for 32-bit float), a fixed delay later.
pub struct CeilingNet {
    quantiser: Quantiser,
    interp: PeakInterpolator,
    limit: f32,
    aim: f32,
    ramp: usize,
    /// Per channel, from absolute frame `base − PRECISE_REACH` (zeros before the start): the
    /// input sample, its dither and the quantised value as written (as a float, full scale 1).
    x: Vec<Vec<f32>>,
    dither: Vec<Vec<f64>>,
    q: Vec<Vec<f32>>,
    gain: Vec<f32>,
    /// Absolute frame of buffer index `PRECISE_REACH`.
    base: usize,
    /// Frames received.
    total: usize,
    /// Absolute frame up to which the true peak is known to hold.
    checked: usize,
    scratch: Vec<f32>,
    /// A chunk's dither, drawn in frame order (channel within frame).
    draws: Vec<f64>,
    stats: NetStats,
    peak: f32,
    /// Whether the start has been read mirrored.
    head_checked: bool,
}

impl CeilingNet {
    /// A net for `channels` at `sample_rate_hz` holding `ceiling_dbtp` for output quantised by
    /// `quantiser`.
    pub fn new(sample_rate_hz: u32, channels: usize, ceiling_dbtp: f64, quantiser: Quantiser) -> Self {
        let limit_db = ceiling_dbtp - NET_MARGIN_DB;
        let ramp = ((RAMP_MS * 1e-3 * f64::from(sample_rate_hz)).round() as usize).max(4);
        let lead = vec![0f32; PRECISE_REACH];
        Self {
            quantiser,
            interp: PeakInterpolator::new(),
            limit: crate::audio::db_to_lin(limit_db) as f32,
            aim: crate::audio::db_to_lin(limit_db - DIP_AIM_DB) as f32,
            ramp,
            x: vec![lead.clone(); channels],
            dither: vec![vec![0.0; PRECISE_REACH]; channels],
            q: vec![lead.clone(); channels],
            gain: lead,
            base: 0,
            total: 0,
            checked: 0,
            scratch: Vec::new(),
            draws: Vec::new(),
            stats: NetStats { written_true_peak_dbtp: f64::NEG_INFINITY, ..NetStats::default() },
            peak: 0.0,
            head_checked: false,
        }
    }

    /// Frames either side of a dip's peak frame that the dip lowers.
    fn dip_reach(&self) -> usize {
        PRECISE_REACH + 1 + self.ramp
    }

    /// Frames held back: a dip may reach this far behind the newest measured frame, and the
    /// frames whose true peak it changes a reach further (with room for one dip to cause the
    /// next).
    fn delay(&self) -> usize {
        3 * (self.dip_reach() + PRECISE_REACH) + 2
    }

    /// Takes a planar chunk, dithering in frame order (channel within frame, as the writer
    /// always has), and appends the frames now safe to write to `out` (interleaved; integer
    /// values for [`Quantiser::Int`], `f32::to_bits` of the sample for [`Quantiser::Float`]).
    pub fn push(&mut self, chunk: &[&[f32]], rng: &mut DitherRng, out: &mut Vec<i32>) {
        let frames = chunk.first().map_or(0, |c| c.len());
        let from = self.gain.len();
        // The dither is drawn in frame order, channel within frame (as the writer always has);
        // the samples and their quantised values are then appended channel by channel.
        if let Quantiser::Int(_) = self.quantiser {
            let channels = self.dither.len();
            let mut draws = std::mem::take(&mut self.draws);
            draws.clear();
            draws.resize(frames * channels, 0.0);
            rng.fill_tpdf(&mut draws);
            for (c, d) in self.dither.iter_mut().enumerate() {
                d.extend(draws.chunks_exact(channels).map(|f| f[c]));
            }
            self.draws = draws;
        } else {
            for d in self.dither.iter_mut() {
                d.resize(from + frames, 0.0);
            }
        }
        for (c, ch) in chunk.iter().enumerate() {
            self.x[c].extend_from_slice(ch);
            let q = &mut self.q[c];
            q.resize(from + frames, 0.0);
            quantise_into(self.quantiser, ch, &self.dither[c][from..], &mut q[from..]);
        }
        self.gain.resize(from + frames, 1.0);
        self.total += frames;
        self.check(false);
        let ready = self.checked.saturating_sub(self.delay());
        self.emit(ready, out);
    }

    /// The stream has ended: writes the rest and returns what the net did.
    pub fn finish(&mut self, out: &mut Vec<i32>) -> NetStats {
        for c in 0..self.x.len() {
            for v in [&mut self.x[c], &mut self.q[c]] {
                v.extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
            }
            self.dither[c].extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
        }
        self.gain.extend(std::iter::repeat_n(1.0, PRECISE_REACH + 1));
        self.check(true);
        // The end, read mirrored; a dip there is measured again the usual way.
        while {
            let before = self.stats.dips;
            self.edge(true);
            self.check(true);
            self.stats.dips != before
        } {}
        self.emit(self.total, out);
        let mut stats = self.stats.clone();
        stats.written_true_peak_dbtp = 20.0 * f64::from(self.peak).log10();
        stats
    }

    /// The value written for input `x` with dither `d`, as a float at full scale 1.
    #[inline]
    fn quantise(&self, x: f32, d: f64) -> f32 {
        quantised_value(self.quantiser, x, d)
    }

    fn idx(&self, frame: usize) -> usize {
        frame + PRECISE_REACH - self.base
    }

    /// Measures the frames whose right context is complete (all of them at the end), dipping
    /// where the limit is passed.
    fn check(&mut self, last: bool) {
        if !self.head_checked && (self.total >= 3 * PRECISE_REACH || last) {
            self.head_checked = true;
            self.edge(false);
        }
        let known = if last { self.total } else { self.total.saturating_sub(PRECISE_REACH) };
        // Each dip aims under the limit, so one is almost always enough; a frame that still
        // needs dip after dip is lowered to its dither's silence rather than looped on.
        let mut repeat = (usize::MAX, 0usize);
        let (mut peaks, mut one) = (std::mem::take(&mut self.scratch), Vec::new());
        while self.checked < known {
            let start = self.checked;
            let n = (known - start).min(4096);
            let first = self.idx(start);
            peaks.clear();
            peaks.resize(n, 0.0);
            one.resize(n, 0.0);
            // Frames that can pass neither the limit nor the largest peak so far change
            // nothing here, so the interpolator may skip them (its screen is exact).
            let floor = self.limit.min(self.peak);
            for ch in &self.q {
                self.interp.frame_peaks_over(ch, first, &mut one, floor);
                for (p, o) in peaks.iter_mut().zip(&one) {
                    *p = p.max(*o);
                }
            }
            let over = peaks.iter().position(|&p| p > self.limit);
            let held = over.unwrap_or(n);
            self.peak = peaks[..held].iter().fold(self.peak, |a, &v| a.max(v));
            match over {
                None => self.checked = start + n,
                Some(k) => {
                    let frame = start + k;
                    repeat = if repeat.0 == frame { (frame, repeat.1 + 1) } else { (frame, 0) };
                    let ratio = if repeat.1 < 16 { self.aim / peaks[k] } else { 0.0 };
                    self.dip(frame, ratio);
                    // Measure again from the first frame whose interpolation the dip reached.
                    self.checked = frame.saturating_sub(self.dip_reach() + PRECISE_REACH).max(self.base);
                }
            }
        }
        self.scratch = peaks;
    }

    /// Holds the start (`end` false: nothing written yet) or the end of the stream (`end`: all
    /// frames in) under the limit read with the signal mirrored beyond it
    /// ([`PeakInterpolator::mirrored_edge_peak`]), as resamplers and ffmpeg's meter extend it.
    fn edge(&mut self, end: bool) {
        let m = 3 * PRECISE_REACH;
        for round in 0..16 {
            let mut peak = 0f32;
            for ch in &self.q {
                let lo = self.idx(self.base);
                let hi = self.idx(self.total);
                let values: Vec<f32> = if end {
                    ch[hi.saturating_sub(m).max(lo)..hi].iter().rev().copied().collect()
                } else {
                    ch[lo..hi.min(lo + m)].to_vec()
                };
                peak = peak.max(self.interp.mirrored_edge_peak(&values));
            }
            if peak <= self.limit || self.total == 0 {
                self.peak = self.peak.max(peak);
                return;
            }
            let frame = if end { self.total - 1 } else { 0 };
            self.dip(frame, if round < 15 { self.aim / peak } else { 0.0 });
            self.checked = self.checked.min(frame.saturating_sub(self.dip_reach() + PRECISE_REACH)).max(self.base);
        }
    }

    /// Lowers the frames around `frame` to `ratio` times its present gain (flat over the interpolator's reach, raised
    /// cosine ramps each side; frames already written keep their gain) and quantises them again.
    fn dip(&mut self, frame: usize, ratio: f32) {
        // The frame may already be lowered: the new dip goes that much deeper.
        let ratio = (ratio * self.gain[self.idx(frame)]).clamp(0.0, 1.0);
        let flat = PRECISE_REACH + 1;
        let reach = self.dip_reach();
        let lo = frame.saturating_sub(reach).max(self.base);
        let hi = (frame + reach).min(self.total.saturating_sub(1));
        let mut deepest = 1f32;
        for f in lo..=hi {
            let dist = f.abs_diff(frame);
            let w = if dist <= flat {
                1.0
            } else {
                let t = (dist - flat) as f32 / self.ramp as f32;
                0.5 * (1.0 + (std::f32::consts::PI * t.min(1.0)).cos())
            };
            let g = 1.0 - (1.0 - ratio) * w;
            let i = self.idx(f);
            if g < self.gain[i] {
                self.gain[i] = g;
                for c in 0..self.x.len() {
                    let v = self.x[c][i] * g;
                    self.q[c][i] = self.quantise(v, self.dither[c][i]);
                }
            }
            deepest = deepest.min(self.gain[i]);
        }
        self.stats.dips += 1;
        self.stats.max_reduction_db = self.stats.max_reduction_db.max(-20.0 * f64::from(deepest.max(1e-6)).log10());
    }

    /// Writes frames up to (not including) absolute frame `until`, keeping the context the
    /// interpolator needs behind them.
    fn emit(&mut self, until: usize, out: &mut Vec<i32>) {
        let until = until.min(self.total);
        if until <= self.base {
            return;
        }
        let (a, b) = (self.idx(self.base), self.idx(until));
        self.stats.frames_lowered += self.gain[a..b].iter().filter(|&&g| g < 1.0).count();
        let channels = self.x.len();
        let at = out.len();
        out.resize(at + (b - a) * channels, 0);
        for (c, q) in self.q.iter().enumerate() {
            let frames = out[at..].chunks_exact_mut(channels).zip(&q[a..b]);
            match self.quantiser {
                Quantiser::Int(bits) => {
                    // `v` is an integer over 2^(bits − 1) (exact in an f32 up to 24 bits), so
                    // times that power of two it is the integer, exactly.
                    let scale = (1u32 << (bits - 1)) as f32;
                    frames.for_each(|(f, &v)| f[c] = (v * scale) as i32);
                }
                Quantiser::Float => frames.for_each(|(f, &v)| f[c] = v.to_bits() as i32),
            }
        }
        let drop = until - self.base;
        for c in 0..self.x.len() {
            self.x[c].drain(..drop);
            self.q[c].drain(..drop);
            self.dither[c].drain(..drop);
        }
        self.gain.drain(..drop);
        self.base = until;
    }
}

crate::dsp::fma_dispatch!(
    /// [`quantised_value`] of each `x` with its dither `d`, into `q` (equal lengths): one loop
    /// over slices, which vectorises (four lanes of f64 with AVX2).
    fn quantise_into(quantiser: Quantiser, x: &[f32], d: &[f64], q: &mut [f32]) {
        for ((q, &x), &d) in q.iter_mut().zip(x).zip(d) {
            *q = quantised_value(quantiser, x, d);
        }
    }
);

/// The value the net writes for input `x` with dither `d` under `quantiser`, as a float at full
/// scale 1 (exact: a 24-bit integer over 2^23 fits an f32).
#[inline(always)]
fn quantised_value(quantiser: Quantiser, x: f32, d: f64) -> f32 {
    match quantiser {
        Quantiser::Int(bits) => {
            // Times the inverse of a power of two: the quotient, exactly, without a division.
            let inverse_scale = 1.0 / f64::from(1u32 << (bits - 1));
            (f64::from(quantise_with(x, bits, d)) * inverse_scale) as f32
        }
        Quantiser::Float => x,
    }
}

/// Quantises `x` to a `bits`-bit integer (at most 32) with the dither value `d` (LSB): the
/// integer nearest `x · 2^(bits − 1) + d`, halves away from zero, clamped to the integer range
/// (NaN gives 0): [`crate::encode::quantise`] with its dither drawn beforehand.
///
/// Clamped before it is rounded, which gives the same integer (the bounds are integers: a value
/// past one rounds to it or further), so the rounding works in the `i32` range, where the
/// conversions are single instructions and the loop over a chunk vectorises (rounding first
/// took a 64-bit conversion and a branch per sample).
#[inline(always)]
pub fn quantise_with(x: f32, bits: u32, d: f64) -> i32 {
    let scale = f64::from(1u32 << (bits - 1));
    let v = f64::from(x) * scale + d;
    let c = v.clamp(-scale, scale - 1.0);
    let t = c as i32;
    let f = c - f64::from(t);
    let r = t + i32::from(f >= 0.5) - i32::from(f <= -0.5);
    if v.is_nan() {
        0
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::truepeak::precise_true_peak_db;

    /// Runs `channels` through a net in chunks of `chunk` frames; returns the written samples
    /// (planar, as floats at full scale 1) and the stats.
    fn through(
        channels: &[Vec<f32>],
        rate: u32,
        ceiling: f64,
        q: Quantiser,
        chunk: usize,
    ) -> (Vec<Vec<f32>>, NetStats) {
        let mut net = CeilingNet::new(rate, channels.len(), ceiling, q);
        let mut rng = DitherRng::new(7);
        let mut out = Vec::new();
        let n = channels[0].len();
        for s in (0..n).step_by(chunk) {
            let c: Vec<&[f32]> = channels.iter().map(|x| &x[s..(s + chunk).min(n)]).collect();
            net.push(&c, &mut rng, &mut out);
        }
        let stats = net.finish(&mut out);
        let k = channels.len();
        let value = |v: i32| match q {
            Quantiser::Int(bits) => v as f32 / (1u32 << (bits - 1)) as f32,
            Quantiser::Float => f32::from_bits(v as u32),
        };
        let planar = (0..k).map(|c| out.iter().skip(c).step_by(k).map(|&v| value(v)).collect()).collect();
        (planar, stats)
    }

    /// A sine at a quarter of the sample rate with 45° phase: every sample at 0.707 of the
    /// waveform's peak, so its true peak is 3 dB over its sample peak.
    fn quarter_rate_sine(n: usize, peak: f32) -> Vec<f32> {
        (0..n).map(|i| peak * (std::f32::consts::FRAC_PI_2 * i as f32 + std::f32::consts::FRAC_PI_4).sin()).collect()
    }

    /// Quantising is rounding to the nearest integer, halves away from zero, then clamping to
    /// the integer range, with NaN written as 0.
    #[test]
    fn quantising_rounds_halves_away_and_clamps() {
        let mut rng = DitherRng::new(9);
        for bits in [16, 24, 32] {
            let scale = f64::from(1u32 << (bits - 1));
            let want = |x: f32, d: f64| {
                let v = f64::from(x) * scale + d;
                if v.is_nan() {
                    0
                } else {
                    v.round().clamp(-scale, scale - 1.0) as i32
                }
            };
            let lsb = (1.0 / scale) as f32;
            let mut cases: Vec<(f32, f64)> = vec![
                (0.0, 0.5),
                (0.0, -0.5),
                (0.0, 1.5),
                (lsb, -1.5),
                (1.0, 0.0),
                (1.0, -0.5),
                (1.0 - lsb, 0.49),
                (1.0 - lsb, 0.5),
                (-1.0, -0.5),
                (-1.0, -0.51),
                (-1.0, 0.49),
                (3.0, 0.0),
                (-3.0, 0.0),
                (f32::INFINITY, 0.0),
                (f32::NEG_INFINITY, 0.0),
                (f32::NAN, 0.3),
                (f32::MAX, -0.9),
            ];
            cases.extend((0..200_000).map(|i| ((rng.next_unit() as f32 - 0.5) * 2.5, rng.tpdf() * f64::from(i % 3))));
            cases.extend((0..2000).map(|i| ((i as f32 - 1000.0) * 0.5 * lsb, 0.0)));
            for (x, d) in cases {
                assert_eq!(quantise_with(x, bits, d), want(x, d), "{bits} bits: {x} + {d} LSB");
            }
        }
    }

    #[test]
    fn a_signal_under_the_ceiling_is_written_bit_for_bit_as_plain_dither_writes_it() {
        let x: Vec<f32> = (0..20_000).map(|i| 0.5 * (i as f32 * 0.01).sin()).collect();
        let (out, stats) = through(&[x.clone(), x.clone()], 44_100, -1.0, Quantiser::Int(16), 777);
        let mut rng = DitherRng::new(7);
        for (i, &v) in x.iter().enumerate() {
            for ch in &out {
                let want = crate::encode::quantise(v, 16, &mut rng) as f32 / 32768.0;
                assert_eq!(ch[i], want, "frame {i}");
            }
        }
        assert_eq!(stats.dips, 0);
        assert_eq!(stats.frames_lowered, 0);
    }

    #[test]
    fn inter_sample_overs_are_lowered_under_the_ceiling_by_a_smooth_dip_at_every_depth() {
        // Sample peak -2 dBFS, true peak +1 dBTP: 2 dB over a -1 dBTP ceiling between samples
        // only, where a sample-peak clip would see nothing to do.
        let n = 30_000;
        let mut x = vec![0.05f32; n];
        x.iter_mut().enumerate().for_each(|(i, v)| *v *= (i as f32 * 0.003).sin());
        let burst = quarter_rate_sine(400, 1.122);
        x[10_000..10_400].copy_from_slice(&burst);
        for q in [Quantiser::Int(16), Quantiser::Int(24), Quantiser::Float] {
            for chunk in [64, 4096, n] {
                let (out, stats) = through(&[x.clone()], 48_000, -1.0, q, chunk);
                assert_eq!(out[0].len(), n);
                let tp = precise_true_peak_db(&[&out[0]]);
                assert!(tp <= -1.0 - NET_MARGIN_DB + 1e-3, "{q:?}, chunks of {chunk}: {tp} dBTP");
                assert!(stats.dips > 0 && stats.max_reduction_db > 1.5, "{stats:?}");
                // Far from the burst nothing moved (beyond the dither's last bit).
                let lsb = match q {
                    Quantiser::Int(b) => 1.5 / (1u32 << (b - 1)) as f32,
                    Quantiser::Float => 0.0,
                };
                for i in (0..9_000).chain(11_500..n) {
                    assert!((out[0][i] - x[i]).abs() <= lsb, "{q:?}: frame {i} moved");
                }
                // Only ever lowered.
                assert!((0..n).all(|i| out[0][i].abs() <= x[i].abs() + lsb), "{q:?}: a sample was raised");
            }
        }
    }

    #[test]
    fn a_full_scale_square_is_held_under_the_ceiling_by_no_more_gain_reduction_than_it_needs() {
        let x: Vec<f32> = (0..44_100).map(|i| if (i / 441) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let (out, stats) = through(&[x.clone(), x], 44_100, -1.0, Quantiser::Int(24), 1000);
        let tp = precise_true_peak_db(&[&out[0], &out[1]]);
        assert!(tp <= -1.0 - NET_MARGIN_DB + 1e-3, "{tp}");
        // The stats count every reading that held, so they may read a little over what was
        // finally written, never under it, and never over the limit.
        assert!(stats.written_true_peak_dbtp >= tp - 1e-3, "{stats:?} vs {tp}");
        assert!(stats.written_true_peak_dbtp <= -1.0 - NET_MARGIN_DB + 1e-3, "{stats:?}");
        // The square's plateaus are over the ceiling themselves, so the net lowers it all: by
        // what the plateau and its edges' overshoot need (1 dB ceiling, 0.15 dB margin, the
        // edges' Gibbs overshoot), not by the fallback's silence.
        assert!(stats.max_reduction_db < 4.0, "{stats:?}");
        assert!(out[0][220].abs() > 0.5, "{}", out[0][220]);
    }
}
