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
//! the side takes the mid's energy change over the surrounding millisecond (`SideGain`): turned
//! down with the peaks as much, but not multiplied with every clipped sample's gain, which would
//! spray a centred drum's broadband clipping over whatever is wide (tests/saturation.rs: a
//! wide pad's treble at -24.5 dB re the side with the gain per sample, -64 dB smoothed;
//! strict_vs_quite: +2.5 dB of side at 16 kHz). The curve is linear up to a knee (`knee_db`
//! under the clip level), then a tanh that approaches
//! the clip level: value, slope and curvature are continuous at the knee, so the harmonics it
//! makes fall off fast (as 1/n⁴) and quiet material passes untouched. It runs 8× oversampled
//! ([`crate::dsp::oversample`]) with first-order antiderivative anti-aliasing on the residual
//! `shape(x) − x`, which is non-zero only around the peaks that reach the knee; everything else is
//! never filtered and comes out bit-identical.

use crate::audio::{db_to_lin, AudioBuffer};
use crate::dsp::oversample::Oversampler;
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
    let mut spans = active_spans(&env, detect, 2 * os.reach() + 2);
    let stereo = audio.channels.len() == 2;
    if stereo {
        // The side's smoothed gain reaches past the samples that reach the knee.
        spans = widen_spans(&spans, side_smoothing_reach(audio.sample_rate_hz), env.len(), 2 * os.reach() + 2);
    }
    let active: usize = spans.iter().map(|(a, b)| b - a).sum();
    let mix = s.mix.clamp(0.0, 1.0) as f32;
    let box_len = |factor: usize| {
        let n = (2.0 * SIDE_SMOOTHING_S / 3.0 * f64::from(audio.sample_rate_hz) * factor as f64).round() as usize;
        n.max(1) | 1
    };
    let side_box = stereo.then(|| (box_len(1), box_len(crate::dsp::oversample::FACTOR)));
    let curve = Curve { inv_clip: 1.0 / f64::from(clip), knee: f64::from(knee), mix, side_box };
    let stats = SaturationStats {
        active_fraction: if env.is_empty() { 0.0 } else { active as f64 / env.len() as f64 },
        peak_drive_db: envelope_quantile_db(&env, 0.999) - clip_dbtp,
    };
    if quality == Quality::Draft {
        let mut all: Vec<&mut [f32]> = audio.channels.iter_mut().map(Vec::as_mut_slice).collect();
        saturate_at_own_rate(&mut all, &spans, &curve);
        return stats;
    }
    // Two threads, each on its own half of the spans: the halves are cut in a gap between two
    // spans, wider than the filters reach, so neither half reads or writes the other's samples.
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
            std::thread::scope(|scope| {
                scope.spawn(|| saturate_spans(&mut first, &spans[..=k], 0, os, curve));
                saturate_spans(&mut second, &spans[k + 1..], at, os, curve);
            });
        }
        _ => {
            let mut all: Vec<&mut [f32]> = audio.channels.iter_mut().map(Vec::as_mut_slice).collect();
            saturate_spans(&mut all, &spans, 0, &os, &curve);
        }
    }
    stats
}

/// [`Quality::Draft`]: the linked curve with antiderivative anti-aliasing on the samples
/// themselves.
fn saturate_at_own_rate(channels: &mut [&mut [f32]], spans: &[(usize, usize)], c: &Curve) {
    let mut ratio: Vec<f32> = Vec::new();
    let mut side_gain = SideGain::default();
    for &(a, b) in spans {
        let value = |chs: &[&mut [f32]], i: usize| {
            chs.iter().fold(0f32, |acc, x| if x[i].abs() > acc.abs() { x[i] } else { acc })
        };
        let mut state = AntiAliased::new(f64::from(value(channels, a)) * c.inv_clip, c.knee);
        ratio.clear();
        ratio.extend((a..b).map(|i| state.step(f64::from(value(channels, i)) * c.inv_clip).unwrap_or(0.0)));
        match (&mut *channels, c.side_box) {
            ([l, r], Some((side_box, _))) => {
                let soft = side_gain.ratios(&ratio, (a..b).map(|i| 0.5 * (l[i] + r[i])), side_box);
                for ((i, rm), rs) in (a..b).zip(&ratio).zip(soft) {
                    let (mid, side) = (0.5 * (l[i] + r[i]), 0.5 * (l[i] - r[i]));
                    let (dm, ds) = (c.mix * rm * mid, c.mix * rs * side);
                    l[i] += dm + ds;
                    r[i] += dm - ds;
                }
            }
            _ => {
                for (i, rm) in (a..b).zip(&ratio) {
                    let gain = 1.0 + c.mix * rm;
                    for ch in channels.iter_mut() {
                        ch[i] *= gain;
                    }
                }
            }
        }
    }
}

/// The side's gain change for a span: the change in the mid's energy over the surrounding
/// millisecond, `sqrt(smooth((1 + r)² m²) / smooth(m²)) − 1`. The side is turned down with the
/// peaks as much as the mid, so the image stays as it was; but a side gain that followed every
/// clipped sample would multiply whatever is wide (a pad, a reverb) with the clipper's
/// broadband gain movements, spraying them over the side's treble.
#[derive(Default)]
struct SideGain {
    energy_out: Vec<f32>,
    energy_in: Vec<f32>,
    tmp: Vec<f32>,
}

impl SideGain {
    /// `ratio`: the mid's gain changes; `mid`: the mid at the same points; `len`: the moving
    /// averages' length (odd). Returns the side's gain changes.
    fn ratios(&mut self, ratio: &[f32], mid: impl Iterator<Item = f32>, len: usize) -> &[f32] {
        self.energy_out.clear();
        self.energy_in.clear();
        for (r, m) in ratio.iter().zip(mid) {
            let e = m * m;
            self.energy_in.push(e);
            self.energy_out.push((1.0 + r) * (1.0 + r) * e);
        }
        smooth(&mut self.energy_out, len, &mut self.tmp);
        smooth(&mut self.energy_in, len, &mut self.tmp);
        for (out, e) in self.energy_out.iter_mut().zip(&self.energy_in) {
            *out = if *e > 1e-20 { (*out / e).max(0.0).sqrt() - 1.0 } else { 0.0 };
        }
        &self.energy_out
    }
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
    /// Stereo: the side smoothing's moving-average length at the own rate and oversampled.
    side_box: Option<(usize, usize)>,
}

/// Saturates `spans` (sample positions in the whole signal) of `channels`, slices that start at
/// sample `offset` of it. Linked across channels: one gain curve, from the larger channel at each
/// oversampled point, drives every channel (as a linked limiter does), so the stereo image is
/// not changed; in stereo the side takes it smoothed (`SideGain`).
fn saturate_spans(channels: &mut [&mut [f32]], spans: &[(usize, usize)], offset: usize, os: &Oversampler, c: &Curve) {
    let mut ups: Vec<Vec<f32>> = vec![Vec::new(); channels.len()];
    let mut ratio: Vec<f32> = Vec::new();
    let mut side_gain = SideGain::default();
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
        match (ups.as_mut_slice(), c.side_box) {
            ([l, r], Some((_, side_box))) => {
                let soft = side_gain.ratios(&ratio, l.iter().zip(r.iter()).map(|(x, y)| 0.5 * (x + y)), side_box);
                for (((x, y), rm), rs) in l.iter_mut().zip(r.iter_mut()).zip(&ratio).zip(soft) {
                    let (dm, ds) = (rm * 0.5 * (*x + *y), rs * 0.5 * (*x - *y));
                    (*x, *y) = (dm + ds, dm - ds);
                }
            }
            _ => ups.iter_mut().for_each(|up| up.iter_mut().zip(&ratio).for_each(|(v, r)| *v *= r)),
        }
        for (ch, up) in channels.iter_mut().zip(ups.iter_mut()) {
            os.decimate_add_span(up, a, c.mix, ch);
        }
    }
}

/// `spans` each widened by `pad` on both sides (within `0..len`), merged where they come closer
/// than `min_gap`.
fn widen_spans(spans: &[(usize, usize)], pad: usize, len: usize, min_gap: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for &(a, b) in spans {
        let (a, b) = (a.saturating_sub(pad), (b + pad).min(len));
        match out.last_mut() {
            Some(last) if a < last.1 + min_gap => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
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
