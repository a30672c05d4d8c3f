//! [`Settings`]: the mastering chain the solver chose, in units a person can read and edit.
//!
//! Settings are the contract between the solver, the renderer and the exporters. They are
//! versioned JSON; [`Settings::validate`] checks every field (finite, in range, consistent) so a
//! hand-edited file fails with the field's name instead of producing a broken master.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::solve::parametric::ParametricEq;

/// Version of the settings JSON schema.
pub const SETTINGS_VERSION: u32 = 1;

/// Hard limits every settings file must respect (wider than the solver's defaults, so hand edits
/// have room, but narrow enough that nothing destructive can be asked for).
pub mod limits {
    /// Largest EQ boost or cut at any frequency, dB.
    pub const EQ_GAIN_DB: f64 = 24.0;
    /// Largest side gain of the width stage, dB.
    pub const WIDTH_GAIN_DB: f64 = 12.0;
    /// Compressor threshold range, dBFS.
    pub const THRESHOLD_DBFS: (f64, f64) = (-80.0, 0.0);
    /// Compressor ratio range.
    pub const RATIO: (f64, f64) = (1.0, 20.0);
    /// Compressor knee width range, dB.
    pub const KNEE_DB: (f64, f64) = (0.0, 24.0);
    /// Attack time range, ms.
    pub const ATTACK_MS: (f64, f64) = (0.1, 500.0);
    /// Release time range, ms.
    pub const RELEASE_MS: (f64, f64) = (1.0, 5000.0);
    /// Make-up gain range, dB.
    pub const MAKEUP_DB: (f64, f64) = (-24.0, 24.0);
    /// Limiter drive range, dB.
    pub const DRIVE_DB: (f64, f64) = (-60.0, 36.0);
    /// Ceiling range, dBTP.
    pub const CEILING_DBTP: (f64, f64) = (-20.0, 0.0);
    /// Saturator knee range, dB under the clip level.
    pub const SATURATION_KNEE_DB: (f64, f64) = (0.5, 20.0);
    /// Look-ahead range, ms.
    pub const LOOKAHEAD_MS: (f64, f64) = (0.1, 20.0);
    /// Range of the gain after the limiter, dB: a trim, never a boost past the ceiling.
    pub const OUTPUT_TRIM_DB: (f64, f64) = (-12.0, 0.0);
}

/// The whole mastering chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Schema version ([`SETTINGS_VERSION`]).
    pub version: u32,
    /// Mid/side matching EQ.
    pub eq: EqSettings,
    /// Multiband compression.
    pub dynamics: DynamicsSettings,
    /// Per-band stereo width.
    pub width: WidthSettings,
    /// Soft-clipping saturator in front of the limiter (absent in files from before it existed:
    /// off).
    #[serde(default)]
    pub saturation: SaturationSettings,
    /// True-peak limiter and loudness.
    pub limiter: LimiterSettings,
    /// Dither seed for integer output (same seed, same bits).
    pub dither_seed: u64,
    /// Gaps the master will not close, with what to look at in the mix (advice only: nothing
    /// here is rendered; absent in files from before they existed).
    #[serde(default)]
    pub mix_notes: Vec<MixNote>,
}

/// How the EQ curves are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EqRender {
    /// The grid curves `mid_gain_db` / `side_gain_db` (a fine match: same music, or files from
    /// before the broad fit existed). A same-music mid curve is `parametric_mid`'s response on
    /// the grid (the exported filters); the side's parametric fit only approximates its curve.
    #[default]
    Curve,
    /// The filters `parametric_mid` / `parametric_side` (RBJ cookbook, evaluated at
    /// `filter_sample_rate_hz`): the magnitude response of the exported filters is exactly what
    /// the linear-phase FIR renders. The grid curves hold that response, for plots.
    Filters,
}

/// A gap between the mix and the reference that mastering should not close, in one frequency
/// range: the mix itself should change there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixNote {
    /// What the gap is in: "tone" (the mid's tonal balance), "width" (side-to-mid) or
    /// "dynamics" (the mix is denser than the reference; the range is then the whole band).
    pub kind: String,
    /// Lower edge of the range, Hz.
    pub low_hz: f64,
    /// Upper edge of the range, Hz.
    pub high_hz: f64,
    /// How far the mix is from the reference there, dB (positive: the mix has less; level
    /// offset removed, octave-smoothed).
    pub gap_db: f64,
    /// How much of the gap the master closes there, dB.
    pub applied_db: f64,
    /// The note in words.
    pub text: String,
}

/// Matching EQ: gain curves for mid and side on a log-frequency grid, rendered as linear-phase
/// FIR filters (interpolated linearly in dB over log frequency, held flat beyond the ends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EqSettings {
    /// Stage on/off.
    pub enabled: bool,
    /// Grid frequencies in Hz, ascending.
    pub frequencies_hz: Vec<f64>,
    /// Mid gain at each grid frequency, dB.
    pub mid_gain_db: Vec<f64>,
    /// Side gain at each grid frequency, dB (shape only; the width stage sets side level).
    pub side_gain_db: Vec<f64>,
    /// Parametric approximation of the mid curve (for export; the FIR is what renders).
    pub parametric_mid: ParametricEq,
    /// Parametric approximation of the side curve (with `render: filters`: the side EQ's
    /// filters, without the width stage).
    pub parametric_side: ParametricEq,
    /// What renders: the grid curves or the parametric filters (absent in older files: curves).
    #[serde(default)]
    pub render: EqRender,
    /// Sample rate at which the parametric filters' responses are evaluated, Hz.
    #[serde(default = "default_filter_rate_hz")]
    pub filter_sample_rate_hz: f64,
}

fn default_filter_rate_hz() -> f64 {
    48_000.0
}

/// Multiband compressor: four bands split at the crossovers, detector on the mid signal of each
/// band (LR4), the same gain applied to the band's mid and side so the image does not shift (the
/// output's split is linear-phase with the LR4 magnitudes: see [`crate::render::dynamics`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicsSettings {
    /// Stage on/off.
    pub enabled: bool,
    /// Crossover frequencies in Hz, ascending.
    pub crossovers_hz: [f64; 3],
    /// One compressor per band, low to high.
    pub bands: Vec<CompressorBand>,
    /// Broadband compression: one detector follows the whole mid signal (the sum of the bands'
    /// powers) and band 0's gain law drives every band alike, so the tonal balance does not
    /// move with the level. The solver then writes the same settings into every band (absent
    /// in files from before it existed: per-band detectors).
    #[serde(default)]
    pub linked: bool,
    /// Feedback detection: each detector follows its band's *output* (after the gain, before
    /// make-up) instead of its input, as in an opto or a 1176-style compressor. The static curve
    /// is the same slope seen from the output (so a ratio `r` here compresses like `1 + (r − 1)`
    /// of an output-referred law: gentler than feed-forward for the same figure); what differs
    /// is the motion: a feedback leveller is the exact inverse of a feed-forward expander, so
    /// it is what undoes one (absent in older files: feed-forward).
    #[serde(default)]
    pub feedback: bool,
}

/// One band's compressor (feed-forward, RMS detector, soft knee).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorBand {
    /// Threshold in dBFS (RMS of the band's mid signal).
    pub threshold_dbfs: f64,
    /// Ratio (1 = off).
    pub ratio: f64,
    /// Knee width in dB.
    pub knee_db: f64,
    /// Attack time constant in ms.
    pub attack_ms: f64,
    /// Release time constant in ms.
    pub release_ms: f64,
    /// Make-up gain in dB (restores the band's average level).
    pub makeup_db: f64,
}

impl CompressorBand {
    /// True when this band changes nothing.
    pub fn is_neutral(&self) -> bool {
        self.ratio <= 1.0 && self.makeup_db == 0.0
    }
}

/// Per-band side gain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WidthSettings {
    /// Stage on/off.
    pub enabled: bool,
    /// Bands, ascending and contiguous.
    pub bands: Vec<WidthBandGain>,
}

/// Side gain of one band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WidthBandGain {
    /// Lower edge, Hz.
    pub low_hz: f64,
    /// Upper edge, Hz.
    pub high_hz: f64,
    /// Gain applied to the side signal, dB (positive = wider).
    pub side_gain_db: f64,
}

/// Soft clipper between the compressor and the limiter ([`crate::render::saturation`]): the
/// signal is multiplied by `drive_db`, then rounded off toward the limiter's ceiling by a curve
/// that is linear up to `knee_db` under it. The limiter's own drive follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaturationSettings {
    /// Stage on/off (off: no gain, no saturation).
    pub enabled: bool,
    /// Gain into the clipper, dB.
    pub drive_db: f64,
    /// Where the curve leaves the straight line, dB under the clip level (the limiter ceiling).
    pub knee_db: f64,
    /// Share of the saturated signal, 0 (dry) to 1 (fully saturated).
    pub mix: f64,
}

impl Default for SaturationSettings {
    fn default() -> Self {
        Self { enabled: false, drive_db: 0.0, knee_db: 6.0, mix: 1.0 }
    }
}

/// Drive into a true-peak limiter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterSettings {
    /// Stage on/off (off: the drive still applies, nothing stops overs).
    pub enabled: bool,
    /// Gain before the limiter, dB.
    pub drive_db: f64,
    /// Ceiling in dBTP (4× oversampled detection).
    pub ceiling_dbtp: f64,
    /// Look-ahead (and attack) time, ms.
    pub lookahead_ms: f64,
    /// Release time constant, ms.
    pub release_ms: f64,
    /// Loudness the loop aimed at, LUFS (informational).
    pub target_lufs: f64,
    /// Gain after the limiter, dB (≤ 0): the safety trim the closed loop measured on its last
    /// intermediate pass, carried into the master's render so that the master can be written
    /// as it is measured instead of after ([`crate::master`]). A render still measures its
    /// limited output's true peak and trims whatever this leaves over the ceiling on top.
    /// Absent (0 dB) in files from before it existed and wherever no trim was foreseen.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_trim_db: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn check_range(src: &str, field: &str, v: f64, (lo, hi): (f64, f64)) -> Result<()> {
    if !v.is_finite() {
        return Err(Error::settings(src, field, format!("must be a finite number, got {v}")));
    }
    if v < lo || v > hi {
        return Err(Error::settings(src, field, format!("{v} is outside {lo}..{hi}")));
    }
    Ok(())
}

impl Settings {
    /// Checks every field; `src` names the file (or "settings") in the error.
    pub fn validate(&self, src: &str) -> Result<()> {
        if self.version != SETTINGS_VERSION {
            return Err(Error::settings(
                src,
                "version",
                format!("unknown settings version {} (this refmaster reads version {SETTINGS_VERSION})", self.version),
            ));
        }
        let eq = &self.eq;
        let n = eq.frequencies_hz.len();
        if n < 2 {
            return Err(Error::settings(src, "eq.frequencies_hz", "needs at least 2 frequencies"));
        }
        if eq.mid_gain_db.len() != n || eq.side_gain_db.len() != n {
            return Err(Error::settings(src, "eq.mid_gain_db", "mid and side gains need one value per frequency"));
        }
        for (i, f) in eq.frequencies_hz.iter().enumerate() {
            check_range(src, &format!("eq.frequencies_hz[{i}]"), *f, (1.0, 100_000.0))?;
            if i > 0 && *f <= eq.frequencies_hz[i - 1] {
                return Err(Error::settings(src, format!("eq.frequencies_hz[{i}]"), "frequencies must ascend"));
            }
        }
        let g = (-limits::EQ_GAIN_DB, limits::EQ_GAIN_DB);
        for (i, v) in eq.mid_gain_db.iter().enumerate() {
            check_range(src, &format!("eq.mid_gain_db[{i}]"), *v, g)?;
        }
        for (i, v) in eq.side_gain_db.iter().enumerate() {
            check_range(src, &format!("eq.side_gain_db[{i}]"), *v, g)?;
        }
        for (name, p) in [("eq.parametric_mid", &eq.parametric_mid), ("eq.parametric_side", &eq.parametric_side)] {
            check_range(src, &format!("{name}.preamp_db"), p.preamp_db, (-48.0, 48.0))?;
            for (i, b) in p.bands.iter().enumerate() {
                check_range(src, &format!("{name}.bands[{i}].freq_hz"), b.freq_hz, (1.0, 100_000.0))?;
                check_range(src, &format!("{name}.bands[{i}].gain_db"), b.gain_db, (-48.0, 48.0))?;
                check_range(src, &format!("{name}.bands[{i}].q"), b.q, (0.01, 100.0))?;
            }
        }
        check_range(src, "eq.filter_sample_rate_hz", eq.filter_sample_rate_hz, (8_000.0, 768_000.0))?;
        for (i, n) in self.mix_notes.iter().enumerate() {
            check_range(src, &format!("mix_notes[{i}].low_hz"), n.low_hz, (0.0, 100_000.0))?;
            check_range(src, &format!("mix_notes[{i}].high_hz"), n.high_hz, (n.low_hz, 100_000.0))?;
            check_range(src, &format!("mix_notes[{i}].gap_db"), n.gap_db, (-200.0, 200.0))?;
            check_range(src, &format!("mix_notes[{i}].applied_db"), n.applied_db, (-48.0, 48.0))?;
        }
        let d = &self.dynamics;
        for (i, f) in d.crossovers_hz.iter().enumerate() {
            check_range(src, &format!("dynamics.crossovers_hz[{i}]"), *f, (20.0, 20_000.0))?;
        }
        if !(d.crossovers_hz[0] < d.crossovers_hz[1] && d.crossovers_hz[1] < d.crossovers_hz[2]) {
            return Err(Error::settings(src, "dynamics.crossovers_hz", "crossovers must ascend"));
        }
        if d.bands.len() != 4 {
            return Err(Error::settings(src, "dynamics.bands", format!("needs 4 bands, got {}", d.bands.len())));
        }
        for (i, b) in d.bands.iter().enumerate() {
            let p = format!("dynamics.bands[{i}]");
            check_range(src, &format!("{p}.threshold_dbfs"), b.threshold_dbfs, limits::THRESHOLD_DBFS)?;
            check_range(src, &format!("{p}.ratio"), b.ratio, limits::RATIO)?;
            check_range(src, &format!("{p}.knee_db"), b.knee_db, limits::KNEE_DB)?;
            check_range(src, &format!("{p}.attack_ms"), b.attack_ms, limits::ATTACK_MS)?;
            check_range(src, &format!("{p}.release_ms"), b.release_ms, limits::RELEASE_MS)?;
            check_range(src, &format!("{p}.makeup_db"), b.makeup_db, limits::MAKEUP_DB)?;
        }
        // Each band in range first, so a bad value is named where it is.
        if d.linked && d.bands.iter().any(|b| b != &d.bands[0]) {
            return Err(Error::settings(
                src,
                "dynamics.linked",
                "linked (broadband) compression needs the same settings in all 4 bands",
            ));
        }
        for (i, b) in self.width.bands.iter().enumerate() {
            let p = format!("width.bands[{i}]");
            // Contiguous bands computed on a log grid meet within rounding: allow 1 ppm.
            if i > 0 && b.low_hz < self.width.bands[i - 1].high_hz * (1.0 - 1e-6) {
                return Err(Error::settings(
                    src,
                    format!("{p}.low_hz"),
                    format!(
                        "{} Hz starts below the previous band's upper edge {} Hz: width bands must ascend without overlapping",
                        b.low_hz,
                        self.width.bands[i - 1].high_hz
                    ),
                ));
            }
            check_range(src, &format!("{p}.low_hz"), b.low_hz, (0.0, 100_000.0))?;
            check_range(src, &format!("{p}.high_hz"), b.high_hz, (b.low_hz, 100_000.0))?;
            check_range(
                src,
                &format!("{p}.side_gain_db"),
                b.side_gain_db,
                (-limits::WIDTH_GAIN_DB, limits::WIDTH_GAIN_DB),
            )?;
        }
        let sat = &self.saturation;
        check_range(src, "saturation.drive_db", sat.drive_db, limits::DRIVE_DB)?;
        check_range(src, "saturation.knee_db", sat.knee_db, limits::SATURATION_KNEE_DB)?;
        check_range(src, "saturation.mix", sat.mix, (0.0, 1.0))?;
        let l = &self.limiter;
        check_range(src, "limiter.drive_db", l.drive_db, limits::DRIVE_DB)?;
        check_range(src, "limiter.ceiling_dbtp", l.ceiling_dbtp, limits::CEILING_DBTP)?;
        check_range(src, "limiter.lookahead_ms", l.lookahead_ms, limits::LOOKAHEAD_MS)?;
        check_range(src, "limiter.release_ms", l.release_ms, limits::RELEASE_MS)?;
        check_range(src, "limiter.target_lufs", l.target_lufs, (-70.0, 0.0))?;
        check_range(src, "limiter.output_trim_db", l.output_trim_db, limits::OUTPUT_TRIM_DB)?;
        Ok(())
    }

    /// Parses and validates settings JSON; `src` names the file in errors.
    pub fn from_json(text: &str, src: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::settings(src, "(file)", format!("not valid JSON ({e})")))?;
        // Check the version first so an old or future file says so instead of a missing field.
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(SETTINGS_VERSION) => {}
            Some(v) => {
                return Err(Error::settings(
                    src,
                    "version",
                    format!("unknown settings version {v} (this refmaster reads version {SETTINGS_VERSION})"),
                ))
            }
            None => return Err(Error::settings(src, "version", "missing or not a number")),
        }
        // serde_path_to_error gives the full path of a mistyped or missing field
        // ("limiter.release_ms"), which plain serde_json does not.
        let settings: Settings = serde_path_to_error::deserialize(value).map_err(|e| {
            let msg = e.inner().to_string();
            Error::settings(src, field_of_error(&e.path().to_string(), &msg), crate::job::with_did_you_mean(&msg))
        })?;
        settings.validate(src)?;
        Ok(settings)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// The field a serde error is about: its path, or at the top level the name serde quotes.
pub fn field_of_error(path: &str, msg: &str) -> String {
    if path == "." {
        msg.split('`').nth(1).map_or_else(|| "(structure)".to_string(), str::to_string)
    } else {
        path.to_string()
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo (at most
/// a third of the name's letters differ).
pub fn nearest_name<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let (best, d) = candidates.iter().map(|c| (*c, edit_distance(name, c))).min_by_key(|&(_, d)| d)?;
    (d <= name.chars().count().div_ceil(3).max(1)).then_some(best)
}

/// Levenshtein distance over characters, ASCII case ignored.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}
