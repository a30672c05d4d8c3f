//! The saturator as it was before it was made faster (today's code path kept as the reference
//! for `super::tests`): the same curve, the same anti-aliasing, the same filters, evaluated the
//! straightforward way (libm's `exp` and `ln_1p` for every antiderivative, one input sample or
//! one output at a time through the filters).

use super::{shape, side_smoothing_reach, Quality, SaturationStats, SIDE_SMOOTHING_S};
use crate::audio::{db_to_lin, AudioBuffer};
use crate::dsp::oversample::{Oversampler, FACTOR};
use crate::dsp::truepeak::{envelope_quantile_db, peak_envelope};
use crate::settings::SaturationSettings;

/// Safety margin on the span detection, dB: a span is oversampled where the 4× true-peak envelope
/// comes within this much of the knee (the 8× points can exceed the 4× envelope slightly).
const DETECTION_MARGIN_DB: f64 = 0.75;

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

/// `super::saturate_with` as it was before the saturator was made faster.
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
            upsample_span(os, ch, a, b, up);
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
                decimate_add_span(os, l, reach, c.mix, &mut delta);
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
                    decimate_add_span(os, up, a, c.mix, ch);
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

// ---- the oversampler's loops as they were --------------------------------------------------

fn upsample_span(os: &Oversampler, x: &[f32], start: usize, end: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize((end - start) * FACTOR, 0.0);
    let mut buf = vec![0f32; 2 * os.reach() + 1];
    for q in start..end {
        window(os, x, q, &mut buf);
        let base = (q - start) * FACTOR;
        let points = interpolate(os, &buf);
        out[base..base + FACTOR].copy_from_slice(&points);
        // A Nyquist filter: the point at the input instant is the input sample itself.
        out[base] = x[q];
    }
}

#[inline]
fn interpolate(os: &Oversampler, window: &[f32]) -> [f32; FACTOR] {
    let mut acc = [0f32; FACTOR];
    for (&w, lane) in window.iter().zip(os.parts().1) {
        for (a, &t) in acc.iter_mut().zip(lane) {
            *a += w * t;
        }
    }
    acc
}

/// The inputs `q − reach ..= q + reach` that the interpolated points after sample `q` weigh,
/// zero beyond the ends of `x`, into `window` (`2·reach + 1` long).
fn window(os: &Oversampler, x: &[f32], q: usize, window: &mut [f32]) {
    let first = q as i64 - os.reach() as i64;
    let n = x.len() as i64;
    if first >= 0 && first + window.len() as i64 <= n {
        window.copy_from_slice(&x[first as usize..first as usize + window.len()]);
    } else {
        for (j, w) in window.iter_mut().enumerate() {
            let k = first + j as i64;
            *w = if k >= 0 && k < n { x[k as usize] } else { 0.0 };
        }
    }
}

fn decimate_add_span(os: &Oversampler, residual: &[f32], start: usize, scale: f32, y: &mut [f32]) {
    let m_len = residual.len() as i64;
    let end = start + residual.len().div_ceil(FACTOR);
    let lo = start.saturating_sub(os.reach());
    let hi = (end + os.reach()).min(y.len());
    let half = os.parts().2 as i64;
    let l = FACTOR as i64;
    // Only outputs whose filter reaches a non-zero residual value need computing: runs of
    // non-zero values further apart than the filter is long are handled one at a time.
    for (r0, r1) in nonzero_runs(residual, 2 * os.parts().2 + FACTOR) {
        let n_lo = (start as i64 + (r0 as i64 - half).div_euclid(l)).max(lo as i64) as usize;
        let n_hi = (start as i64 + (r1 as i64 + half).div_euclid(l) + 1).min(hi as i64).max(0) as usize;
        for (n, out) in y.iter_mut().enumerate().take(n_hi).skip(n_lo) {
            // Residual index m (time start + m/8) meets tap h[(n − start)·8 − m] = h[m − (n − start)·8].
            let centre = (n as i64 - start as i64) * l;
            let m0 = (centre - half).max(0);
            let m1 = (centre + half + 1).min(m_len);
            if m0 >= m1 {
                continue;
            }
            let t0 = (m0 - centre + half) as usize;
            let r = &residual[m0 as usize..m1 as usize];
            *out += scale * dot(r, &os.parts().0[t0..t0 + r.len()]);
        }
    }
}

/// Runs `[first, last]` (inclusive) of non-zero values in `x`, merged when fewer than `gap`
/// zeros apart.
fn nonzero_runs(x: &[f32], gap: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, v) in x.iter().enumerate() {
        if *v == 0.0 {
            continue;
        }
        match runs.last_mut() {
            Some(last) if i - last.1 <= gap => last.1 = i,
            _ => runs.push((i, i)),
        }
    }
    runs
}

/// Dot product in eight independent lanes (vectorises; summation order fixed, so deterministic).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}
