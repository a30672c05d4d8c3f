//! 8× polyphase oversampling for nonlinear stages (the saturator), applied only where needed.
//!
//! A waveshaper makes harmonics; at the original rate those above Nyquist fold back as
//! inharmonic aliases. Run at 8× the rate, the harmonics that matter lie below the oversampled
//! Nyquist and are removed by the decimation filter before they can fold. One zero-phase
//! Kaiser-windowed low-pass (passband to 0.40·fs, stopband from 0.60·fs, about 100 dB down) serves
//! both as the interpolator and as the decimator. Its cutoff is exactly half the original rate, so
//! it is a Nyquist filter: the interpolated points at the original instants are the input
//! samples themselves and need no arithmetic.
//!
//! Saturation only touches peaks, so the caller works on the *residual* `shape(x) − x`: it is zero
//! wherever the signal stays below the shaper's knee, and only the spans where it is not are
//! oversampled ([`Oversampler::upsample_span`], then [`Oversampler::decimate_add_span`]). The
//! linear part never passes through the filters at all, so it comes out bit-identical.

/// Oversampling factor.
pub const FACTOR: usize = 8;
/// Stopband attenuation the filter is designed for, dB.
const STOPBAND_DB: f64 = 100.0;
/// Passband edge and stopband start as fractions of the original sample rate.
/// (A saturator's residual above 0.40·fs, 17.6 kHz at 44.1 kHz, may be attenuated: it is
/// distortion. Images of a 15 kHz tone at 44.1 kHz sit at 0.66·fs, inside the stopband.)
const PASS_EDGE: f64 = 0.40;
const STOP_EDGE: f64 = 0.60;

/// The shared filter, in the two layouts the two directions need.
#[derive(Debug, Clone)]
pub struct Oversampler {
    /// Zero-phase taps at the oversampled rate, `2·half + 1` of them, DC gain 1.
    taps: Vec<f32>,
    half: usize,
    /// Interpolator phases, transposed: `lanes[j][p]` weighs input `q − reach + j` for output
    /// `q·FACTOR + p`, so that the eight outputs after an input sample are eight lanes summed
    /// side by side (no sum across lanes per point).
    lanes: Vec<[f32; FACTOR]>,
    /// Input samples each side an interpolated point depends on.
    reach: usize,
}

impl Default for Oversampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Oversampler {
    /// Designs the saturator's filter (Kaiser window, length from Kaiser's formula).
    pub fn new() -> Self {
        Self::design(PASS_EDGE, STOP_EDGE, STOPBAND_DB)
    }

    /// A filter with its passband to `pass_edge`·fs and its stopband from `stop_edge`·fs
    /// (symmetric about fs/2, so the filter stays a Nyquist filter), `stopband_db` down.
    pub fn design(pass_edge: f64, stop_edge: f64, stopband_db: f64) -> Self {
        let l = FACTOR as f64;
        let transition = (stop_edge - pass_edge) / l; // cycles per oversampled sample
        let len = ((stopband_db - 7.95) / (14.36 * transition)).ceil() as usize + 1;
        let half = len / 2;
        let beta = 0.1102 * (stopband_db - 8.7);
        let cutoff = 0.5 * (pass_edge + stop_edge) / l;
        let i0b = super::truepeak::bessel_i0(beta);
        let mut taps64: Vec<f64> = (0..=2 * half)
            .map(|i| {
                let t = i as f64 - half as f64;
                let sinc = if t == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * std::f64::consts::PI * cutoff * t).sin() / (std::f64::consts::PI * t)
                };
                let r = t / half as f64;
                sinc * super::truepeak::bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0b
            })
            .collect();
        let sum: f64 = taps64.iter().sum();
        taps64.iter_mut().for_each(|t| *t /= sum);
        let reach = half / FACTOR + 1;
        let phases: Vec<Vec<f32>> = (0..FACTOR)
            .map(|p| {
                (0..=2 * reach)
                    .map(|j| {
                        // Output q·L + p, input q − reach + j: distance (reach − j)·L + p.
                        let d = (reach as i64 - j as i64) * FACTOR as i64 + p as i64;
                        let idx = d + half as i64;
                        if idx >= 0 && (idx as usize) < taps64.len() {
                            (taps64[idx as usize] * l) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        let lanes = (0..=2 * reach).map(|j| std::array::from_fn(|p: usize| phases[p][j])).collect();
        Self { taps: taps64.iter().map(|&t| t as f32).collect(), half, lanes, reach }
    }

    /// Input samples on each side of a span that its oversampled values depend on, and that its
    /// decimated residual spills onto.
    pub fn reach(&self) -> usize {
        self.reach
    }

    /// Interpolates `x` (zero outside its ends) at 8× for input positions `start..end`: writes
    /// `(end − start)·FACTOR` values into `out`, `out[(q − start)·FACTOR + p]` at time `q + p/8`.
    pub fn upsample_span(&self, x: &[f32], start: usize, end: usize, out: &mut Vec<f32>) {
        out.clear();
        out.resize((end - start) * FACTOR, 0.0);
        let mut window = vec![0f32; 2 * self.reach + 1];
        for q in start..end {
            self.window(x, q, &mut window);
            let base = (q - start) * FACTOR;
            let points = self.interpolate(&window);
            out[base..base + FACTOR].copy_from_slice(&points);
            // A Nyquist filter: the point at the input instant is the input sample itself.
            out[base] = x[q];
        }
    }

    /// The largest |value| of the 8× interpolation of `x` between samples `i` and `i + 1`
    /// (the 7 points strictly between them). `window` is scratch space, reused across calls.
    pub fn between_peak(&self, x: &[f32], i: usize, window: &mut Vec<f32>) -> f32 {
        window.resize(2 * self.reach + 1, 0.0);
        self.window(x, i, window);
        self.interpolate(window).iter().skip(1).fold(0f32, |peak, v| peak.max(v.abs()))
    }

    /// The eight interpolated points after the window's centre (lane `p` at time `p/8`), each
    /// summed over the window in order, the eight side by side (vectorises).
    #[inline]
    fn interpolate(&self, window: &[f32]) -> [f32; FACTOR] {
        let mut acc = [0f32; FACTOR];
        for (&w, lane) in window.iter().zip(&self.lanes) {
            for (a, &t) in acc.iter_mut().zip(lane) {
                *a += w * t;
            }
        }
        acc
    }

    /// The inputs `q − reach ..= q + reach` that the interpolated points after sample `q` weigh,
    /// zero beyond the ends of `x`, into `window` (`2·reach + 1` long).
    fn window(&self, x: &[f32], q: usize, window: &mut [f32]) {
        let first = q as i64 - self.reach as i64;
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

    /// Low-pass filters the oversampled `residual` (position `start` at index 0, as written by
    /// [`Self::upsample_span`]), takes every 8th value and adds `scale ×` it to `y` at positions
    /// `start − reach .. end + reach` (clipped to `y`).
    pub fn decimate_add_span(&self, residual: &[f32], start: usize, scale: f32, y: &mut [f32]) {
        let m_len = residual.len() as i64;
        let end = start + residual.len().div_ceil(FACTOR);
        let lo = start.saturating_sub(self.reach);
        let hi = (end + self.reach).min(y.len());
        let half = self.half as i64;
        let l = FACTOR as i64;
        // Only outputs whose filter reaches a non-zero residual value need computing: runs of
        // non-zero values further apart than the filter is long are handled one at a time.
        for (r0, r1) in nonzero_runs(residual, 2 * self.half + FACTOR) {
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
                *out += scale * dot(r, &self.taps[t0..t0 + r.len()]);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Magnitude response of the zero-phase taps at `f` (fraction of the original rate), dB.
    fn response_db(o: &Oversampler, f: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * f / FACTOR as f64;
        let h: f64 =
            o.taps.iter().enumerate().map(|(i, t)| f64::from(*t) * (w * (i as f64 - o.half as f64)).cos()).sum();
        20.0 * h.abs().max(1e-20).log10()
    }

    #[test]
    fn filter_is_flat_in_the_passband_and_100_db_down_in_the_stopband() {
        let o = Oversampler::new();
        for i in 0..=40 {
            let f = 0.01 * f64::from(i);
            assert!(response_db(&o, f).abs() < 0.01, "passband ripple at {f} fs: {} dB", response_db(&o, f));
        }
        for i in 60..=400 {
            let f = 0.01 * f64::from(i);
            assert!(response_db(&o, f) < -95.0, "stopband at {f} fs: {} dB", response_db(&o, f));
        }
    }

    #[test]
    fn upsampling_reproduces_the_input_at_the_original_instants_and_interpolates_a_sine() {
        let o = Oversampler::new();
        let f = 0.2; // cycles per original sample
        let x: Vec<f32> = (0..400).map(|i| (2.0 * std::f64::consts::PI * f * i as f64).sin() as f32).collect();
        let mut up = Vec::new();
        o.upsample_span(&x, 100, 300, &mut up);
        for (m, v) in up.iter().enumerate() {
            let t = 100.0 + m as f64 / FACTOR as f64;
            let want = (2.0 * std::f64::consts::PI * f * t).sin();
            assert!((f64::from(*v) - want).abs() < 1e-4, "at t = {t}: {v} vs {want}");
        }
    }

    #[test]
    fn up_then_down_of_a_band_limited_signal_is_the_identity() {
        let o = Oversampler::new();
        let x: Vec<f32> = (0..600).map(|i| (0.3 * i as f32).sin() * 0.5 + (0.05 * i as f32).cos() * 0.3).collect();
        let mut up = Vec::new();
        o.upsample_span(&x, 0, x.len(), &mut up);
        let mut y = vec![0f32; x.len()];
        o.decimate_add_span(&up, 0, 1.0, &mut y);
        // Away from the ends (where the zero padding is not band-limited) the round trip is exact.
        for i in 100..500 {
            assert!((y[i] - x[i]).abs() < 2e-4, "sample {i}: {} vs {}", y[i], x[i]);
        }
    }
}
#[cfg(test)]
mod meter_tests {
    use super::*;
    #[test]
    fn wide_design_interpolates_a_15_khz_sine() {
        let o = Oversampler::design(0.46, 0.54, 60.0);
        let f = 15_000.0 / 44_100.0;
        let x: Vec<f32> = (0..2000).map(|i| (0.5 * (2.0 * std::f64::consts::PI * f * i as f64).sin()) as f32).collect();
        let mut up = Vec::new();
        o.upsample_span(&x, 500, 1500, &mut up);
        let mut worst = 0f64;
        for (m, v) in up.iter().enumerate() {
            let t = 500.0 + m as f64 / FACTOR as f64;
            let want = 0.5 * (2.0 * std::f64::consts::PI * f * t).sin();
            worst = worst.max((f64::from(*v) - want).abs());
        }
        let mut w = Vec::new();
        let peak = (500..1500).map(|i| o.between_peak(&x, i, &mut w)).fold(0f32, f32::max);
        assert!(worst < 2e-3, "worst {worst}, peak {peak}, taps {} half {} reach {}", o.taps.len(), o.half, o.reach);
        assert!((peak - 0.5).abs() < 2e-3, "peak {peak}");
    }
}
