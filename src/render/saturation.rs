//! Soft-clipping saturator: rounds off the loudest peaks before the limiter so the limiter has
//! less to do (less pumping and dulling at the same loudness).
//!
//! The chain is `× drive → soft clip at the limiter's ceiling → × limiter drive → limiter`, the
//! way a clipper sits in front of a limiter in a mastering rack: the saturator's drive decides how
//! far the loudest peaks are pushed into the clipper, the limiter's drive how far the clipped
//! signal is pushed into the limiter (so the limiter's gain reduction at peaks is roughly its own
//! drive).
//!
//! The gain is linked across channels (computed from the larger of them at each instant), so
//! saturation leaves the stereo image as it was. In stereo the mid takes that gain as it is and
//! the side takes the mid's energy change over the surrounding millisecond, at its own rate
//! (that gain is smooth): turned down with the peaks as much, but not multiplied with every
//! clipped sample's gain, which would spray a centred drum's broadband clipping over whatever is
//! wide (tests/saturation.rs: a wide pad's treble at -24.5 dB re the side with the gain per
//! sample, -63 dB smoothed; strict_vs_quite: +2.5 dB of side at 16 kHz).
//!
//! The curve is linear up to a knee (`knee_db` under the clip level), then a tanh that approaches
//! the clip level: value, slope and curvature are continuous at the knee, so the harmonics it
//! makes fall off fast (as 1/n⁴) and quiet material passes untouched. It runs 8× oversampled
//! ([`crate::dsp::oversample`]) with first-order antiderivative anti-aliasing on the residual
//! `shape(x) − x`, which is non-zero only around the peaks that reach the knee; everything else is
//! never filtered and comes out bit-identical.

use crate::audio::{db_to_lin, AudioBuffer};
use crate::dsp::oversample::{Oversampler, FACTOR};
use crate::dsp::truepeak::{envelope_quantile_db, peak_envelope};
use crate::settings::SaturationSettings;

/// Safety margin on the span detection, dB: a span is oversampled where the 4× true-peak envelope
/// comes within this much of the knee (the 8× points can exceed the 4× envelope slightly).
const DETECTION_MARGIN_DB: f64 = 0.75;

/// Half the support of the side's gain smoothing, seconds: three cascaded centred moving
/// averages, each 2/3 ms long (a sinc³ response: under -33 dB above 1.7 kHz, under -58 dB above
/// 4.5 kHz).
pub const SIDE_SMOOTHING_S: f64 = 0.001;

/// How many samples at `rate_hz` the side's smoothing reaches on either side of a gain change.
pub fn side_smoothing_reach(rate_hz: u32) -> usize {
    (SIDE_SMOOTHING_S * f64::from(rate_hz)).ceil() as usize + 1
}

/// What the saturator did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaturationStats {
    /// Fraction of samples inside oversampled spans (0..1).
    pub active_fraction: f64,
    /// How far the loudest peaks (99.9th percentile of the true-peak envelope) were driven past
    /// the clip level, dB (negative: they stayed under it).
    pub peak_drive_db: f64,
}

/// The transfer curve for a unit clip level: identity up to `knee` (linear, < 1), then a tanh that
/// approaches ±1.
#[inline]
pub fn shape(u: f32, knee: f32) -> f32 {
    let a = u.abs();
    if a <= knee {
        return u;
    }
    let span = 1.0 - knee;
    (knee + span * ((a - knee) / span).tanh()).copysign(u)
}

/// The antiderivative of the residual `shape(u) − u` (zero below the knee), for antiderivative
/// anti-aliasing. Even in `u`.
#[inline]
fn residual_integral(u: f64, knee: f64) -> f64 {
    let a = u.abs();
    if a <= knee {
        return 0.0;
    }
    let span = 1.0 - knee;
    let z = (a - knee) / span;
    // ln cosh z, stable for large z.
    let ln_cosh = z + (-2.0 * z).exp().ln_1p() - std::f64::consts::LN_2;
    knee * (a - knee) + span * span * ln_cosh - 0.5 * (a * a - knee * knee)
}

/// First-order antiderivative anti-aliasing of the residual between two consecutive oversampled
/// points: the residual's average over the straight line from `u0` to `u1` instead of its value
/// at `u1`. That is a one-sample box filter on the *continuous* waveshaped signal, with a zero at
/// the oversampled rate exactly where the harmonics that would fold back sit (the 23rd harmonic
/// of 15 kHz folds from 345 kHz to 7.8 kHz at 8× 44.1 kHz): about 30 dB less aliasing for a
/// 1/16-sample delay of the distortion products. f64: the difference of nearly equal
/// antiderivatives loses digits.
#[inline]
fn adaa(u0: f64, g0: f64, u1: f64, g1: f64, knee: f64) -> f64 {
    let du = u1 - u0;
    if du.abs() > 1e-7 {
        (g1 - g0) / du
    } else {
        let m = 0.5 * (u0 + u1);
        if m.abs() <= knee {
            0.0
        } else {
            f64::from(shape(m as f32, knee as f32)) - m
        }
    }
}

/// How [`saturate_with`] runs the curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// 8× oversampled with anti-aliasing: what the master gets.
    Oversampled,
    /// At the signal's own rate (with the same antiderivative anti-aliasing): the same levels and
    /// tone within a few hundredths of a dB, some aliasing, many times faster. For the closed
    /// loop's intermediate passes, which are measured but never written.
    Draft,
}

/// Applies drive and saturation to `audio` in place. `clip_dbtp` is the clip level (the limiter
/// ceiling). A disabled stage changes nothing.
pub fn saturate(audio: &mut AudioBuffer, s: &SaturationSettings, clip_dbtp: f64) -> SaturationStats {
    saturate_with(audio, s, clip_dbtp, Quality::Oversampled)
}

/// [`saturate`] at the given [`Quality`].
pub fn saturate_with(
    audio: &mut AudioBuffer,
    s: &SaturationSettings,
    clip_dbtp: f64,
    quality: Quality,
) -> SaturationStats {
    if !s.enabled {
        return SaturationStats::default();
    }
    let drive = db_to_lin(s.drive_db) as f32;
    for ch in audio.channels.iter_mut() {
        ch.iter_mut().for_each(|x| *x *= drive);
    }
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    let env = peak_envelope(&planes);
    let clip = db_to_lin(clip_dbtp) as f32;
    let knee = db_to_lin(-s.knee_db) as f32;
    let detect = knee * clip * db_to_lin(-DETECTION_MARGIN_DB) as f32;
    let os = Oversampler::new();
    let spans = active_spans(&env, detect, 2 * os.reach() + 2);
    let active: usize = spans.iter().map(|(a, b)| b - a).sum();
    let mix = s.mix.clamp(0.0, 1.0) as f32;
    let stereo = audio.channels.len() == 2;
    let curve = Curve { inv_clip: 1.0 / f64::from(clip), knee: f64::from(knee), mix, stereo };
    let stats = SaturationStats {
        active_fraction: if env.is_empty() { 0.0 } else { active as f64 / env.len() as f64 },
        peak_drive_db: envelope_quantile_db(&env, 0.999) - clip_dbtp,
    };
    let energies = if quality == Quality::Draft {
        let mut all: Vec<&mut [f32]> = audio.channels.iter_mut().map(Vec::as_mut_slice).collect();
        saturate_at_own_rate(&mut all, &spans, &curve)
    } else {
        // Two threads, each on its own half of the spans: the halves are cut in a gap between
        // two spans, wider than the filters reach, so neither half reads or writes the other's
        // samples.
        let reach = os.reach();
        let half_work = active / 2;
        let mut done = 0;
        let cut = spans.iter().position(|(a, b)| {
            done += b - a;
            done >= half_work
        });
        match cut {
            Some(k) if k + 1 < spans.len() && active > 1 << 15 => {
                let at = spans[k].1 + reach + 1;
                let (mut first, mut second): (Vec<&mut [f32]>, Vec<&mut [f32]>) =
                    audio.channels.iter_mut().map(|c| c.split_at_mut(at)).unzip();
                let (os, curve) = (&os, &curve);
                let (mut a, b) = std::thread::scope(|scope| {
                    let a = scope.spawn(|| saturate_spans(&mut first, &spans[..=k], 0, os, curve));
                    let b = saturate_spans(&mut second, &spans[k + 1..], at, os, curve);
                    (a.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), b)
                });
                a.extend(b);
                a
            }
            _ => {
                let mut all: Vec<&mut [f32]> = audio.channels.iter_mut().map(Vec::as_mut_slice).collect();
                saturate_spans(&mut all, &spans, 0, &os, &curve)
            }
        }
    };
    if let [l, r] = audio.channels.as_mut_slice() {
        turn_side_down(l, r, &energies, audio.sample_rate_hz, mix);
    }
    stats
}

/// The mid's energy before and after the clipper at each sample of one span (means over the
/// oversampled points), for the side's gain.
#[derive(Debug, Default)]
struct SpanEnergy {
    /// First sample of the span in the signal.
    start: usize,
    before: Vec<f32>,
    after: Vec<f32>,
}

/// Gives the side the mid's energy change over the surrounding millisecond,
/// `sqrt(smooth(after) / smooth(before))`, at the signal's own rate (the gain is smooth: it
/// needs no oversampling). The side is turned down with the peaks as much as the mid, so the
/// image stays as it was; but a side gain that followed every clipped sample would multiply
/// whatever is wide (a pad, a reverb) with the clipper's broadband gain movements, spraying them
/// over the side's treble. Outside the spans the mid's energy is read from the signal and is
/// the same before and after.
fn turn_side_down(l: &mut [f32], r: &mut [f32], spans: &[SpanEnergy], rate_hz: u32, mix: f32) {
    let n = l.len().min(r.len());
    let pad = side_smoothing_reach(rate_hz);
    let box_len = ((2.0 * SIDE_SMOOTHING_S / 3.0 * f64::from(rate_hz)).round() as usize).max(1) | 1;
    let (mut before, mut after, mut tmp) = (Vec::new(), Vec::new(), Vec::new());
    let mut k = 0;
    while k < spans.len() {
        // A region: consecutive spans whose smoothing reaches overlap, with the reach around.
        let first = k;
        let mut end = spans[k].start + spans[k].before.len();
        while k + 1 < spans.len() && spans[k + 1].start < end + 2 * pad {
            k += 1;
            end = spans[k].start + spans[k].before.len();
        }
        let (ra, rb) = (spans[first].start.saturating_sub(pad), (end + pad).min(n));
        k += 1;
        before.clear();
        before.extend((ra..rb).map(|i| {
            let m = 0.5 * (l[i] + r[i]);
            m * m
        }));
        after.clear();
        after.extend_from_slice(&before);
        for span in &spans[first..k] {
            let at = span.start - ra;
            let len = span.before.len().min(rb - span.start);
            before[at..at + len].copy_from_slice(&span.before[..len]);
            after[at..at + len].copy_from_slice(&span.after[..len]);
        }
        smooth(&mut before, box_len, &mut tmp);
        smooth(&mut after, box_len, &mut tmp);
        for (i, (b, a)) in (ra..rb).zip(before.iter().zip(&after)) {
            if *b <= 1e-20 {
                continue;
            }
            let change = (a / b).max(0.0).sqrt() - 1.0;
            let ds = mix * change * 0.5 * (l[i] - r[i]);
            l[i] += ds;
            r[i] -= ds;
        }
    }
}

/// [`Quality::Draft`]: the linked curve with antiderivative anti-aliasing on the samples
/// themselves. In stereo the mid takes it (the side: [`turn_side_down`], from the energies
/// returned).
fn saturate_at_own_rate(channels: &mut [&mut [f32]], spans: &[(usize, usize)], c: &Curve) -> Vec<SpanEnergy> {
    let mut energies = Vec::new();
    for &(a, b) in spans {
        let value = |chs: &[&mut [f32]], i: usize| {
            chs.iter().fold(0f32, |acc, x| if x[i].abs() > acc.abs() { x[i] } else { acc })
        };
        let mut state = AntiAliased::new(f64::from(value(channels, a)) * c.inv_clip, c.knee);
        let mut energy = SpanEnergy { start: a, ..SpanEnergy::default() };
        for i in a..b {
            let ratio = state.step(f64::from(value(channels, i)) * c.inv_clip).unwrap_or(0.0);
            match &mut *channels {
                [l, r] if c.stereo => {
                    let mid = 0.5 * (l[i] + r[i]);
                    let dm = c.mix * ratio * mid;
                    l[i] += dm;
                    r[i] += dm;
                    energy.before.push(mid * mid);
                    energy.after.push((1.0 + ratio) * (1.0 + ratio) * mid * mid);
                }
                _ => {
                    let gain = 1.0 + c.mix * ratio;
                    for ch in channels.iter_mut() {
                        ch[i] *= gain;
                    }
                }
            }
        }
        if c.stereo {
            energies.push(energy);
        }
    }
    energies
}

/// `x` through three cascaded centred moving averages of `len` (odd) points, zero outside it:
/// a smooth bell (nearly Gaussian) whose support is `3 (len − 1)` points.
fn smooth(x: &mut Vec<f32>, len: usize, tmp: &mut Vec<f32>) {
    let half = len / 2;
    let n = x.len();
    for _ in 0..3 {
        tmp.clear();
        // The window for output i is [i − half, i + half].
        let mut sum: f64 = x[..half.min(n)].iter().map(|&v| f64::from(v)).sum();
        for i in 0..n {
            if i + half < n {
                sum += f64::from(x[i + half]);
            }
            tmp.push((sum / len as f64) as f32);
            if i >= half {
                sum -= f64::from(x[i - half]);
            }
        }
        std::mem::swap(x, tmp);
    }
}

/// The residual of the curve along a sequence of values (unit clip level), with antiderivative
/// anti-aliasing, as a ratio of each value: `Some(r)` means the value becomes `value × (1 + r)`.
struct AntiAliased {
    prev_u: f64,
    prev_g: f64,
    knee: f64,
}

impl AntiAliased {
    fn new(first: f64, knee: f64) -> Self {
        Self { prev_u: first, prev_g: residual_integral(first, knee), knee }
    }

    #[inline]
    fn step(&mut self, u: f64) -> Option<f32> {
        if u.abs() <= self.knee && self.prev_u.abs() <= self.knee {
            (self.prev_u, self.prev_g) = (u, 0.0);
            return None;
        }
        let g = residual_integral(u, self.knee);
        let res = adaa(self.prev_u, self.prev_g, u, g, self.knee);
        (self.prev_u, self.prev_g) = (u, g);
        (res != 0.0 && u != 0.0).then(|| (res / u) as f32)
    }
}

/// The curve's constants.
struct Curve {
    inv_clip: f64,
    knee: f64,
    mix: f32,
    /// Two channels: the mid takes the curve's gain and the side [`turn_side_down`]'s.
    stereo: bool,
}

/// Saturates `spans` (sample positions in the whole signal) of `channels`, slices that start at
/// sample `offset` of it. Linked across channels: one gain curve, from the larger channel at each
/// oversampled point, drives every channel (as a linked limiter does), so the stereo image is
/// not changed; in stereo the side takes it smoothed ([`turn_side_down`]).
fn saturate_spans(
    channels: &mut [&mut [f32]],
    spans: &[(usize, usize)],
    offset: usize,
    os: &Oversampler,
    c: &Curve,
) -> Vec<SpanEnergy> {
    let mut ups: Vec<Vec<f32>> = vec![Vec::new(); channels.len()];
    let mut ratio: Vec<f32> = Vec::new();
    let mut delta: Vec<f32> = Vec::new();
    let mut energies = Vec::new();
    for &(a, b) in spans {
        let (a, b) = (a - offset, b - offset);
        for (ch, up) in channels.iter().zip(ups.iter_mut()) {
            os.upsample_span(ch, a, b, up);
        }
        // The residual of the curve, with antiderivative anti-aliasing, as a ratio of the value:
        // the gain change every channel gets. The value is the larger channel's, with its sign:
        // through a zero crossing a hard-driven signal can jump from far below to far above the
        // knee between two points, and the anti-aliasing must see that path (a magnitude would
        // fold it back on itself).
        ratio.clear();
        ratio.resize(ups[0].len(), 0.0);
        let value = |m: usize| ups.iter().fold(0f32, |acc, u| if u[m].abs() > acc.abs() { u[m] } else { acc });
        let mut state = AntiAliased::new(f64::from(value(0)) * c.inv_clip, c.knee);
        let mut any = false;
        for (m, r) in ratio.iter_mut().enumerate() {
            if let Some(x) = state.step(f64::from(value(m)) * c.inv_clip) {
                *r = x;
                any = true;
            }
        }
        if !any {
            continue;
        }
        match ups.as_mut_slice() {
            [l, r] if c.stereo => {
                // The mid's correction, the same in both channels; the mid's energy before and
                // after, per sample, for the side.
                let mut energy = SpanEnergy { start: a + offset, ..SpanEnergy::default() };
                let scale = 1.0 / FACTOR as f32;
                let points = l.chunks_exact_mut(FACTOR).zip(r.chunks_exact(FACTOR)).zip(ratio.chunks_exact(FACTOR));
                for ((lc, rc), gc) in points {
                    let (mut before, mut after) = (0f32, 0f32);
                    for ((x, y), g) in lc.iter_mut().zip(rc).zip(gc) {
                        let mid = 0.5 * (*x + *y);
                        before += mid * mid;
                        after += (1.0 + g) * (1.0 + g) * mid * mid;
                        *x = g * mid;
                    }
                    energy.before.push(before * scale);
                    energy.after.push(after * scale);
                }
                // Filtered once (into `delta`, which covers the filters' reach on both sides),
                // added to both channels.
                let reach = os.reach();
                delta.clear();
                delta.resize(b - a + 2 * reach, 0.0);
                os.decimate_add_span(l, reach, c.mix, &mut delta);
                for ch in channels.iter_mut() {
                    let first = a.saturating_sub(reach);
                    let skip = first + reach - a;
                    for (y, d) in ch[first..].iter_mut().zip(&delta[skip..]) {
                        if *d != 0.0 {
                            *y += d;
                        }
                    }
                }
                energies.push(energy);
            }
            _ => {
                for (ch, up) in channels.iter_mut().zip(ups.iter_mut()) {
                    up.iter_mut().zip(&ratio).for_each(|(v, r)| *v *= r);
                    os.decimate_add_span(up, a, c.mix, ch);
                }
            }
        }
    }
    energies
}

/// Spans `[start, end)` where `env` exceeds `threshold`, merged when closer than `min_gap`
/// (so the filtering of one never overlaps the reading of the next: work in place is safe).
fn active_spans(env: &[f32], threshold: f32, min_gap: usize) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < env.len() {
        if env[i] <= threshold {
            i += 1;
            continue;
        }
        let start = i;
        while i < env.len() && env[i] > threshold {
            i += 1;
        }
        match spans.last_mut() {
            Some(last) if start < last.1 + min_gap => last.1 = i,
            _ => spans.push((start, i)),
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_is_the_identity_below_the_knee_and_never_reaches_the_clip_level() {
        let knee = 0.5;
        for i in 0..=100 {
            let u = i as f32 * 0.005;
            assert_eq!(shape(u, knee), u);
            assert_eq!(shape(-u, knee), -u);
        }
        let mut last = 0.5;
        for i in 1..1000 {
            let u = 0.5 + i as f32 * 0.01;
            let y = shape(u, knee);
            assert!(y > last - 1e-7 && y <= 1.0, "u {u}: {y}");
            last = y;
        }
        // Slope and curvature are continuous at the knee.
        let d = 1e-3f32;
        let slope = (shape(knee + d, knee) - shape(knee, knee)) / d;
        assert!((slope - 1.0).abs() < 2e-3, "slope just over the knee {slope}");
    }

    #[test]
    fn spans_merge_when_close_and_stay_apart_when_far() {
        let mut env = vec![0f32; 1000];
        env[100] = 1.0;
        env[110] = 1.0;
        env[500] = 1.0;
        assert_eq!(active_spans(&env, 0.5, 20), vec![(100, 111), (500, 501)]);
    }
}
