//! Mid/side matching EQ rendered as two linear-phase FIR filters; the width stage's per-band
//! side gains are folded into the side filter (both are linear, so one convolution does both).

use crate::dsp::fir::{design, fir_len};
use crate::settings::{EqRender, EqSettings, WidthSettings};
use crate::solve::parametric::ParametricBand;

/// Gain in dB at `freq_hz` of a curve given at ascending `grid` points: linear in dB over log
/// frequency, held flat beyond the ends.
pub fn curve_at(grid: &[f64], gains_db: &[f64], freq_hz: f64) -> f64 {
    let (Some(&first), Some(&last)) = (grid.first(), grid.last()) else {
        return 0.0;
    };
    if freq_hz <= first {
        return gains_db[0];
    }
    if freq_hz >= last {
        return gains_db[gains_db.len() - 1];
    }
    let i = grid.partition_point(|&g| g <= freq_hz).clamp(1, grid.len() - 1);
    let (f0, f1) = (grid[i - 1], grid[i]);
    let t = (freq_hz / f0).ln() / (f1 / f0).ln();
    gains_db[i - 1] + t * (gains_db[i] - gains_db[i - 1])
}

/// Side gain of the width stage at `freq_hz`: each band's gain at its geometric centre,
/// interpolated between centres (smooth across band edges), flat beyond the outer centres.
pub fn width_at(width: &WidthSettings, freq_hz: f64) -> f64 {
    if !width.enabled || width.bands.is_empty() {
        return 0.0;
    }
    let centres: Vec<f64> = width.bands.iter().map(|b| (b.low_hz.max(10.0) * b.high_hz).sqrt()).collect();
    let gains: Vec<f64> = width.bands.iter().map(|b| b.side_gain_db).collect();
    curve_at(&centres, &gains, freq_hz)
}

/// Summed magnitude (dB) of RBJ cookbook `bands` at `freq_hz`, the filters running at
/// `sample_rate_hz`; frequencies past 0.499 of it read the response there (held flat).
pub fn filters_db(bands: &[ParametricBand], sample_rate_hz: f64, freq_hz: f64) -> f64 {
    let f = freq_hz.min(0.499 * sample_rate_hz);
    bands.iter().map(|b| b.coeffs(sample_rate_hz).magnitude_db(f, sample_rate_hz)).sum()
}

/// Total mid and side curves (dB at a frequency) as rendered.
pub fn mid_curve_db(eq: &EqSettings, freq_hz: f64) -> f64 {
    if !eq.enabled {
        0.0
    } else if eq.render == EqRender::Filters {
        filters_db(&eq.parametric_mid.bands, eq.filter_sample_rate_hz, freq_hz)
    } else {
        curve_at(&eq.frequencies_hz, &eq.mid_gain_db, freq_hz)
    }
}

/// The side EQ alone (dB at a frequency), without the width stage.
pub fn side_eq_db(eq: &EqSettings, freq_hz: f64) -> f64 {
    if !eq.enabled {
        0.0
    } else if eq.render == EqRender::Filters {
        filters_db(&eq.parametric_side.bands, eq.filter_sample_rate_hz, freq_hz)
    } else {
        curve_at(&eq.frequencies_hz, &eq.side_gain_db, freq_hz)
    }
}

/// Side curve: the side EQ plus the width gain.
pub fn side_curve_db(eq: &EqSettings, width: &WidthSettings, freq_hz: f64) -> f64 {
    side_eq_db(eq, freq_hz) + width_at(width, freq_hz)
}

/// The linear-phase FIR taps (delay: half their length) that render `curve` (dB at a frequency)
/// at `sample_rate_hz`, or None when the curve is flat and the filter can be left out.
pub fn curve_taps(sample_rate_hz: u32, curve: &dyn Fn(f64) -> f64) -> Option<Vec<f32>> {
    let len = fir_len(sample_rate_hz);
    let nyquist = f64::from(sample_rate_hz) / 2.0;
    let flat = (0..=200).all(|k| curve(20.0 * (nyquist / 20.0).powf(f64::from(k) / 200.0)).abs() < 1e-9);
    (!flat).then(|| design(len, sample_rate_hz, curve))
}
