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
/// anti-aliasing. Even in `u`. `span` is `1 − knee`, `inv_span` its reciprocal.
///
/// Written without branches or library calls ([`ln_cosh`]), so that eight of them side by side
/// vectorise: the anti-aliasing evaluates it at every oversampled point over the knee, which on
/// a loud master is most of the song. Its absolute error is a few units in the last place of
/// an f64 (against libm's `exp` and `ln_1p`: under 2e-15, tested), which is what the
/// anti-aliasing's difference quotient needs.
#[inline(always)]
fn residual_integral(u: f64, knee: f64, span: f64, inv_span: f64) -> f64 {
    let a = u.abs();
    let z = ((a - knee) * inv_span).max(0.0);
    let g = knee * (a - knee) + span * span * ln_cosh(z) - 0.5 * (a * a - knee * knee);
    if a <= knee {
        0.0
    } else {
        g
    }
}

/// `1.5 · 2^52`: adding it rounds an f64 under 2^51 in magnitude to an integer, which then sits
/// in the low bits of the sum's representation.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
/// ln 2 in two parts (fdlibm's): the high part has 21 trailing zero bits, so `k · LN2_HI` is
/// exact for the exponents used here.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// `1/n!`, n = 0..=13: the Taylor series of `e^r`.
const EXP_TAYLOR: [f64; 14] = {
    let mut c = [1.0; 14];
    let mut n = 1;
    let mut fact = 1.0;
    while n < 14 {
        fact *= n as f64;
        c[n] = 1.0 / fact;
        n += 1;
    }
    c
};
/// `1/(2n + 1)`, n = 0..=10: `atanh(s)/s` as a series in `s²`.
const ATANH_TAYLOR: [f64; 11] = {
    let mut c = [1.0; 11];
    let mut n = 1;
    while n < 11 {
        c[n] = 1.0 / (2 * n + 1) as f64;
        n += 1;
    }
    c
};

/// The Taylor polynomial of `e^r` ([`EXP_TAYLOR`]) by Estrin's scheme: four dependent levels
/// instead of Horner's thirteen, so the evaluations of neighbouring points overlap.
#[inline(always)]
fn estrin_exp(r: f64) -> f64 {
    let c = &EXP_TAYLOR;
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let q: [f64; 7] = std::array::from_fn(|k| c[2 * k] + c[2 * k + 1] * r);
    let s0 = q[0] + q[1] * r2;
    let s1 = q[2] + q[3] * r2;
    let s2 = q[4] + q[5] * r2;
    (s0 + s1 * r4) + (s2 + q[6] * r4) * r8
}

/// The series of `atanh(s)/s` in `t = s²` ([`ATANH_TAYLOR`]) by Estrin's scheme.
#[inline(always)]
fn estrin_atanh(t: f64) -> f64 {
    let c = &ATANH_TAYLOR;
    let t2 = t * t;
    let t4 = t2 * t2;
    let t8 = t4 * t4;
    let q: [f64; 5] = std::array::from_fn(|k| c[2 * k] + c[2 * k + 1] * t);
    let a0 = q[0] + q[1] * t2;
    let a1 = q[2] + q[3] * t2;
    let a2 = q[4] + c[10] * t2;
    (a0 + a1 * t4) + a2 * t8
}

/// `ln cosh z` for `z ≥ 0` as `z − ln 2 + ln(1 + e^(−2z))`, stable for large `z`, with no
/// branches and no library calls: `e^(−2z)` by reduction to `2^k · e^r`, `|r| ≤ ln 2 / 2`, and
/// the Taylor series of `e^r` to `r^13` (remainder under 1e-17); `ln y` for `y = 1 + e^(−2z)` in
/// `[1, 2]` by halving `y` over √2 and `2 atanh(s)`, `s = (y − 1)/(y + 1)`, `|s| ≤ 0.172`, to
/// `s^21` (remainder under 1e-17). Rounding `1 + e^(−2z)` costs at most half an ulp of 2,
/// which is the absolute accuracy the antiderivative needs.
#[inline(always)]
fn ln_cosh(z: f64) -> f64 {
    // e^x, x = −2z (clamped where e^x < 1e-307 no longer counts against 1).
    let x = (-2.0 * z).max(-708.0);
    let m = x * std::f64::consts::LOG2_E + ROUND_MAGIC;
    let k = m - ROUND_MAGIC;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = estrin_exp(r);
    // 2^k from k's bits: `m`'s low bits hold k (two's complement, −1021 ≤ k ≤ 0).
    let k_bits = m.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let w = p * f64::from_bits(k_bits.wrapping_add(1023) << 52);
    // ln(1 + w), w in (0, 1].
    let y = 1.0 + w;
    let high = y > std::f64::consts::SQRT_2;
    let f = if high { 0.5 * y } else { y } - 1.0;
    let s = f / (2.0 + f);
    let s2 = s * s;
    let q = estrin_atanh(s2);
    let ln1p = 2.0 * s * q + if high { std::f64::consts::LN_2 } else { 0.0 };
    z + ln1p - std::f64::consts::LN_2
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
    let curve = Curve::new(clip, knee, mix, stereo);
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
    let (mut before, mut after, mut tmp, mut tmp2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
        smooth_pair(&mut before, &mut after, box_len, &mut tmp, &mut tmp2);
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
    #[inline(always)]
    fn run(channels: &mut [&mut [f32]], spans: &[(usize, usize)], c: &Curve) -> Vec<SpanEnergy> {
        let mut energies = Vec::new();
        let (mut values, mut ratio) = (Vec::new(), Vec::new());
        for &(a, b) in spans {
            values.clear();
            values.resize(b - a, 0f32);
            for ch in channels.iter() {
                linked_values(&ch[a..b], &mut values);
            }
            ratio.clear();
            ratio.resize(b - a, 0f32);
            let mut prev = c.start(values[0]);
            c.ratios(&values, &mut prev, &mut ratio);
            match &mut *channels {
                [l, r] if c.stereo => {
                    let mut energy = SpanEnergy { start: a, ..SpanEnergy::default() };
                    for ((l, r), g) in l[a..b].iter_mut().zip(&mut r[a..b]).zip(&ratio) {
                        let mid = 0.5 * (*l + *r);
                        let dm = c.mix * g * mid;
                        *l += dm;
                        *r += dm;
                        energy.before.push(mid * mid);
                        energy.after.push((1.0 + g) * (1.0 + g) * mid * mid);
                    }
                    energies.push(energy);
                }
                _ => {
                    for ch in channels.iter_mut() {
                        for (x, g) in ch[a..b].iter_mut().zip(&ratio) {
                            *x *= 1.0 + c.mix * g;
                        }
                    }
                }
            }
        }
        energies
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2")]
        fn avx2(channels: &mut [&mut [f32]], spans: &[(usize, usize)], c: &Curve) -> Vec<SpanEnergy> {
            run(channels, spans, c)
        }
        // SAFETY: the CPU supports AVX2 (checked at run time just above).
        return unsafe { avx2(channels, spans, c) };
    }
    run(channels, spans, c)
}

/// Whether the CPU has AVX2: the saturator's loops then run on 8-lane (f32) and 4-lane (f64)
/// registers. Multiplies and adds stay separate (no FMA).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Folds one channel into the linked value at each point: the largest |value| over the
/// channels, with its sign (the first channel's on a tie), zero where all are zero. `values`
/// starts zeroed and takes the channels in order.
#[inline(always)]
fn linked_values(plane: &[f32], values: &mut [f32]) {
    for (v, &x) in values.iter_mut().zip(plane) {
        if x.abs() > v.abs() {
            *v = x;
        }
    }
}

/// `x` and `y` (as long as each other) each through three cascaded centred moving averages of
/// `len` (odd) points, zero outside them: a smooth bell (nearly Gaussian) whose support is
/// `3 (len − 1)` points. The two run in one loop, so their two running sums (each a chain of
/// dependent additions, in the order a single one would take) overlap.
fn smooth_pair(x: &mut Vec<f32>, y: &mut Vec<f32>, len: usize, tx: &mut Vec<f32>, ty: &mut Vec<f32>) {
    let half = len / 2;
    let n = x.len();
    assert_eq!(y.len(), n, "smooth_pair: lengths");
    let l = len as f64;
    for _ in 0..3 {
        tx.clear();
        tx.resize(n, 0.0);
        ty.clear();
        ty.resize(n, 0.0);
        // The window for output i is [i − half, i + half]: it takes in x[i + half] while that
        // exists and lets go of x[i − half] once that exists.
        let mut sx: f64 = x[..half.min(n)].iter().map(|&v| f64::from(v)).sum();
        let mut sy: f64 = y[..half.min(n)].iter().map(|&v| f64::from(v)).sum();
        let takes_in = n.saturating_sub(half);
        for i in 0..half.min(n) {
            if i < takes_in {
                sx += f64::from(x[i + half]);
                sy += f64::from(y[i + half]);
            }
            tx[i] = (sx / l) as f32;
            ty[i] = (sy / l) as f32;
        }
        if half < takes_in {
            let (xa, xb) = (&x[..takes_in - half], &x[2 * half..]);
            let (ya, yb) = (&y[..takes_in - half], &y[2 * half..]);
            let outs = tx[half..takes_in].iter_mut().zip(&mut ty[half..takes_in]);
            for ((((ox, oy), &xi), &xo), (&yi, &yo)) in outs.zip(xb).zip(xa).zip(yb.iter().zip(ya)) {
                sx += f64::from(xi);
                sy += f64::from(yi);
                *ox = (sx / l) as f32;
                *oy = (sy / l) as f32;
                sx -= f64::from(xo);
                sy -= f64::from(yo);
            }
        }
        for i in half.max(takes_in)..n {
            tx[i] = (sx / l) as f32;
            ty[i] = (sy / l) as f32;
            sx -= f64::from(x[i - half]);
            sy -= f64::from(y[i - half]);
        }
        std::mem::swap(x, tx);
        std::mem::swap(y, ty);
    }
}

/// What the anti-aliasing remembers of the previous point: its value (unit clip level) and the
/// residual's antiderivative there.
#[derive(Debug, Clone, Copy)]
struct Previous {
    u: f64,
    g: f64,
}

/// Points the anti-aliasing screens and evaluates together: one input sample's eight at 8×.
const CHUNK: usize = FACTOR;

/// The smallest step between two points over which [`adaa`] takes the difference quotient.
const ADAA_MIN_STEP: f64 = 1e-7;

/// The curve's constants.
struct Curve {
    inv_clip: f64,
    knee: f64,
    /// `1 − knee`, and its reciprocal.
    span: f64,
    inv_span: f64,
    /// The largest |value| (f32, before scaling by `inv_clip`) whose point is at or under the
    /// knee: a chunk of points under it, after a point at or under the knee, has no residual.
    screen: f32,
    mix: f32,
    /// Two channels: the mid takes the curve's gain and the side [`turn_side_down`]'s.
    stereo: bool,
}

impl Curve {
    fn new(clip: f32, knee: f32, mix: f32, stereo: bool) -> Self {
        let (inv_clip, knee) = (1.0 / f64::from(clip), f64::from(knee));
        // Exactly the points the f64 comparison `|v| · inv_clip ≤ knee` keeps under the knee
        // (that product is monotone in |v|).
        let under = |v: f32| f64::from(v) * inv_clip <= knee;
        let mut screen = (knee / inv_clip) as f32;
        while screen > 0.0 && !under(screen) {
            screen = f32::from_bits(screen.to_bits() - 1);
        }
        while under(f32::from_bits(screen.to_bits() + 1)) {
            screen = f32::from_bits(screen.to_bits() + 1);
        }
        Self { inv_clip, knee, span: 1.0 - knee, inv_span: 1.0 / (1.0 - knee), screen, mix, stereo }
    }

    /// The anti-aliasing's start on `first`: the first point's step is from itself.
    fn start(&self, first: f32) -> Previous {
        let u = f64::from(first) * self.inv_clip;
        Previous { u, g: residual_integral(u, self.knee, self.span, self.inv_span) }
    }

    /// The residual of the curve along consecutive linked values (`values`, after `prev`), with
    /// antiderivative anti-aliasing, as a ratio of each value: the value becomes
    /// `value × (1 + ratio)`. Writes every ratio; returns whether any is non-zero.
    #[inline(always)]
    fn ratios(&self, values: &[f32], prev: &mut Previous, ratio: &mut [f32]) -> bool {
        let mut any = false;
        for (v, r) in values.chunks(RATIO_BLOCK).zip(ratio.chunks_mut(RATIO_BLOCK)) {
            any |= self.block_ratios(v, prev, r);
        }
        any
    }

    /// [`Self::ratios`] for up to [`RATIO_BLOCK`] values, in three passes over chunks of
    /// [`CHUNK`] points. First every value is scaled and every chunk screened: one whose points
    /// all stay at or under the knee, after a point that did, has no residual. Then the
    /// antiderivative of every point of the other chunks, side by side (branch-free and
    /// independent from chunk to chunk, so the vector units are kept busy). Then the difference
    /// quotients, the rare pair of points too close for one by [`adaa`] itself.
    #[inline(always)]
    fn block_ratios(&self, v: &[f32], prev: &mut Previous, ratio: &mut [f32]) -> bool {
        let n = v.len();
        let chunks = n.div_ceil(CHUNK);
        let mut u = [0f64; RATIO_BLOCK];
        for (u, &v) in u.iter_mut().zip(v) {
            *u = f64::from(v) * self.inv_clip;
        }
        // A short last chunk repeats its last value (those lanes are never written out).
        let last = u[n - 1];
        u[n..chunks * CHUNK].fill(last);
        let mut over = [false; RATIO_BLOCK / CHUNK];
        for (k, (o, vc)) in over.iter_mut().zip(v.chunks(CHUNK)).enumerate() {
            let before = if k == 0 { prev.u } else { u[k * CHUNK - 1] };
            let loud = vc.iter().fold(false, |loud, x| loud | (x.abs() > self.screen));
            *o = loud || before.abs() > self.knee;
        }
        let mut g = [0f64; RATIO_BLOCK];
        for ((gc, uc), _) in g.chunks_exact_mut(CHUNK).zip(u.chunks_exact(CHUNK)).zip(&over).filter(|(_, o)| **o) {
            for (g, &u) in gc.iter_mut().zip(uc) {
                *g = residual_integral(u, self.knee, self.span, self.inv_span);
            }
        }
        let mut any = false;
        for (k, &o) in over[..chunks].iter().enumerate() {
            let at = k * CHUNK;
            let len = CHUNK.min(n - at);
            if !o {
                ratio[at..at + len].fill(0.0);
                continue;
            }
            let (u0_first, g0_first) = if k == 0 { (prev.u, prev.g) } else { (u[at - 1], g[at - 1]) };
            let uc: &[f64; CHUNK] = u[at..at + CHUNK].try_into().expect("a chunk");
            let gc: &[f64; CHUNK] = g[at..at + CHUNK].try_into().expect("a chunk");
            let u0: [f64; CHUNK] = std::array::from_fn(|i| if i == 0 { u0_first } else { uc[i - 1] });
            let g0: [f64; CHUNK] = std::array::from_fn(|i| if i == 0 { g0_first } else { gc[i - 1] });
            // The difference quotient over the value, in one division: the ratio.
            let mut q = [0f64; CHUNK];
            let mut near = false;
            for i in 0..CHUNK {
                let du = uc[i] - u0[i];
                // Both points at or under the knee: no residual (and no quotient of zeros).
                let over = uc[i].abs() > self.knee || u0[i].abs() > self.knee;
                let far = du.abs() > ADAA_MIN_STEP;
                let dg = gc[i] - g0[i];
                let quotient = dg / (du * uc[i]);
                q[i] = if over && far && dg != 0.0 && uc[i] != 0.0 { quotient } else { 0.0 };
                near |= over && !far && i < len;
            }
            if near {
                for i in 0..len {
                    if (uc[i].abs() > self.knee || u0[i].abs() > self.knee) && (uc[i] - u0[i]).abs() <= ADAA_MIN_STEP {
                        let res = adaa(u0[i], g0[i], uc[i], gc[i], self.knee);
                        q[i] = if res != 0.0 && uc[i] != 0.0 { res / uc[i] } else { 0.0 };
                    }
                }
            }
            for (r, &q) in ratio[at..at + len].iter_mut().zip(&q) {
                *r = q as f32;
                any |= q != 0.0;
            }
        }
        *prev = Previous { u: u[n - 1], g: g[n - 1] };
        any
    }
}

/// Points per block of [`Curve::ratios`]: its scratch lives on the stack.
const RATIO_BLOCK: usize = 256;

/// Input samples per block of [`saturate_spans`]: each block is interpolated, run through the
/// curve and turned into residual while its points are in the L1 cache.
const SPAN_BLOCK: usize = 32;

/// Saturates `spans` (sample positions in the whole signal) of `channels`, slices that start at
/// sample `offset` of it. Linked across channels: one gain curve, from the larger channel at each
/// oversampled point, drives every channel (as a linked limiter does), so the stereo image is
/// not changed; in stereo the side takes it smoothed ([`turn_side_down`]).
///
/// One pass over each span, [`SPAN_BLOCK`] input samples at a time: interpolate every channel at
/// 8×, take the linked value and the curve's ratio at each point, and write the residual (in
/// stereo the mid's, with its energy before and after); then the residual is filtered back down
/// and added.
fn saturate_spans(
    channels: &mut [&mut [f32]],
    spans: &[(usize, usize)],
    offset: usize,
    os: &Oversampler,
    c: &Curve,
) -> Vec<SpanEnergy> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2")]
        fn avx2(
            channels: &mut [&mut [f32]],
            spans: &[(usize, usize)],
            offset: usize,
            os: &Oversampler,
            c: &Curve,
        ) -> Vec<SpanEnergy> {
            spans_run(channels, spans, offset, os, c)
        }
        // SAFETY: the CPU supports AVX2 (checked at run time just above).
        return unsafe { avx2(channels, spans, offset, os, c) };
    }
    spans_run(channels, spans, offset, os, c)
}

#[inline(always)]
fn spans_run(
    channels: &mut [&mut [f32]],
    spans: &[(usize, usize)],
    offset: usize,
    os: &Oversampler,
    c: &Curve,
) -> Vec<SpanEnergy> {
    const POINTS: usize = SPAN_BLOCK * FACTOR;
    let stereo = c.stereo && channels.len() == 2;
    let mut up = vec![[0f32; POINTS]; channels.len()];
    let (mut values, mut ratio) = ([0f32; POINTS], [0f32; POINTS]);
    // The residual to filter down: the mid's in stereo, each channel's otherwise.
    let mut residual: Vec<Vec<f32>> = vec![Vec::new(); if stereo { 1 } else { channels.len() }];
    let mut delta: Vec<f32> = Vec::new();
    let mut energies = Vec::new();
    let scale = 1.0 / FACTOR as f32;
    for &(a, b) in spans {
        let (a, b) = (a - offset, b - offset);
        for r in residual.iter_mut() {
            r.clear();
            r.resize((b - a) * FACTOR, 0.0);
        }
        let mut energy = SpanEnergy { start: a + offset, ..SpanEnergy::default() };
        let mut prev: Option<Previous> = None;
        let mut any = false;
        for q0 in (a..b).step_by(SPAN_BLOCK) {
            let q1 = (q0 + SPAN_BLOCK).min(b);
            let len = (q1 - q0) * FACTOR;
            for (ch, u) in channels.iter().zip(up.iter_mut()) {
                os.upsample_into(ch, q0, q1, &mut u[..len]);
            }
            values[..len].fill(0.0);
            for u in &up {
                linked_values(&u[..len], &mut values[..len]);
            }
            let prev = prev.get_or_insert_with(|| c.start(values[0]));
            any |= c.ratios(&values[..len], prev, &mut ratio[..len]);
            let at = (q0 - a) * FACTOR;
            if stereo {
                // The mid's correction (the same in both channels), and its energy before and
                // after, per sample, for the side.
                let points = up[0][..len].chunks_exact(FACTOR).zip(up[1][..len].chunks_exact(FACTOR));
                let out = residual[0][at..at + len].chunks_exact_mut(FACTOR);
                for (((lc, rc), gc), oc) in points.zip(ratio[..len].chunks_exact(FACTOR)).zip(out) {
                    let (mut before, mut after) = (0f32, 0f32);
                    for (((x, y), g), o) in lc.iter().zip(rc).zip(gc).zip(oc) {
                        let mid = 0.5 * (*x + *y);
                        before += mid * mid;
                        after += (1.0 + g) * (1.0 + g) * mid * mid;
                        *o = g * mid;
                    }
                    energy.before.push(before * scale);
                    energy.after.push(after * scale);
                }
            } else {
                for (u, r) in up.iter().zip(residual.iter_mut()) {
                    for ((o, v), g) in r[at..at + len].iter_mut().zip(&u[..len]).zip(&ratio[..len]) {
                        *o = v * g;
                    }
                }
            }
        }
        if !any {
            continue;
        }
        if stereo {
            // Filtered once (into `delta`, which covers the filters' reach on both sides),
            // added to both channels.
            let reach = os.reach();
            delta.clear();
            delta.resize(b - a + 2 * reach, 0.0);
            os.decimate_add_span(&residual[0], reach, c.mix, &mut delta);
            let first = a.saturating_sub(reach);
            let skip = first + reach - a;
            for ch in channels.iter_mut() {
                for (y, d) in ch[first..].iter_mut().zip(&delta[skip..]) {
                    if *d != 0.0 {
                        *y += d;
                    }
                }
            }
            energies.push(energy);
        } else {
            for (ch, r) in channels.iter_mut().zip(&residual) {
                os.decimate_add_span(r, a, c.mix, ch);
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
#[path = "saturation_reference.rs"]
mod reference;

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

    /// libm's `ln cosh z` as the saturator wrote it before [`ln_cosh`].
    fn ln_cosh_libm(z: f64) -> f64 {
        z + (-2.0 * z).exp().ln_1p() - std::f64::consts::LN_2
    }

    #[test]
    fn ln_cosh_agrees_with_libm_to_a_few_units_in_the_last_place() {
        // Dense near 0 (where the knee is), then out to where e^(-2z) no longer counts.
        let mut worst = 0f64;
        for i in 0..200_000 {
            let z = if i < 100_000 { f64::from(i) * 1e-5 } else { f64::from(i - 100_000) * 4e-3 + 1.0 };
            let err = (ln_cosh(z) - ln_cosh_libm(z)).abs();
            // Beyond the ln(1 + e^(-2z)) term both round z + … − ln 2 alike, to within an ulp of z.
            let ulp_z = f64::EPSILON * z.max(1.0);
            assert!(err <= 2e-15 + 2.0 * ulp_z, "ln cosh {z}: {} vs {}", ln_cosh(z), ln_cosh_libm(z));
            worst = worst.max(err / z.max(1.0));
        }
        println!("ln cosh: worst |error| {worst:.2e} (relative to max(1, z))");
        assert_eq!(ln_cosh(0.0), 0.0);
        assert!(ln_cosh(1e6).is_finite());
    }

    #[test]
    fn the_screen_is_exactly_the_knee_comparison() {
        for (clip_db, knee_db) in [(-1.0, 6.0), (-0.3, 0.5), (-20.0, 20.0), (0.0, 3.0)] {
            let clip = db_to_lin(clip_db) as f32;
            let knee = db_to_lin(-knee_db) as f32;
            let c = Curve::new(clip, knee, 1.0, true);
            let under = |v: f32| f64::from(v) * c.inv_clip <= c.knee;
            assert!(under(c.screen));
            assert!(!under(f32::from_bits(c.screen.to_bits() + 1)));
        }
    }

    /// A deterministic music-like stereo signal: tones, a square-ish bass, a sparse kick whose
    /// onset jumps across zero, and noise bursts, with a wide part in the side.
    fn music(frames: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        let mut noise = move || {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let mut l = Vec::with_capacity(frames);
        let mut r = Vec::with_capacity(frames);
        for i in 0..frames {
            let t = i as f32 / 44_100.0;
            let bass = 0.25 * (t * 55.0 * std::f32::consts::TAU).sin().signum() * (1.0 - (t * 2.0).fract());
            let kick = if i % 11_025 < 2_000 { 0.6 * (-((i % 11_025) as f32) / 600.0).exp() } else { 0.0 };
            let tone =
                0.2 * (t * 440.0 * std::f32::consts::TAU).sin() + 0.1 * (t * 15_000.0 * std::f32::consts::TAU).sin();
            let burst = if (i / 4_410) % 3 == 0 { 0.5 } else { 0.05 };
            let (n1, n2) = (noise(), noise());
            let mid = bass + kick + tone + burst * n1;
            l.push(mid + 0.1 * n2);
            r.push(mid - 0.1 * n2);
        }
        vec![l, r]
    }

    /// The largest |difference| between the saturator and its reference (today's code path as it
    /// was before it was made faster), and whether their statistics agree.
    fn worst_difference(channels: Vec<Vec<f32>>, s: &SaturationSettings, quality: Quality) -> (f32, usize) {
        let drive = db_to_lin(s.drive_db) as f32;
        let driven: Vec<Vec<f32>> = channels.iter().map(|c| c.iter().map(|v| v * drive).collect()).collect();
        let mut fast = AudioBuffer { sample_rate_hz: 44_100, channels };
        let mut slow = fast.clone();
        let a = saturate_with(&mut fast, s, -1.0, quality);
        let b = reference::saturate_with(&mut slow, s, -1.0, quality);
        assert_eq!(a, b, "statistics");
        // The case saturates: the reference changed many samples.
        let clipped: usize =
            slow.channels.iter().zip(&driven).map(|(o, d)| o.iter().zip(d).filter(|(o, d)| o != d).count()).sum();
        println!(
            "  active {:.3}, peaks {:+.1} dB past the clip level, {clipped} samples saturated",
            a.active_fraction, a.peak_drive_db
        );
        assert!(clipped > 100, "the case does not saturate");
        let mut worst = 0f32;
        let mut differing = 0;
        for (x, y) in fast.channels.iter().zip(&slow.channels) {
            for (p, q) in x.iter().zip(y) {
                worst = worst.max((p - q).abs());
                differing += usize::from(p != q);
            }
        }
        (worst, differing)
    }

    /// Half the step of a 24-bit output (full scale ±1): a difference under it cannot move a
    /// written sample by more than one step, and is 138 dB under full scale.
    const HALF_24_BIT_STEP: f32 = 1.0 / (1u32 << 24) as f32;

    #[test]
    fn the_fast_saturator_matches_the_reference_within_half_a_24_bit_step() {
        // Stereo music from just touching the knee to 18 dB into the clipper (past the solver's
        // --allow-crush cap), both qualities; mono and three channels (the per-channel path);
        // spans that reach the buffer's ends; a long hard-driven stretch that the saturator
        // splits over two threads.
        let frames = 3 * 44_100;
        let mut cases: Vec<(String, Vec<Vec<f32>>, f64, f64)> = Vec::new();
        for drive in [-6.0, 0.0, 6.0, 12.0, 18.0] {
            cases.push((format!("stereo, drive {drive} dB"), music(frames, 1), drive, 6.0));
        }
        cases.push(("stereo, soft knee 12 dB".into(), music(frames, 2), 9.0, 12.0));
        cases.push(("stereo, hard knee 0.5 dB".into(), music(frames, 3), 9.0, 0.5));
        let m = music(frames, 4);
        cases.push(("mono".into(), vec![m[0].clone()], 9.0, 6.0));
        cases.push(("three channels".into(), vec![m[0].clone(), m[1].clone(), music(frames, 5)[0].clone()], 9.0, 6.0));
        // Loud from the first sample to the last.
        let edge: Vec<Vec<f32>> = music(2_000, 6).into_iter().map(|c| c.iter().map(|v| v + 0.5).collect()).collect();
        cases.push(("spans at the ends".into(), edge, 6.0, 6.0));
        for (name, channels, drive_db, knee_db) in cases {
            let s = SaturationSettings { enabled: true, drive_db, knee_db, mix: 0.8 };
            for quality in [Quality::Oversampled, Quality::Draft] {
                let (worst, differing) = worst_difference(channels.clone(), &s, quality);
                println!("{name}, {quality:?}: worst |difference| {worst:.2e}, {differing} samples differ");
                assert!(worst < HALF_24_BIT_STEP, "{name}, {quality:?}: {worst:e}");
            }
        }
    }
}
