//! Second-order IIR sections ("biquads") designed with the formulas of Robert
//! Bristow-Johnson's *Audio EQ Cookbook*.
//!
//! Units used throughout this module:
//!
//! * frequencies (`freq_hz`, `sample_rate_hz`) are in hertz,
//! * gains (`gain_db`) and magnitudes returned by [`BiquadCoeffs::magnitude_db`]
//!   are in decibels (20·log10 of the amplitude ratio),
//! * `q` is the dimensionless quality factor of the cookbook (for the shelves
//!   the "Q form" is used, i.e. `alpha = sin(w0) / (2·Q)`).
//!
//! Coefficients are always normalised so that `a0 == 1`; the transfer function
//! is
//!
//! ```text
//!         b0 + b1·z⁻¹ + b2·z⁻²
//! H(z) = ----------------------
//!          1 + a1·z⁻¹ + a2·z⁻²
//! ```
//!
//! Filtering is done in transposed direct form II with `f64` state. A
//! [`Biquad`] holds the state of exactly one channel; multi-channel processing
//! uses one [`Biquad`] per channel.

use std::f64::consts::PI;

/// Smallest power ratio used when converting a squared magnitude to decibels,
/// so that exact zeros (e.g. a high-pass at DC) map to -300 dB instead of -inf.
const MIN_POWER: f64 = 1e-30;

/// Largest |gain| in dB accepted by [`BiquadCoeffs::design`]; larger values are
/// clamped (they would overflow `10^(gain/40)` long before being useful).
const MAX_DESIGN_GAIN_DB: f64 = 120.0;

/// Smallest Q accepted by the designers; smaller (or non-positive) values are
/// clamped to this.
const MIN_DESIGN_Q: f64 = 1e-3;

/// Largest Q accepted by the designers; larger values are clamped to this.
const MAX_DESIGN_Q: f64 = 1e3;

/// Highest design frequency as a fraction of the sample rate. The cookbook
/// formulas degenerate exactly at Nyquist (0.5), so frequencies are clamped
/// just below it.
const MAX_DESIGN_FREQ_RATIO: f64 = 0.4999;

/// Lowest design frequency as a fraction of the sample rate.
const MIN_DESIGN_FREQ_RATIO: f64 = 1e-7;

/// The EQ filter shapes that can be designed with [`BiquadCoeffs::design`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// Cookbook low shelf: `gain_db` below `freq_hz`, 0 dB above, `gain_db / 2`
    /// at `freq_hz`.
    LowShelf,
    /// Cookbook high shelf: 0 dB below `freq_hz`, `gain_db` above, `gain_db / 2`
    /// at `freq_hz`.
    HighShelf,
    /// Cookbook peaking (bell) filter: `gain_db` at `freq_hz`, 0 dB far away.
    Peaking,
}

/// Biquad coefficients normalised by `a0` (so `a0 == 1` is implicit).
///
/// All coefficients are dimensionless.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BiquadCoeffs {
    /// Feed-forward coefficient of `x[n]`.
    pub b0: f64,
    /// Feed-forward coefficient of `x[n-1]`.
    pub b1: f64,
    /// Feed-forward coefficient of `x[n-2]`.
    pub b2: f64,
    /// Feedback coefficient of `y[n-1]` (with the sign convention `1 + a1·z⁻¹ + a2·z⁻²`).
    pub a1: f64,
    /// Feedback coefficient of `y[n-2]` (with the sign convention `1 + a1·z⁻¹ + a2·z⁻²`).
    pub a2: f64,
}

/// Intermediate cookbook quantities for one design.
struct Prewarp {
    /// `cos(w0)`, `w0 = 2π·f0/fs` in radians per sample.
    cos_w0: f64,
    /// `alpha = sin(w0) / (2·Q)`.
    alpha: f64,
}

impl Prewarp {
    /// Computes `cos(w0)` and `alpha`, or `None` when the sample rate or the
    /// frequency is not usable (non-finite, or a non-positive sample rate).
    ///
    /// The frequency is clamped to `(0, 0.4999·fs]` and Q to `[1e-3, 1e3]`.
    fn new(freq_hz: f64, q: f64, sample_rate_hz: f64) -> Option<Self> {
        if !(sample_rate_hz.is_finite() && sample_rate_hz > 0.0 && freq_hz.is_finite()) {
            return None;
        }
        let freq = freq_hz.clamp(MIN_DESIGN_FREQ_RATIO * sample_rate_hz, MAX_DESIGN_FREQ_RATIO * sample_rate_hz);
        let q = if q.is_nan() { MIN_DESIGN_Q } else { q.clamp(MIN_DESIGN_Q, MAX_DESIGN_Q) };
        let w0 = 2.0 * PI * freq / sample_rate_hz;
        Some(Self { cos_w0: w0.cos(), alpha: w0.sin() / (2.0 * q) })
    }
}

impl Default for BiquadCoeffs {
    /// The identity filter (`H(z) = 1`).
    fn default() -> Self {
        Self::identity()
    }
}

impl BiquadCoeffs {
    /// The identity filter (`H(z) = 1`, 0 dB at every frequency).
    pub const fn identity() -> Self {
        Self { b0: 1.0, b1: 0.0, b2: 0.0, a1: 0.0, a2: 0.0 }
    }

    /// Builds normalised coefficients from un-normalised cookbook values.
    fn normalised(b0: f64, b1: f64, b2: f64, a0: f64, a1: f64, a2: f64) -> Self {
        // a0 > 0 for every cookbook design with Q > 0, A > 0 and 0 < w0 < π.
        let c = Self { b0: b0 / a0, b1: b1 / a0, b2: b2 / a0, a1: a1 / a0, a2: a2 / a0 };
        if [c.b0, c.b1, c.b2, c.a1, c.a2].iter().all(|v| v.is_finite()) {
            c
        } else {
            Self::identity()
        }
    }

    /// Designs a cookbook EQ filter.
    ///
    /// * `freq_hz` – centre frequency (peaking) or midpoint frequency (shelves)
    ///   in Hz; clamped to `(0, 0.4999·sample_rate_hz]`.
    /// * `gain_db` – gain in dB of the peak, or of the shelf plateau; clamped to
    ///   ±120 dB, non-finite values give the identity filter.
    /// * `q` – dimensionless Q (shelves use the cookbook Q form,
    ///   `alpha = sin(w0)/(2Q)`; `q = 0.707` is the steepest shelf without
    ///   overshoot); clamped to `[0.001, 1000]`.
    /// * `sample_rate_hz` – sample rate in Hz; a non-finite or non-positive
    ///   value gives the identity filter.
    ///
    /// With the cookbook shelves the magnitude at `freq_hz` is exactly
    /// `gain_db / 2` for every Q.
    pub fn design(kind: FilterKind, freq_hz: f64, gain_db: f64, q: f64, sample_rate_hz: f64) -> Self {
        let Some(Prewarp { cos_w0: c, alpha }) = Prewarp::new(freq_hz, q, sample_rate_hz) else {
            return Self::identity();
        };
        if !gain_db.is_finite() {
            return Self::identity();
        }
        let gain_db = gain_db.clamp(-MAX_DESIGN_GAIN_DB, MAX_DESIGN_GAIN_DB);
        // A = 10^(dBgain/40): the square root of the linear amplitude gain.
        let a = 10f64.powf(gain_db / 40.0);
        match kind {
            FilterKind::Peaking => {
                Self::normalised(1.0 + alpha * a, -2.0 * c, 1.0 - alpha * a, 1.0 + alpha / a, -2.0 * c, 1.0 - alpha / a)
            }
            FilterKind::LowShelf => {
                let two_sqrt_a_alpha = 2.0 * a.sqrt() * alpha;
                Self::normalised(
                    a * ((a + 1.0) - (a - 1.0) * c + two_sqrt_a_alpha),
                    2.0 * a * ((a - 1.0) - (a + 1.0) * c),
                    a * ((a + 1.0) - (a - 1.0) * c - two_sqrt_a_alpha),
                    (a + 1.0) + (a - 1.0) * c + two_sqrt_a_alpha,
                    -2.0 * ((a - 1.0) + (a + 1.0) * c),
                    (a + 1.0) + (a - 1.0) * c - two_sqrt_a_alpha,
                )
            }
            FilterKind::HighShelf => {
                let two_sqrt_a_alpha = 2.0 * a.sqrt() * alpha;
                Self::normalised(
                    a * ((a + 1.0) + (a - 1.0) * c + two_sqrt_a_alpha),
                    -2.0 * a * ((a - 1.0) + (a + 1.0) * c),
                    a * ((a + 1.0) + (a - 1.0) * c - two_sqrt_a_alpha),
                    (a + 1.0) - (a - 1.0) * c + two_sqrt_a_alpha,
                    2.0 * ((a - 1.0) - (a + 1.0) * c),
                    (a + 1.0) - (a - 1.0) * c - two_sqrt_a_alpha,
                )
            }
        }
    }

    /// Cookbook second-order low-pass (LPF) with cutoff `freq_hz` (Hz),
    /// dimensionless `q` (0.7071 = Butterworth, -3 dB at `freq_hz`) at
    /// `sample_rate_hz` (Hz). Two cascaded Butterworth sections form a
    /// 4th-order Linkwitz-Riley low-pass (-6 dB at `freq_hz`).
    ///
    /// Parameters are sanitised as in [`BiquadCoeffs::design`].
    pub fn lowpass(freq_hz: f64, q: f64, sample_rate_hz: f64) -> Self {
        let Some(Prewarp { cos_w0: c, alpha }) = Prewarp::new(freq_hz, q, sample_rate_hz) else {
            return Self::identity();
        };
        Self::normalised((1.0 - c) / 2.0, 1.0 - c, (1.0 - c) / 2.0, 1.0 + alpha, -2.0 * c, 1.0 - alpha)
    }

    /// Cookbook second-order high-pass (HPF) with cutoff `freq_hz` (Hz),
    /// dimensionless `q` (0.7071 = Butterworth, -3 dB at `freq_hz`) at
    /// `sample_rate_hz` (Hz). Two cascaded Butterworth sections form a
    /// 4th-order Linkwitz-Riley high-pass (-6 dB at `freq_hz`).
    ///
    /// Parameters are sanitised as in [`BiquadCoeffs::design`].
    pub fn highpass(freq_hz: f64, q: f64, sample_rate_hz: f64) -> Self {
        let Some(Prewarp { cos_w0: c, alpha }) = Prewarp::new(freq_hz, q, sample_rate_hz) else {
            return Self::identity();
        };
        Self::normalised((1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0, 1.0 + alpha, -2.0 * c, 1.0 - alpha)
    }

    /// Cookbook second-order all-pass (APF) centred on `freq_hz` (Hz) with
    /// dimensionless `q` at `sample_rate_hz` (Hz): 0 dB everywhere, phase
    /// -180° at `freq_hz`.
    ///
    /// With the crossover's `freq_hz` and `q` (0.7071) it has exactly the
    /// response of the LR4 low-pass + high-pass sum, so it is the phase
    /// compensation for bands that do not pass through a given crossover.
    ///
    /// Parameters are sanitised as in [`BiquadCoeffs::design`].
    pub fn allpass(freq_hz: f64, q: f64, sample_rate_hz: f64) -> Self {
        let Some(Prewarp { cos_w0: c, alpha }) = Prewarp::new(freq_hz, q, sample_rate_hz) else {
            return Self::identity();
        };
        Self::normalised(1.0 - alpha, -2.0 * c, 1.0 + alpha, 1.0 + alpha, -2.0 * c, 1.0 - alpha)
    }

    /// Exact magnitude `20·log10|H(e^{jw})|` in dB at `freq_hz` (Hz) for a
    /// filter running at `sample_rate_hz` (Hz), `w = 2π·freq_hz/sample_rate_hz`.
    ///
    /// Exact zeros of the response are floored at -300 dB. Non-finite
    /// arguments or a non-positive sample rate give 0 dB.
    pub fn magnitude_db(&self, freq_hz: f64, sample_rate_hz: f64) -> f64 {
        if !(sample_rate_hz.is_finite() && sample_rate_hz > 0.0 && freq_hz.is_finite()) {
            return 0.0;
        }
        let s = (PI * freq_hz / sample_rate_hz).sin();
        self.magnitude_db_phi(s * s)
    }

    /// Magnitude in dB as a function of `phi = sin²(w/2)` (dimensionless,
    /// `w` in radians per sample), using the cancellation-free form of the
    /// cookbook:
    ///
    /// `|B|² = (b0+b1+b2)² − 4φ(b0·b1 + 4·b0·b2 + b1·b2) + 16φ²·b0·b2`
    /// (and the same for the denominator with `a0 = 1`).
    ///
    #[inline]
    fn magnitude_db_phi(&self, phi: f64) -> f64 {
        let Self { b0, b1, b2, a1, a2 } = *self;
        let bs = b0 + b1 + b2;
        let num = bs * bs - 4.0 * phi * (b0 * b1 + 4.0 * b0 * b2 + b1 * b2) + 16.0 * phi * phi * b0 * b2;
        let as_ = 1.0 + a1 + a2;
        let den = as_ * as_ - 4.0 * phi * (a1 + 4.0 * a2 + a1 * a2) + 16.0 * phi * phi * a2;
        10.0 * (num.max(MIN_POWER) / den.max(MIN_POWER)).log10()
    }
}

/// One channel of a biquad filter in transposed direct form II with `f64`
/// state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Biquad {
    /// The filter coefficients. They may be replaced between samples (the
    /// state is kept), which is how parameter automation is done.
    pub coeffs: BiquadCoeffs,
    /// First state variable (transposed direct form II).
    s1: f64,
    /// Second state variable (transposed direct form II).
    s2: f64,
}

impl Biquad {
    /// A filter with the given coefficients and zeroed state.
    pub fn new(coeffs: BiquadCoeffs) -> Self {
        Self { coeffs, s1: 0.0, s2: 0.0 }
    }

    /// Filters one sample (linear amplitude in, linear amplitude out).
    #[inline]
    pub fn process(&mut self, x: f64) -> f64 {
        let c = &self.coeffs;
        let y = c.b0 * x + self.s1;
        self.s1 = c.b1 * x - c.a1 * y + self.s2;
        self.s2 = c.b2 * x - c.a2 * y;
        y
    }

    /// Filters a block of `f32` samples in place (one channel; the state is
    /// kept in `f64`).
    pub fn process_block(&mut self, buf: &mut [f32]) {
        for sample in buf.iter_mut() {
            *sample = self.process(f64::from(*sample)) as f32;
        }
    }

    /// Clears the filter state (as if it had only ever seen silence).
    pub fn reset(&mut self) {
        self.s1 = 0.0;
        self.s2 = 0.0;
    }
}

/// [`Biquad`] with its multiply-adds fused and its state update reassociated, so that the next
/// output waits on one fused multiply-add instead of a multiply and two adds: about half the
/// operations and half the dependency chain per sample, for the meters that filter every sample
/// of every pass (K-weighting). Fused multiply-adds round once, so the bits are the same on every
/// machine ([`f64::mul_add`] computes them in software where the CPU lacks the instruction);
/// they differ from [`Biquad`]'s by rounding only. Fast only inside a loop compiled with the FMA
/// instructions ([`crate::dsp::fma_dispatch`]): elsewhere each fused operation is a library call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedBiquad {
    coeffs: BiquadCoeffs,
    s1: f64,
    s2: f64,
}

impl FusedBiquad {
    /// A filter with the given coefficients and zero state.
    pub fn new(coeffs: BiquadCoeffs) -> Self {
        Self { coeffs, s1: 0.0, s2: 0.0 }
    }

    /// Filters one sample.
    #[inline(always)]
    pub fn process(&mut self, x: f64) -> f64 {
        let c = &self.coeffs;
        let y = c.b0.mul_add(x, self.s1);
        self.s1 = (-c.a1).mul_add(y, c.b1.mul_add(x, self.s2));
        self.s2 = (-c.a2).mul_add(y, c.b2 * x);
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SR: f64 = 48_000.0;

    /// Impulse response of a cascade of sections, `len` samples long.
    fn impulse_response(sections: &[BiquadCoeffs], len: usize) -> Vec<f64> {
        let mut filters: Vec<Biquad> = sections.iter().copied().map(Biquad::new).collect();
        (0..len)
            .map(|n| {
                let x = if n == 0 { 1.0 } else { 0.0 };
                filters.iter_mut().fold(x, |acc, f| f.process(acc))
            })
            .collect()
    }

    /// Magnitude in dB of the DTFT of `h` at `freq_hz` (plain DFT sum, no FFT).
    fn dtft_db(h: &[f64], freq_hz: f64, sample_rate_hz: f64) -> f64 {
        let w = 2.0 * PI * freq_hz / sample_rate_hz;
        let (re, im) = h.iter().enumerate().fold((0.0, 0.0), |(re, im), (n, &v)| {
            let phase = w * n as f64;
            (re + v * phase.cos(), im - v * phase.sin())
        });
        10.0 * (re * re + im * im).log10()
    }

    #[test]
    fn peaking_filter_has_its_gain_at_the_centre_frequency() {
        for &gain in &[-12.0, -4.0, 3.0, 6.0, 15.0] {
            for &q in &[0.3, 0.707, 1.4, 4.0, 8.0] {
                for &fc in &[40.0, 1_000.0, 12_000.0] {
                    let c = BiquadCoeffs::design(FilterKind::Peaking, fc, gain, q, SR);
                    let at_fc = c.magnitude_db(fc, SR);
                    assert!((at_fc - gain).abs() < 0.01, "peak {gain} dB Q {q} at {fc} Hz measured {at_fc} dB");
                }
            }
        }
        // Far from the centre a narrow bell is transparent.
        let c = BiquadCoeffs::design(FilterKind::Peaking, 1_000.0, 6.0, 4.0, SR);
        assert!(c.magnitude_db(20.0, SR).abs() < 0.01);
        assert!(c.magnitude_db(20_000.0, SR).abs() < 0.01);
    }

    #[test]
    fn shelves_reach_their_gain_inside_the_shelf_and_half_gain_at_fc() {
        for &gain in &[-12.0, -6.0, -1.0, 2.0, 6.0, 12.0] {
            let low = BiquadCoeffs::design(FilterKind::LowShelf, 200.0, gain, 0.707, SR);
            // Deep inside the shelf (3 octaves below fc) and at DC.
            assert!((low.magnitude_db(25.0, SR) - gain).abs() < 0.1);
            assert!((low.magnitude_db(0.0, SR) - gain).abs() < 1e-9);
            // Far outside the shelf.
            assert!(low.magnitude_db(10_000.0, SR).abs() < 0.1);
            // Cookbook shelves (Q form, Q = 0.707) pass through gain/2 at fc.
            assert!((low.magnitude_db(200.0, SR) - gain / 2.0).abs() < 0.1);

            let high = BiquadCoeffs::design(FilterKind::HighShelf, 2_000.0, gain, 0.707, SR);
            assert!((high.magnitude_db(20_000.0, SR) - gain).abs() < 0.1);
            assert!((high.magnitude_db(SR / 2.0, SR) - gain).abs() < 1e-9);
            assert!(high.magnitude_db(50.0, SR).abs() < 0.1);
            assert!((high.magnitude_db(2_000.0, SR) - gain / 2.0).abs() < 0.1);
        }
    }

    #[test]
    fn shelf_midpoint_is_half_gain_for_any_q() {
        // The cookbook shelf is |H(fc)| = sqrt(A) exactly (bilinear transform
        // with pre-warping maps fc exactly), independent of Q.
        for &q in &[0.4, 0.707, 1.0, 2.0] {
            for &kind in &[FilterKind::LowShelf, FilterKind::HighShelf] {
                let c = BiquadCoeffs::design(kind, 1_000.0, 9.0, q, SR);
                assert!((c.magnitude_db(1_000.0, SR) - 4.5).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn opposite_gains_cancel_and_matching_shelves_make_a_flat_offset() {
        // Cookbook shelves are exact inverses for ±gain ...
        for &kind in &[FilterKind::LowShelf, FilterKind::HighShelf, FilterKind::Peaking] {
            let up = BiquadCoeffs::design(kind, 700.0, 7.5, 0.9, SR);
            let down = BiquadCoeffs::design(kind, 700.0, -7.5, 0.9, SR);
            for &f in &[20.0, 300.0, 700.0, 5_000.0, 20_000.0] {
                assert!((up.magnitude_db(f, SR) + down.magnitude_db(f, SR)).abs() < 1e-9);
            }
        }
        // ... and a low shelf plus a high shelf with equal gain, fc and Q is a
        // flat gain (used by the EQ fitter to express overall offsets).
        let low = BiquadCoeffs::design(FilterKind::LowShelf, 700.0, 5.0, 0.707, SR);
        let high = BiquadCoeffs::design(FilterKind::HighShelf, 700.0, 5.0, 0.707, SR);
        for &f in &[20.0, 300.0, 700.0, 5_000.0, 20_000.0] {
            let sum = low.magnitude_db(f, SR) + high.magnitude_db(f, SR);
            assert!((sum - 5.0).abs() < 1e-9, "{f} Hz: {sum} dB");
        }
    }

    #[test]
    fn processing_matches_the_analytic_magnitude() {
        let sections = [
            BiquadCoeffs::design(FilterKind::Peaking, 1_000.0, -4.0, 1.4, SR),
            BiquadCoeffs::design(FilterKind::LowShelf, 100.0, 3.0, 0.707, SR),
            BiquadCoeffs::design(FilterKind::HighShelf, 8_000.0, 2.0, 0.707, SR),
        ];
        let h = impulse_response(&sections, 16_384);
        for &f in &[31.5, 100.0, 640.0, 1_000.0, 3_000.0, 8_000.0, 16_000.0] {
            let analytic: f64 = sections.iter().map(|c| c.magnitude_db(f, SR)).sum();
            let measured = dtft_db(&h, f, SR);
            assert!((analytic - measured).abs() < 1e-3, "{f} Hz: analytic {analytic} dB, measured {measured} dB");
        }
    }

    #[test]
    fn butterworth_sections_are_3_db_down_at_cutoff() {
        let lp = BiquadCoeffs::lowpass(2_000.0, std::f64::consts::FRAC_1_SQRT_2, SR);
        let hp = BiquadCoeffs::highpass(2_000.0, std::f64::consts::FRAC_1_SQRT_2, SR);
        let minus_3 = -10.0 * 2f64.log10();
        assert!((lp.magnitude_db(2_000.0, SR) - minus_3).abs() < 1e-9);
        assert!((hp.magnitude_db(2_000.0, SR) - minus_3).abs() < 1e-9);
        assert!(lp.magnitude_db(20.0, SR).abs() < 1e-3);
        assert!(hp.magnitude_db(20_000.0, SR).abs() < 0.01);
        let ap = BiquadCoeffs::allpass(2_000.0, std::f64::consts::FRAC_1_SQRT_2, SR);
        for &f in &[20.0, 2_000.0, 20_000.0] {
            assert!(ap.magnitude_db(f, SR).abs() < 1e-9);
        }
    }

    #[test]
    fn linkwitz_riley_4_low_and_high_outputs_sum_flat() {
        for &fc in &[80.0, 1_000.0, 6_000.0] {
            // Butterworth sections, Q = 1/sqrt(2) = 0.7071...
            let q = std::f64::consts::FRAC_1_SQRT_2;
            let lp = BiquadCoeffs::lowpass(fc, q, SR);
            let hp = BiquadCoeffs::highpass(fc, q, SR);
            let len = 32_768;
            let low = impulse_response(&[lp, lp], len);
            let high = impulse_response(&[hp, hp], len);
            let sum: Vec<f64> = low.iter().zip(&high).map(|(l, h)| l + h).collect();

            // Each LR4 branch is -6 dB at the crossover frequency.
            assert!((dtft_db(&low, fc, SR) + 6.02).abs() < 0.01);
            assert!((dtft_db(&high, fc, SR) + 6.02).abs() < 0.01);

            for &f in &[20.0, 50.0, fc / 2.0, fc, fc * 1.5, 2.0 * fc, 10_000.0, 20_000.0] {
                let db = dtft_db(&sum, f, SR);
                assert!(db.abs() < 0.01, "LR4 at {fc} Hz: sum is {db} dB at {f} Hz");
            }

            // The sum is exactly the cookbook all-pass with the same fc and Q.
            let ap = impulse_response(&[BiquadCoeffs::allpass(fc, q, SR)], len);
            let max_diff = sum.iter().zip(&ap).map(|(s, a)| (s - a).abs()).fold(0.0, f64::max);
            assert!(max_diff < 1e-4, "LR4 sum vs all-pass differs by {max_diff}");
        }
    }

    #[test]
    fn process_block_matches_process_and_reset_clears_state() {
        let c = BiquadCoeffs::design(FilterKind::Peaking, 500.0, 6.0, 2.0, SR);
        let input: Vec<f32> = (0..512).map(|n| ((n as f32) * 0.37).sin() * 0.5).collect();

        let mut reference = Biquad::new(c);
        let expected: Vec<f32> = input.iter().map(|&x| reference.process(f64::from(x)) as f32).collect();

        let mut filter = Biquad::new(c);
        let mut buf = input.clone();
        filter.process_block(&mut buf);
        assert_eq!(buf, expected);

        filter.reset();
        assert_eq!(filter, Biquad::new(c));
        let mut again = input;
        filter.process_block(&mut again);
        assert_eq!(again, expected);
    }

    #[test]
    fn degenerate_parameters_give_finite_coefficients() {
        let kinds = [FilterKind::LowShelf, FilterKind::HighShelf, FilterKind::Peaking];
        let weird = [0.0, -1.0, 1e-300, 1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        let all_finite = |c: BiquadCoeffs| [c.b0, c.b1, c.b2, c.a1, c.a2].iter().all(|v| v.is_finite());
        for &kind in &kinds {
            for &v in &weird {
                assert!(all_finite(BiquadCoeffs::design(kind, v, 3.0, 1.0, SR)));
                assert!(all_finite(BiquadCoeffs::design(kind, 1e3, v, 1.0, SR)));
                assert!(all_finite(BiquadCoeffs::design(kind, 1e3, 3.0, v, SR)));
                assert!(all_finite(BiquadCoeffs::design(kind, 1e3, 3.0, 1.0, v)));
            }
        }
        for &v in &weird {
            assert!(all_finite(BiquadCoeffs::lowpass(v, 0.7, SR)));
            assert!(all_finite(BiquadCoeffs::highpass(1e3, v, SR)));
            assert!(all_finite(BiquadCoeffs::allpass(1e3, 0.7, v)));
            assert!(BiquadCoeffs::identity().magnitude_db(v, SR).is_finite());
            assert!(BiquadCoeffs::identity().magnitude_db(1e3, v).is_finite());
        }
        // Designing at or above Nyquist still yields a stable, finite filter.
        let c = BiquadCoeffs::design(FilterKind::Peaking, 30_000.0, 6.0, 1.0, SR);
        assert!(c.magnitude_db(SR * 0.4999, SR).is_finite());
    }

    #[test]
    fn filter_kind_serialises_as_snake_case() {
        assert_eq!(serde_json::to_string(&FilterKind::LowShelf).ok().as_deref(), Some("\"low_shelf\""));
        assert_eq!(serde_json::from_str::<FilterKind>("\"high_shelf\"").ok(), Some(FilterKind::HighShelf));
        assert_eq!(serde_json::to_string(&FilterKind::Peaking).ok().as_deref(), Some("\"peaking\""));
    }

    #[test]
    fn the_fused_filter_differs_from_the_unfused_one_by_rounding_only() {
        let c = BiquadCoeffs::design(FilterKind::Peaking, 1_000.0, -4.0, 1.4, SR);
        let (mut a, mut b) = (Biquad::new(c), FusedBiquad::new(c));
        let mut worst = 0f64;
        for i in 0..20_000 {
            let x = (i as f64 * 0.37).sin() + 0.3 * (i as f64 * 0.011).cos();
            worst = worst.max((a.process(x) - b.process(x)).abs());
        }
        assert!(worst < 1e-12, "{worst:e}");
    }
}
