//! Phase-coherent 4-band Linkwitz-Riley (LR4) crossover.
//!
//! A tree of LR4 splits (each LR4 low/high pass is two cascaded Butterworth biquads) with allpass
//! compensation, so that the four bands add back to an allpass: flat magnitude, no comb filtering
//! when the bands are summed after independent gain changes. Filter state is f64: at 120 Hz and
//! 192 kHz f32 coefficients would not be precise enough.

use crate::dsp::biquad::{Biquad, BiquadCoeffs};

/// Butterworth Q; two cascaded Butterworth sections make one LR4 section.
const BUTTERWORTH_Q: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// Default crossover frequencies in Hz for dynamics analysis and multiband compression:
/// lows, low-mids, high-mids, highs.
pub const DEFAULT_CROSSOVERS_HZ: [f64; 3] = [120.0, 1000.0, 5000.0];

/// Crossover frequencies usable at `sample_rate_hz`: kept below 0.4 × the sample rate (an 8 kHz
/// file cannot have a 5 kHz split) and strictly increasing.
pub fn crossovers_for_rate(crossovers_hz: [f64; 3], sample_rate_hz: u32) -> [f64; 3] {
    let max = 0.4 * f64::from(sample_rate_hz);
    let mut out = crossovers_hz.map(|f| f.min(max));
    for i in (0..2).rev() {
        if out[i] >= out[i + 1] * 0.9 {
            out[i] = out[i + 1] * 0.5;
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Lr4 {
    a: Biquad,
    b: Biquad,
}

impl Lr4 {
    fn new(coeffs: BiquadCoeffs) -> Self {
        Self { a: Biquad::new(coeffs), b: Biquad::new(coeffs) }
    }
    #[inline]
    fn process(&mut self, x: f64) -> f64 {
        self.b.process(self.a.process(x))
    }
}

/// One channel's 4-band crossover state.
#[derive(Debug, Clone)]
pub struct Crossover4 {
    lp_mid: Lr4,
    hp_mid: Lr4,
    ap_high_on_low: Biquad,
    lp_low: Lr4,
    hp_low: Lr4,
    ap_low_on_high: Biquad,
    lp_high: Lr4,
    hp_high: Lr4,
}

impl Crossover4 {
    /// A crossover splitting at `crossovers_hz` (ascending) at `sample_rate_hz`.
    pub fn new(crossovers_hz: [f64; 3], sample_rate_hz: u32) -> Self {
        let sr = f64::from(sample_rate_hz);
        let [f1, f2, f3] = crossovers_for_rate(crossovers_hz, sample_rate_hz);
        Self {
            lp_mid: Lr4::new(BiquadCoeffs::lowpass(f2, BUTTERWORTH_Q, sr)),
            hp_mid: Lr4::new(BiquadCoeffs::highpass(f2, BUTTERWORTH_Q, sr)),
            ap_high_on_low: Biquad::new(BiquadCoeffs::allpass(f3, BUTTERWORTH_Q, sr)),
            lp_low: Lr4::new(BiquadCoeffs::lowpass(f1, BUTTERWORTH_Q, sr)),
            hp_low: Lr4::new(BiquadCoeffs::highpass(f1, BUTTERWORTH_Q, sr)),
            ap_low_on_high: Biquad::new(BiquadCoeffs::allpass(f1, BUTTERWORTH_Q, sr)),
            lp_high: Lr4::new(BiquadCoeffs::lowpass(f3, BUTTERWORTH_Q, sr)),
            hp_high: Lr4::new(BiquadCoeffs::highpass(f3, BUTTERWORTH_Q, sr)),
        }
    }

    /// Splits one sample into its four bands (low to high). The bands sum to an allpass of `x`.
    #[inline]
    pub fn split(&mut self, x: f64) -> [f64; 4] {
        let low = self.ap_high_on_low.process(self.lp_mid.process(x));
        let high = self.ap_low_on_high.process(self.hp_mid.process(x));
        [self.lp_low.process(low), self.hp_low.process(low), self.lp_high.process(high), self.hp_high.process(high)]
    }
}
