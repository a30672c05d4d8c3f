//! Stage 6, export: the solved [`Settings`] in formats other tools read.
//!
//! | format        | file                  | carries                                                  |
//! |---------------|-----------------------|----------------------------------------------------------|
//! | `apo`         | `STEM.apo.txt`        | the parametric fit of the mid EQ (applied to L and R)    |
//! | `graphiceq`   | `STEM.graphiceq.txt`  | the full matched mid EQ curve, 127 points                |
//! | `ffmpeg`      | `STEM.master.sh`      | the whole chain, as close as ffmpeg's filters get        |
//! | `easyeffects` | `STEM.easyeffects.json` (+ `STEM.easyeffects.txt`) | EQ, compression, average width, limiter |
//! | `json`        | `STEM.settings.json`  | everything (refmaster's own settings file)               |
//!
//! Every text format opens with a header comment in its own comment syntax (`#` for the
//! Equalizer APO files and the shell script) naming the refmaster version, the settings version
//! and a digest of the settings, and saying what the format cannot express. JSON has no
//! comments, so the EasyEffects preset gets that note as a sibling `STEM.easyeffects.txt`
//! ([`easyeffects_note`]); the preset itself holds only keys EasyEffects reads.
//!
//! Units: frequencies in Hz, gains and levels in dB (dBFS / dBTP where stated), loudness in
//! LUFS, times in ms unless a name says otherwise.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{json, Map, Value};

use crate::dsp::biquad::FilterKind;
use crate::encode::write_text_atomically;
use crate::error::{Error, Result};
use crate::master::MAX_LIMITING_DB;
use crate::render::eq::{mid_curve_db, side_curve_db};
use crate::render::limiter::CEILING_MARGIN_DB;
use crate::settings::limits::OUTPUT_TRIM_DB;
use crate::settings::{CompressorBand, EqRender, Settings};
use crate::solve::parametric::{response_db, ParametricBand, ParametricEq};

/// refmaster's version, written into every header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How far below the true-peak ceiling the ffmpeg script aims its limiter, dB. The script runs
/// `alimiter` (a sample-peak limiter) at 4x the sample rate, where sample peaks are close to true
/// peaks; the margin covers the resampling back.
pub const FFMPEG_CEILING_MARGIN_DB: f64 = 0.3;

/// `alimiter`'s release is refmaster's times this. Calibrated so that, at the same drive,
/// `alimiter` lands on the loudness refmaster's limiter reaches (within 0.1 LU on two songs
/// limited by 10 to 20 dB); with refmaster's release as it is, `alimiter` recovers faster and
/// comes out 0.5 to 1 LU louder.
pub const FFMPEG_RELEASE_FACTOR: f64 = 2.25;

/// Oversampling of the ffmpeg script's limiter.
pub const FFMPEG_LIMITER_OVERSAMPLING: u32 = 4;

/// The ffmpeg script never drives harder than refmaster's own drive plus this, dB: past that
/// drive refmaster found its limiting too deep.
pub const FFMPEG_DRIVE_SLACK_DB: f64 = 1.0;

/// Loudness tolerance of the ffmpeg script's drive search, LU (ffmpeg's `ebur128` prints 0.1 LU
/// steps).
pub const FFMPEG_LOUDNESS_TOLERANCE_LU: f64 = 0.1;

/// Most loudness-measuring passes the ffmpeg script makes while searching the drive.
pub const FFMPEG_MAX_PASSES: u32 = 6;

/// Half-length of the ffmpeg script's FIR EQ, s: refmaster's FIR is about 0.37 s long. At high
/// sample rates the script shortens it to `FFMPEG_FIR_SAMPLES_MAX / rate` (the largest FFT
/// `firequalizer` supports).
pub const FFMPEG_FIR_HALF_S: f64 = 0.186;
/// Largest FIR half-length the script asks `firequalizer` for, samples.
pub const FFMPEG_FIR_SAMPLES_MAX: u32 = 21_000;

/// Number of points of the GraphicEQ export.
pub const GRAPHIC_EQ_POINTS: usize = 127;
/// Ratio between neighbouring GraphicEQ frequencies (AutoEQ's spacing).
pub const GRAPHIC_EQ_STEP: f64 = 1.0563;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// Equalizer APO / AutoEQ `ParametricEQ.txt` (also read by PipeWire's
    /// `libpipewire-module-parametric-equalizer`).
    Apo,
    /// Equalizer APO / AutoEQ `GraphicEQ:` line.
    GraphicEq,
    /// A POSIX shell script running ffmpeg: `sh STEM.master.sh IN OUT`.
    Ffmpeg,
    /// An EasyEffects 7 output preset.
    EasyEffects,
    /// refmaster's own settings JSON.
    Json,
}

impl ExportFormat {
    /// Every format, in the order `all` expands to.
    pub const ALL: [ExportFormat; 5] = [
        ExportFormat::Apo,
        ExportFormat::GraphicEq,
        ExportFormat::Ffmpeg,
        ExportFormat::EasyEffects,
        ExportFormat::Json,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Apo => "apo",
            ExportFormat::GraphicEq => "graphiceq",
            ExportFormat::Ffmpeg => "ffmpeg",
            ExportFormat::EasyEffects => "easyeffects",
            ExportFormat::Json => "json",
        }
    }

    /// The file name this format is written to for `stem` (e.g. `song.apo.txt`).
    pub fn file_name(self, stem: &str) -> String {
        let suffix = match self {
            ExportFormat::Apo => "apo.txt",
            ExportFormat::GraphicEq => "graphiceq.txt",
            ExportFormat::Ffmpeg => "master.sh",
            ExportFormat::EasyEffects => "easyeffects.json",
            ExportFormat::Json => "settings.json",
        };
        format!("{stem}.{suffix}")
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ExportFormat {
    type Err = Error;
    /// Parses `apo`, `graphiceq`, `ffmpeg`, `easyeffects` or `json` (ASCII case ignored).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        ExportFormat::ALL.into_iter().find(|f| f.name() == lower).ok_or_else(|| {
            Error::Unsupported(format!(
                "unknown export format `{}` (use {}, or all)",
                s.trim(),
                ExportFormat::ALL.map(ExportFormat::name).join(", ")
            ))
        })
    }
}

/// Parses a comma-separated list of formats (`apo,ffmpeg`; `all` means every format). Order is
/// kept, repeats are dropped, and an empty list is an error.
pub fn parse_list(s: &str) -> Result<Vec<ExportFormat>> {
    let mut out: Vec<ExportFormat> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let formats = if item.eq_ignore_ascii_case("all") { ExportFormat::ALL.to_vec() } else { vec![item.parse()?] };
        for f in formats {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Unsupported(format!(
            "no export format given (use {}, or all)",
            ExportFormat::ALL.map(ExportFormat::name).join(", ")
        )));
    }
    Ok(out)
}

/// The text of one export.
pub fn render_export(format: ExportFormat, settings: &Settings) -> String {
    match format {
        ExportFormat::Apo => apo(settings),
        ExportFormat::GraphicEq => graphic_eq(settings),
        ExportFormat::Ffmpeg => ffmpeg_script(settings),
        ExportFormat::EasyEffects => easyeffects(settings),
        ExportFormat::Json => settings.to_json() + "\n",
    }
}

/// Writes `formats` into `dir` as `STEM.*` files (see the module table), each atomically; the
/// ffmpeg script is made executable (mode 755). The EasyEffects preset also gets its note,
/// `STEM.easyeffects.txt`. Returns the paths written, in order.
pub fn write_exports(settings: &Settings, formats: &[ExportFormat], dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    settings.validate("settings")?;
    let mut written = Vec::new();
    for &format in formats {
        let path = dir.join(format.file_name(stem));
        write_text_atomically(&path, &render_export(format, settings))?;
        if format == ExportFormat::Ffmpeg {
            make_executable(&path)?;
        }
        written.push(path);
        if format == ExportFormat::EasyEffects {
            let note = dir.join(format!("{stem}.easyeffects.txt"));
            write_text_atomically(&note, &easyeffects_note(settings))?;
            written.push(note);
        }
    }
    Ok(written)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::output(path, format!("cannot make it executable ({e})")))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> Result<()> {
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// FNV-1a 64-bit digest of the settings JSON, so an export can be matched to its settings file.
pub fn settings_digest(settings: &Settings) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in settings.to_json().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

/// `v` with `decimals` decimals, never "-0.00".
fn num(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// `v` rounded to `decimals` decimals, as a JSON number.
fn round(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let r = (v * scale).round() / scale;
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// The common header lines (without comment markers): title, provenance, what it carries and
/// what it cannot.
fn header(settings: &Settings, title: &str, carries: &[String], cannot: &[&str]) -> Vec<String> {
    let mut lines = vec![
        format!("refmaster {VERSION}: {title}"),
        format!("Settings: version {}, digest {}.", settings.version, settings_digest(settings)),
    ];
    for c in carries {
        lines.push(c.clone());
    }
    if !cannot.is_empty() {
        lines.push("This format cannot express:".to_string());
        for c in cannot {
            lines.push(format!("  - {c}"));
        }
    }
    lines
}

fn commented(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        if l.is_empty() {
            s.push_str("#\n");
        } else {
            let _ = writeln!(s, "# {l}");
        }
    }
    s
}

/// The parametric mid EQ that renders (no bands when the EQ stage is off).
fn active_parametric(settings: &Settings) -> ParametricEq {
    if settings.eq.enabled {
        settings.eq.parametric_mid.clone()
    } else {
        ParametricEq { preamp_db: 0.0, bands: Vec::new(), fit_rms_error_db: 0.0, fit_max_error_db: 0.0 }
    }
}

/// Where the exported filters come from: refmaster's own broad filters (they are the EQ it
/// rendered) or a fit of its fine matched curve.
fn describe_fit(settings: &Settings, p: &ParametricEq) -> String {
    if settings.eq.render == EqRender::Filters {
        return format!(
            "{} filter{}: refmaster's mid EQ itself (the broad shelves and bells it solved and rendered, not a fit of them)",
            p.bands.len(),
            if p.bands.len() == 1 { "" } else { "s" }
        );
    }
    format!(
        "{} filter{}: refmaster's same-music mid EQ (fitted to the matched mid curve to {:.2} dB RMS, {:.2} dB at \
         worst; their response is what it rendered)",
        p.bands.len(),
        if p.bands.len() == 1 { "" } else { "s" },
        p.fit_rms_error_db,
        p.fit_max_error_db
    )
}

/// What a biquad export loses against refmaster's linear-phase rendering.
fn phase_caveat(settings: &Settings) -> &'static str {
    if settings.eq.render == EqRender::Filters {
        "linear phase: refmaster renders these filters' magnitude response as a linear-phase FIR; here they run \
         as minimum-phase biquads (same magnitude, different phase)"
    } else {
        "linear phase: refmaster renders these filters' magnitude response (sampled on its 1/6-octave grid) as a \
         linear-phase FIR; here they run as minimum-phase biquads (same magnitude, different phase)"
    }
}

/// Log-spaced frequencies from `lo_hz` to `hi_hz` (inclusive), `per_octave` points an octave.
fn log_grid(lo_hz: f64, hi_hz: f64, per_octave: f64) -> Vec<f64> {
    let n = ((hi_hz / lo_hz).log2() * per_octave).ceil().max(1.0) as usize;
    (0..=n).map(|k| lo_hz * (hi_hz / lo_hz).powf(k as f64 / n as f64)).collect()
}

/// Mean of `side_curve_db − mid_curve_db` over 100 Hz–10 kHz (log-spaced), dB: the average
/// change of the side level relative to the mid, for formats that carry one width figure.
pub fn average_width_change_db(settings: &Settings) -> f64 {
    let grid = log_grid(100.0, 10_000.0, 24.0);
    let sum: f64 =
        grid.iter().map(|&f| side_curve_db(&settings.eq, &settings.width, f) - mid_curve_db(&settings.eq, f)).sum();
    sum / grid.len() as f64
}

/// True when the compressor changes something (the renderer's own test).
fn dynamics_active(settings: &Settings) -> bool {
    settings.dynamics.enabled && !settings.dynamics.bands.iter().all(CompressorBand::is_neutral)
}

// ---------------------------------------------------------------------------------------------
// Equalizer APO / AutoEQ parametric

/// The APO filter type of a band.
fn apo_type(kind: FilterKind) -> &'static str {
    match kind {
        FilterKind::Peaking => "PK",
        FilterKind::LowShelf => "LSC",
        FilterKind::HighShelf => "HSC",
    }
}

/// `ParametricEQ.txt`: `Preamp: X dB`, then `Filter N: ON PK|LSC|HSC Fc F Hz Gain G dB Q Q`
/// lines (Fc in whole Hz, as AutoEQ writes it and as PipeWire's parser reads it; gain 0.01 dB,
/// Q 0.001).
fn apo(settings: &Settings) -> String {
    let p = active_parametric(settings);
    let carries = vec![
        "Equalizer APO / AutoEQ ParametricEQ.txt (also loads in PipeWire's parametric-equalizer module).".to_string(),
        format!("Made from: {}.", describe_fit(settings, &p)),
        if settings.eq.enabled {
            "Preamp is the fit's own: the filters never boost above 0 dB anywhere in 20 Hz-20 kHz. Fc is in whole Hz \
             (as AutoEQ writes it); the gains and Qs were re-fitted after rounding so the curve stays the fit's."
                .to_string()
        } else {
            "The EQ stage is off in these settings: no filters.".to_string()
        },
    ];
    let cannot = [
        "mid/side EQ and width: the mid curve is applied to L and R alike (the side EQ and width are lost)",
        phase_caveat(settings),
        "multiband compression",
        "the saturator",
        "the limiter and the loudness drive (set the playback level yourself)",
    ];
    let mut s = commented(&header(settings, "parametric EQ", &carries, &cannot));
    let _ = writeln!(s, "Preamp: {} dB", num(p.preamp_db, 2));
    for (i, b) in apo_bands(&p).iter().enumerate() {
        let _ = writeln!(
            s,
            "Filter {}: ON {} Fc {} Hz Gain {} dB Q {}",
            i + 1,
            apo_type(b.kind),
            num(b.freq_hz, 0),
            num(b.gain_db, 2),
            num(b.q, 3)
        );
    }
    s
}

/// Sample rate at which [`apo_bands`] compares responses, Hz (the file does not say at which
/// rate it will run; the rounding matters at low frequencies, where the rate hardly does).
pub const APO_REFIT_RATE_HZ: f64 = 48_000.0;

/// The bands as the APO file writes them. AutoEQ writes Fc in whole Hz, and PipeWire's
/// parametric-equalizer module (before 1.4) reads nothing else; but rounding 48.4 Hz to 48 Hz
/// moves a narrow low band enough to shift the curve by most of a dB. So the Fcs are rounded one
/// band at a time, lowest first, and after each the gains, Qs and the Fcs not yet rounded are
/// re-fitted (Levenberg-Marquardt, 20 Hz–20 kHz at 1/24 octave, [`APO_REFIT_RATE_HZ`]) until the
/// filters follow the original response again, inside the box the original filters were in (no
/// gain past the largest |gain|, no Q past the largest Q), so that the file keeps the solver's
/// EQ bound and its broad Qs.
pub fn apo_bands(p: &ParametricEq) -> Vec<ParametricBand> {
    let grid = log_grid(20.0, 20_000.0, 24.0);
    let target = response_db(&p.bands, &grid, APO_REFIT_RATE_HZ);
    let mut bands = p.bands.clone();
    let mut order: Vec<usize> = (0..bands.len()).collect();
    order.sort_by(|&a, &b| bands[a].freq_hz.total_cmp(&bands[b].freq_hz));
    let mut fixed = vec![false; bands.len()];
    let largest = |v: &dyn Fn(&ParametricBand) -> f64| bands.iter().map(v).fold(0.0, f64::max);
    let bounds = RefitBounds { max_gain_db: largest(&|b| b.gain_db.abs()), max_q: largest(&|b| b.q).max(0.05) };
    for &i in &order {
        bands[i].freq_hz = bands[i].freq_hz.round().max(1.0);
        fixed[i] = true;
        refit(&mut bands, &fixed, &grid, &target, bounds);
    }
    bands
}

/// The parameter box of [`refit`]: largest |gain| (dB) and largest Q.
#[derive(Debug, Clone, Copy)]
struct RefitBounds {
    max_gain_db: f64,
    max_q: f64,
}

/// Levenberg-Marquardt on the bands' gains, ln Q and (where `!fixed`, bells only) ln Fc,
/// minimising the squared dB difference to `target` on `grid`. A shelf's corner never moves
/// but for its own rounding: the broad fit keeps it inside the musical range (low shelf
/// 30–400 Hz, high shelf 2–16 kHz), often on its edge, and a refit would push it past.
fn refit(bands: &mut [ParametricBand], fixed: &[bool], grid: &[f64], target: &[f64], bounds: RefitBounds) {
    let fs = APO_REFIT_RATE_HZ;
    // Free parameters: (band, which) with which 0 = gain, 1 = ln Q, 2 = ln Fc.
    let movable = |b: usize| !fixed[b] && bands[b].kind == FilterKind::Peaking;
    let params: Vec<(usize, usize)> =
        (0..bands.len()).flat_map(|b| (0..if movable(b) { 3 } else { 2 }).map(move |w| (b, w))).collect();
    let get = |b: &ParametricBand, w: usize| match w {
        0 => b.gain_db,
        1 => b.q.max(1e-3).ln(),
        _ => b.freq_hz.max(1.0).ln(),
    };
    let put = |b: &mut ParametricBand, w: usize, v: f64| match w {
        0 => b.gain_db = v.clamp(-bounds.max_gain_db, bounds.max_gain_db),
        1 => b.q = v.exp().clamp(0.05, bounds.max_q),
        _ => b.freq_hz = v.exp().clamp(10.0, 0.45 * fs),
    };
    let cost = |bands: &[ParametricBand]| -> f64 {
        response_db(bands, grid, fs).iter().zip(target).map(|(m, t)| (m - t) * (m - t)).sum()
    };
    let n = params.len();
    let mut current = cost(bands);
    let mut lambda = 1e-3;
    for _ in 0..30 {
        if current < 1e-10 {
            break;
        }
        let residual: Vec<f64> = response_db(bands, grid, fs).iter().zip(target).map(|(m, t)| m - t).collect();
        // Central differences; a parameter only moves its own band's response.
        let jac: Vec<Vec<f64>> = params
            .iter()
            .map(|&(b, w)| {
                let h = 1e-4;
                let mut probe = [bands[b].clone()];
                let v = get(&probe[0], w);
                put(&mut probe[0], w, v + h);
                let up = response_db(&probe, grid, fs);
                put(&mut probe[0], w, v - h);
                let down = response_db(&probe, grid, fs);
                up.iter().zip(&down).map(|(u, d)| (u - d) / (2.0 * h)).collect()
            })
            .collect();
        let mut a = vec![0.0; n * n];
        let mut g = vec![0.0; n];
        for i in 0..n {
            g[i] = -jac[i].iter().zip(&residual).map(|(j, r)| j * r).sum::<f64>();
            for k in 0..n {
                a[i * n + k] = jac[i].iter().zip(&jac[k]).map(|(x, y)| x * y).sum();
            }
        }
        let mut improved = false;
        for _ in 0..8 {
            let mut damped = a.clone();
            for i in 0..n {
                damped[i * n + i] += lambda * a[i * n + i].max(1e-9);
            }
            let Some(step) = solve_linear(&mut damped, &g, n) else {
                lambda *= 10.0;
                continue;
            };
            let mut trial = bands.to_vec();
            for (&(b, w), d) in params.iter().zip(&step) {
                let v = get(&trial[b], w);
                put(&mut trial[b], w, v + d);
            }
            let c = cost(&trial);
            if c < current {
                bands.clone_from_slice(&trial);
                current = c;
                lambda = (lambda / 3.0).max(1e-9);
                improved = true;
                break;
            }
            lambda *= 4.0;
        }
        if !improved {
            break;
        }
    }
}

/// Solves `a · x = b` (`a` is `n`×`n`, row-major, overwritten) by Gaussian elimination with
/// partial pivoting; `None` when `a` is singular.
fn solve_linear(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut x = b.to_vec();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-12 {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
            }
            x.swap(col, pivot);
        }
        for row in col + 1..n {
            let f = a[row * n + col] / a[col * n + col];
            if f != 0.0 {
                for k in col..n {
                    a[row * n + k] -= f * a[col * n + k];
                }
                x[row] -= f * x[col];
            }
        }
    }
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row * n + k] * x[k]).sum();
        x[row] = (x[row] - s) / a[row * n + row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

// ---------------------------------------------------------------------------------------------
// GraphicEQ

/// The 127 GraphicEQ frequencies, Hz: `floor(20 · 1.0563^n)`, 20 Hz to 19.9 kHz (AutoEQ's
/// spacing).
pub fn graphic_eq_frequencies_hz() -> Vec<f64> {
    (0..GRAPHIC_EQ_POINTS).map(|n| (20.0 * GRAPHIC_EQ_STEP.powi(n as i32) + 1e-9).floor()).collect()
}

/// The GraphicEQ preamp, dB: minus the curve's largest gain over the points (≤ 0).
pub fn graphic_eq_preamp_db(settings: &Settings) -> f64 {
    let max = graphic_eq_frequencies_hz().iter().map(|&f| mid_curve_db(&settings.eq, f)).fold(f64::MIN, f64::max);
    -max.max(0.0)
}

fn graphic_eq(settings: &Settings) -> String {
    let preamp = graphic_eq_preamp_db(settings);
    let carries = vec![
        "Equalizer APO / AutoEQ GraphicEQ (GraphicEQ.txt; Wavelet and others read the same line).".to_string(),
        if settings.eq.render == EqRender::Filters {
            format!(
                "Made from: the response of refmaster's mid EQ filters (the same filters as the parametric \
                 export; what its FIR renders), at {GRAPHIC_EQ_POINTS} log-spaced points, 20 Hz-20 kHz."
            )
        } else {
            format!(
                "Made from: refmaster's same-music mid EQ curve (its filters' response, what its FIR renders), at \
                 {GRAPHIC_EQ_POINTS} log-spaced points, 20 Hz-20 kHz."
            )
        },
        format!("Preamp: {} dB, already included in every gain below (the curve never boosts).", num(preamp, 2)),
    ];
    let cannot = [
        "mid/side EQ and width: the mid curve is applied to L and R alike",
        "multiband compression",
        "the saturator",
        "the limiter and the loudness drive (set the playback level yourself)",
    ];
    let mut s = commented(&header(settings, "graphic EQ", &carries, &cannot));
    let points: Vec<String> = graphic_eq_frequencies_hz()
        .iter()
        .map(|&f| format!("{} {}", num(f, 0), num(mid_curve_db(&settings.eq, f) + preamp, 2)))
        .collect();
    let _ = writeln!(s, "GraphicEQ: {}", points.join("; "));
    s
}

// ---------------------------------------------------------------------------------------------
// ffmpeg

/// `firequalizer` gain entries for the mid curve (channel 0) and the side curve (channel 1) of
/// the mid/side signal. In `scale=loglog` mode firequalizer's `f` is `log2(f_Hz / 20)`, so the
/// entries are placed on that axis and interpolate linearly in dB over log frequency, as
/// refmaster's curves do. The side entries sit 1000 higher on the axis (the ffmpeg manual's
/// trick for per-channel curves), with hold entries so neither curve leaks into the other.
fn firequalizer_entries(settings: &Settings) -> String {
    let x = |f: f64| (f / 20.0).log2();
    let eq = &settings.eq;
    // Filters are sampled at 1/12 octave (a Q 2 bell then reads within a few hundredths of a dB
    // between points); a grid curve at its own points.
    let points: Vec<f64> = match (eq.render, eq.frequencies_hz.first(), eq.frequencies_hz.last()) {
        (EqRender::Filters, Some(&lo), Some(&hi)) if hi > lo => log_grid(lo, hi, 12.0),
        _ => eq.frequencies_hz.clone(),
    };
    let mut mid: Vec<(f64, f64)> = points.iter().map(|&f| (x(f), mid_curve_db(eq, f))).collect();
    if let Some(&(_, last)) = mid.last() {
        mid.push((100.0, last));
    }
    // The side curve bends at the EQ grid and at the width bands' centres.
    let mut breaks: Vec<f64> = points.clone();
    if settings.width.enabled {
        breaks.extend(settings.width.bands.iter().map(|b| (b.low_hz.max(10.0) * b.high_hz).sqrt()));
    }
    breaks.retain(|f| f.is_finite() && *f > 0.0);
    breaks.sort_by(f64::total_cmp);
    breaks.dedup_by(|a, b| (*a / *b - 1.0).abs() < 1e-6);
    let side: Vec<(f64, f64)> = breaks.iter().map(|&f| (x(f), side_curve_db(eq, &settings.width, f))).collect();
    let mut entries: Vec<String> = mid.iter().map(|(f, g)| format!("entry({},{})", num(*f, 6), num(*g, 4))).collect();
    if let Some(&(_, first)) = side.first() {
        entries.push(format!("entry(900,{})", num(first, 4)));
    }
    entries.extend(side.iter().map(|(f, g)| format!("entry({},{})", num(1000.0 + f, 6), num(*g, 4))));
    nest(&entries)
}

/// Joins expressions with `;`, nested in parentheses in groups of at most 32: ffmpeg's
/// expression parser recurses once a `;`, and refuses chains much longer than 100.
fn nest(items: &[String]) -> String {
    const GROUP: usize = 32;
    if items.len() <= GROUP {
        return items.join(";");
    }
    let chunk = items.len().div_ceil(GROUP);
    items.chunks(chunk).map(|c| format!("({})", nest(c))).collect::<Vec<_>>().join(";")
}

/// True when `curve` is 0 dB everywhere from 1 Hz to 100 kHz (checked densely).
fn is_flat(curve: impl Fn(f64) -> f64) -> bool {
    log_grid(1.0, 100_000.0, 48.0).into_iter().all(|f| curve(f).abs() < 1e-9)
}

/// The compressor part of the filtergraph (input: the EQ'd mid/side signal, unlabelled).
/// Multiband settings split the signal with `acrossover` and compress each band on its own mid;
/// linked (broadband) settings give every band one gain from one detector, which is one
/// compressor on the whole signal whose sidechain is the mid.
fn ffmpeg_compressor(settings: &Settings) -> String {
    let d = &settings.dynamics;
    if d.linked {
        return match d.bands.first() {
            Some(b) => ffmpeg_band_compressor("", "bb", "", b),
            None => "anull".to_string(),
        };
    }
    let xo = d.crossovers_hz.map(|f| num(f, 1)).join(" ");
    let mut g = format!("acrossover=split={xo}:order=4th[b0][b1][b2][b3];\n");
    for (i, b) in d.bands.iter().enumerate().take(4) {
        let _ = writeln!(g, "{};", ffmpeg_band_compressor(&format!("[b{i}]"), &i.to_string(), &format!("[c{i}]"), b));
    }
    g.push_str("[c0][c1][c2][c3]amix=inputs=4:normalize=0");
    g
}

/// One compressor from `input` to `output` (filtergraph labels, or "" for the unlabelled
/// stream), its detector on the mid (channel 0); `tag` keeps its inner labels apart.
fn ffmpeg_band_compressor(input: &str, tag: &str, output: &str, b: &CompressorBand) -> String {
    let mut g = String::new();
    if b.ratio > 1.0 {
        // ffmpeg's threshold stops at -60.2 dBFS; lower thresholds raise the sidechain instead.
        let floor = -60.0;
        let (threshold_db, sc_gain_db) =
            if b.threshold_dbfs < floor { (floor, floor - b.threshold_dbfs) } else { (b.threshold_dbfs, 0.0) };
        let makeup = b.makeup_db.clamp(0.0, 36.0);
        let _ = write!(
            g,
            "{input}asplit[m{tag}][s{tag}];[s{tag}]pan=mono|c0=c0[d{tag}];\
             [m{tag}][d{tag}]sidechaincompress=threshold={}:ratio={}:knee={}:attack={}:release={}:makeup={}:\
             level_sc={}:detection=rms:link=average",
            num(10f64.powf(threshold_db / 20.0), 6),
            num(b.ratio.clamp(1.0, 20.0), 3),
            num(10f64.powf(b.knee_db.clamp(0.0, 18.0) / 20.0), 4),
            num((4.0 * b.attack_ms).clamp(0.01, 2000.0), 3),
            num((4.0 * b.release_ms).clamp(0.01, 9000.0), 3),
            num(10f64.powf(makeup / 20.0), 5),
            num(10f64.powf(sc_gain_db / 20.0), 5),
        );
        if b.makeup_db < 0.0 {
            let _ = write!(g, ",volume={}dB", num(b.makeup_db, 3));
        }
    } else if b.makeup_db != 0.0 {
        let _ = write!(g, "{input}volume={}dB", num(b.makeup_db, 3));
    } else {
        let _ = write!(g, "{input}anull");
    }
    g.push_str(output);
    g
}

/// The filtergraph before the drive and the limiter: mid/side EQ and width, compression, back
/// to L/R. `${UP}` and `${DELAY}` are left for the shell to fill in.
fn ffmpeg_pre_chain(settings: &Settings) -> String {
    let eq_mid_flat = is_flat(|f| mid_curve_db(&settings.eq, f));
    let eq_side_flat = is_flat(|f| side_curve_db(&settings.eq, &settings.width, f));
    let dynamics = dynamics_active(settings);
    let saturation = ffmpeg_saturation(settings);
    if eq_mid_flat && eq_side_flat && !dynamics {
        return format!("${{UP}}anull{saturation}");
    }
    let mut g = String::from("${UP}pan=stereo|c0=0.5*c0+0.5*c1|c1=0.5*c0-0.5*c1,\n");
    if !(eq_mid_flat && eq_side_flat) {
        let _ = writeln!(
            g,
            "firequalizer=delay=${{DELAY}}:wfunc=blackman:zero_phase=on:multi=on:scale=loglog:\
             gain='if(eq(ch,0),gain_interpolate(f),gain_interpolate(max(f,-99)+1000))':\
             gain_entry='{}',\natrim=start=0,",
            firequalizer_entries(settings)
        );
    }
    if dynamics {
        g.push_str(&ffmpeg_compressor(settings));
        g.push_str(",\n");
    }
    g.push_str("pan=stereo|c0=c0+c1|c1=c0-c1");
    g.push_str(&saturation);
    g
}

/// The saturator as ffmpeg filters (empty when off): the drive, then `asoftclip`'s tanh at the
/// ceiling, 8x oversampled like refmaster's. asoftclip computes `threshold·tanh(x/threshold)`,
/// which bends from zero where refmaster's curve is straight up to its knee. The script
/// resamples around it itself: asoftclip's own `oversample` option changes the level in ffmpeg
/// 5.1 (measured: -5.8 dB on a -20 dBFS sine at oversample=8, none at 1).
fn ffmpeg_saturation(settings: &Settings) -> String {
    let s = &settings.saturation;
    if !s.enabled {
        return String::new();
    }
    let clip = 10f64.powf(settings.limiter.ceiling_dbtp / 20.0).clamp(1e-6, 1.0);
    let wet = s.mix.clamp(0.0, 1.0);
    let clipper = format!("aresample=$((RATE * 8)),asoftclip=type=tanh:threshold={},aresample=$RATE", num(clip, 6));
    if wet >= 1.0 {
        format!(",\nvolume={}dB,{clipper}", num(s.drive_db, 3))
    } else {
        format!(
            ",\nvolume={}dB,asplit[dry][wet];[wet]{clipper}[sat];[dry][sat]amix=inputs=2:weights='{} {}':normalize=0",
            num(s.drive_db, 3),
            num(1.0 - wet, 4),
            num(wet, 4)
        )
    }
}

fn ffmpeg_script(settings: &Settings) -> String {
    let l = &settings.limiter;
    let eq_on = settings.eq.enabled;
    let width_on = settings.width.enabled && !settings.width.bands.is_empty();
    let dynamics = dynamics_active(settings);
    let aim_db = l.ceiling_dbtp - FFMPEG_CEILING_MARGIN_DB;
    let carries = vec![
        "ffmpeg script: sh THIS_FILE IN OUT (POSIX sh, awk, ffmpeg and ffprobe 5.0 or newer).".to_string(),
        "It renders the mix IN the way refmaster would, as far as ffmpeg's filters go, into OUT (24-bit for .wav)."
            .to_string(),
        String::new(),
        "What it does, stage by stage (stages the settings switch off are left out):".to_string(),
        format!(
            "  1. EQ{}: the exact mid and side curves{} as linear-phase FIRs (firequalizer, mid/side via pan).",
            if width_on { " and width" } else { "" },
            if width_on { " (the side curve includes the width stage)" } else { "" }
        ),
        if dynamics {
            "  2. Multiband compression: acrossover (LR4, same crossovers) and one sidechaincompress a band, \
             its RMS detector on the band's mid with refmaster's time constants, the gain applied to mid and side."
                .to_string()
        } else {
            "  2. Multiband compression: off in these settings.".to_string()
        },
        format!(
            "  3. Loudness: the drive is searched (up to {FFMPEG_MAX_PASSES} measuring passes with ffmpeg's ebur128) \
             until the output sits within {FFMPEG_LOUDNESS_TOLERANCE_LU} LU of the target, {} LUFS.",
            num(l.target_lufs, 1)
        ),
        if settings.saturation.enabled {
            format!(
                "  2b. Saturation: drive {} dB into asoftclip (tanh, 8x oversampled) at the {} dBTP ceiling, mix {} %.",
                num(settings.saturation.drive_db, 2),
                num(l.ceiling_dbtp, 1),
                num(100.0 * settings.saturation.mix, 0)
            )
        } else {
            "  2b. Saturation: off in these settings.".to_string()
        },
        if l.enabled {
            format!(
                "  4. Limiter: alimiter at {FFMPEG_LIMITER_OVERSAMPLING}x the sample rate (so its sample peaks are \
                 close to true peaks), limit {} dBFS: the {} dBTP ceiling minus {} dB for the resampling back; \
                 release {FFMPEG_RELEASE_FACTOR}x refmaster's (calibrated to give refmaster's loudness at the \
                 same drive). The drive stays within {} dB of limiting (refmaster's default rule) and at \
                 most {FFMPEG_DRIVE_SLACK_DB} dB above refmaster's own drive, {} dB (which is always allowed).",
                num(aim_db, 2),
                num(l.ceiling_dbtp, 1),
                num(FFMPEG_CEILING_MARGIN_DB, 1),
                num(MAX_LIMITING_DB, 0),
                num(l.drive_db, 2)
            )
        } else {
            "  4. Limiter: off in these settings (the drive alone sets the loudness; overs are possible).".to_string()
        },
    ];
    let mut cannot = vec![
        "refmaster's limiter exactly: alimiter's gain moves differently (oversampled, margin and release adapted)",
        "refmaster's FIR length above 112 kHz sample rates (firequalizer's FFT limit: the filter gets shorter)",
        "refmaster's crossover tree and soft knee exactly (ffmpeg: cascaded LR4 splits, Hermite knee)",
        "the TPDF dither (ffmpeg rounds to the output format)",
        "the saturator's straight line below its knee (asoftclip's tanh bends from zero, about 0.7 dB at the knee)",
        "the saturator's stereo link (asoftclip clips each channel on its own, so a clipped source panned off centre moves toward it; refmaster's mid takes one gain and its side that gain smoothed)",
    ];
    if !settings.saturation.enabled {
        cannot.retain(|c| !c.starts_with("the saturator"));
    }
    if !dynamics {
        cannot.retain(|c| !c.starts_with("refmaster's crossover"));
    }
    if !eq_on && !width_on {
        cannot.retain(|c| !c.starts_with("refmaster's FIR"));
    }
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&commented(&header(settings, "ffmpeg mastering script", &carries, &cannot)));
    let pre = ffmpeg_pre_chain(settings);
    let limiter = if l.enabled {
        format!(
            "aresample=$((RATE * {FFMPEG_LIMITER_OVERSAMPLING})),\
             alimiter=limit={}:level=disabled:attack={}:release={}:latency=1,aresample=$RATE",
            num(10f64.powf(aim_db / 20.0).clamp(0.0625, 1.0), 6),
            num(l.lookahead_ms.clamp(0.1, 80.0), 3),
            num((FFMPEG_RELEASE_FACTOR * l.release_ms).clamp(1.0, 8000.0), 3)
        )
    } else {
        "anull".to_string()
    };
    let _ = write!(
        s,
        r#"
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 IN OUT" >&2
    exit 2
fi
IN=$1
OUT=$2
if [ "$IN" = "$OUT" ]; then
    echo "$0: OUT must not be IN" >&2
    exit 2
fi
for tool in ffmpeg ffprobe awk; do
    command -v "$tool" >/dev/null 2>&1 || {{ echo "$0: $tool is required but not on PATH" >&2; exit 1; }}
done
if [ ! -f "$IN" ]; then
    echo "$0: $IN: no such file" >&2
    exit 1
fi

TARGET_LUFS={target}
DRIVE_DB={drive}
LIMITER_ON={limiter_on}
AIM_DBFS={aim}
MAX_LIMITING_DB={max_limiting}

probe() {{
    ffprobe -v error -select_streams a:0 -show_entries "stream=$1" -of default=noprint_wrappers=1:nokey=1 "$IN" | head -n 1
}}
CHANNELS=$(probe channels)
RATE=$(probe sample_rate)
DURATION=$(ffprobe -v error -show_entries format=duration -of default=noprint_wrappers=1:nokey=1 "$IN" | head -n 1)
case $CHANNELS in
    1) UP='pan=stereo|c0=c0|c1=c0,'; DOWN=',pan=mono|c0=0.5*c0+0.5*c1' ;;
    2) UP=''; DOWN='' ;;
    *) echo "$0: $IN has $CHANNELS channels; refmaster masters mono or stereo" >&2; exit 1 ;;
esac
case $RATE in
    ''|*[!0-9]*) echo "$0: cannot read the sample rate of $IN" >&2; exit 1 ;;
esac
LENGTH=''
case $DURATION in
    ''|N/A) ;;
    *) LENGTH="-t $DURATION" ;;
esac
CODEC=''
case $OUT in
    *.wav|*.WAV) CODEC='-c:a pcm_s24le' ;;
esac
# FIR half-length in seconds: refmaster's filter length, shortened at high rates (FFT limit).
DELAY=$(awk -v r="$RATE" 'BEGIN {{ d = {fir_samples} / r; if (d > {fir_half}) d = {fir_half}; printf "%.4f", d }}')
LIMITER="{limiter}"

TMP=$(mktemp -d "${{TMPDIR:-/tmp}}/refmaster.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

# measure FILE FILTERS PEAK: runs FILTERS on FILE, prints "integrated-LUFS peak-dB" (PEAK: sample or true).
measure() {{
    if ! ffmpeg -nostdin -hide_banner -nostats -i "$1" -af "$2,ebur128=framelog=verbose:peak=$3" -f null - 2>"$TMP/log"; then
        cat "$TMP/log" >&2
        exit 1
    fi
    awk '/Summary:/ {{ s = 1 }} s && $1 == "I:" {{ i = $2 }} s && $1 == "Peak:" {{ p = $2 }}
         END {{ if (i == "" || p == "") exit 1; print i, p }}' "$TMP/log"
}}

# Stages 1-2: EQ, width and compression, into a float file.
PRE=$(cat <<EOF
{pre}
EOF
)
if ! ffmpeg -nostdin -hide_banner -nostats -loglevel error -y -i "$IN" -af "$PRE" $LENGTH -c:a pcm_f32le "$TMP/pre.wav"; then
    echo "$0: ffmpeg failed on the EQ/compression stage" >&2
    exit 1
fi
MEASURED=$(measure "$TMP/pre.wav" anull sample)
PRE_LUFS=${{MEASURED% *}}
if awk -v l="$PRE_LUFS" 'BEGIN {{ exit !(l <= -69.9) }}'; then
    echo "$0: $IN is (nearly) silent: nothing to master" >&2
    exit 1
fi

# Stages 3-4: drive and limiter. Without the limiter, loudness follows the drive exactly.
if [ "$LIMITER_ON" = 1 ]; then
    # refmaster's cap on the limiting depth: the level that 0.1 % of the (4x oversampled) pre-limiter
    # signal exceeds may be pushed at most MAX_LIMITING_DB over the limit. volumedetect's histogram
    # runs down from the peak until it holds 0.1 % of the samples.
    if ! ffmpeg -nostdin -hide_banner -nostats -i "$TMP/pre.wav" -af "aresample=$((RATE * 4)),volume=-24dB,volumedetect" \
        -f null - 2>"$TMP/log"; then
        cat "$TMP/log" >&2
        exit 1
    fi
    LOUD_DB=$(awk '/n_samples:/ {{ n = $NF }}
        /max_volume:/ {{ top = $(NF - 1) }}
        /histogram_[0-9]+db:/ {{
            db = $(NF - 1); gsub(/[^0-9]/, "", db); c = $NF
            if (!done && cum + c >= n / 1000) {{ level = -(db + (n / 1000 - cum) / c); done = 1 }}
            cum += c }}
        END {{ if (!done) level = top; printf "%.2f", level + 24 }}' "$TMP/log")
    # refmaster's own drive is always allowed (it may have been given a deeper limit), and never
    # exceeded by more than {slack} dB.
    DRIVE_MAX=$(awk -v a="$AIM_DBFS" -v m="$MAX_LIMITING_DB" -v p="$LOUD_DB" -v d="$DRIVE_DB" \
        'BEGIN {{ x = a + m - p; if (x > d + {slack}) x = d + {slack}; if (x < d) x = d; if (x > 36) x = 36; printf "%.3f", x }}')
    DRIVE=$(awk -v d="$DRIVE_DB" -v m="$DRIVE_MAX" 'BEGIN {{ if (d > m) d = m; printf "%.3f", d }}')
    PASS=0
    PREV_DRIVE=''
    PREV_LUFS=''
    BEST_DRIVE=$DRIVE
    BEST_ERROR=1000
    while :; do
        PASS=$((PASS + 1))
        MEASURED=$(measure "$TMP/pre.wav" "volume=${{DRIVE}}dB,$LIMITER" sample)
        LUFS=${{MEASURED% *}}
        STEP=$(awk -v t="$TARGET_LUFS" -v d="$DRIVE" -v l="$LUFS" -v pd="$PREV_DRIVE" -v pl="$PREV_LUFS" \
            -v m="$DRIVE_MAX" -v n="$PASS" -v be="$BEST_ERROR" -v bd="$BEST_DRIVE" 'BEGIN {{
            e = t - l; ae = e < 0 ? -e : e
            if (ae < be) {{ be = ae; bd = d }}
            if (ae <= {tolerance} || n >= {max_passes}) {{ printf "done %s %s\n", bd, be; exit }}
            s = 1
            if (pd != "" && d != pd) {{ s = (l - pl) / (d - pd); if (s < 0.1) s = 0.1; if (s > 1.5) s = 1.5 }}
            x = d + e / s; if (x > m) x = m; if (x < -60) x = -60
            dx = x - d; if (dx < 0) dx = -dx
            if (dx < 0.005) {{ printf "done %s %s\n", bd, be; exit }}
            printf "next %.3f %s %s\n", x, bd, be }}')
        set -- $STEP
        if [ "$1" = done ]; then
            BEST_DRIVE=$2
            break
        fi
        PREV_DRIVE=$DRIVE
        PREV_LUFS=$LUFS
        DRIVE=$2
        BEST_DRIVE=$3
        BEST_ERROR=$4
    done
    DRIVE=$BEST_DRIVE
    FINAL="volume=${{DRIVE}}dB,$LIMITER$DOWN"
else
    DRIVE=$(awk -v t="$TARGET_LUFS" -v l="$PRE_LUFS" 'BEGIN {{ x = t - l; if (x > 36) x = 36; if (x < -60) x = -60; printf "%.3f", x }}')
    FINAL="volume=${{DRIVE}}dB$DOWN"
fi

if ! ffmpeg -nostdin -hide_banner -nostats -loglevel error -y -i "$TMP/pre.wav" -af "$FINAL" $CODEC "$OUT"; then
    echo "$0: ffmpeg failed writing $OUT" >&2
    exit 1
fi
MEASURED=$(measure "$OUT" anull true)
echo "wrote $OUT: drive ${{DRIVE}} dB, ${{MEASURED% *}} LUFS (target $TARGET_LUFS), true peak ${{MEASURED#* }} dBTP"
"#,
        target = num(l.target_lufs, 2),
        drive = num(l.drive_db, 3),
        limiter_on = u8::from(l.enabled),
        aim = num(aim_db, 2),
        max_limiting = num(MAX_LIMITING_DB, 1),
        limiter = limiter,
        fir_samples = FFMPEG_FIR_SAMPLES_MAX,
        fir_half = FFMPEG_FIR_HALF_S,
        pre = pre,
        tolerance = FFMPEG_LOUDNESS_TOLERANCE_LU,
        slack = FFMPEG_DRIVE_SLACK_DB,
        max_passes = FFMPEG_MAX_PASSES,
    );
    s
}

// ---------------------------------------------------------------------------------------------
// EasyEffects

/// EasyEffects' name of a filter type.
fn easyeffects_type(kind: FilterKind) -> &'static str {
    match kind {
        FilterKind::Peaking => "Bell",
        FilterKind::LowShelf => "Lo-shelf",
        FilterKind::HighShelf => "Hi-shelf",
    }
}

fn easyeffects_equalizer(settings: &Settings) -> Value {
    let p = active_parametric(settings);
    let mut channel = Map::new();
    let count = p.bands.len().clamp(1, 32);
    for i in 0..count {
        let band = match p.bands.get(i) {
            Some(b) => json!({
                "frequency": round(b.freq_hz.clamp(10.0, 24_000.0), 2),
                "gain": round(b.gain_db.clamp(-35.0, 35.0), 2),
                "mode": "APO (DR)",
                "mute": false,
                "q": round(b.q.clamp(0.01, 100.0), 4),
                "slope": "x1",
                "solo": false,
                "type": easyeffects_type(b.kind),
                "width": 4.0,
            }),
            None => json!({
                "frequency": 1000.0, "gain": 0.0, "mode": "APO (DR)", "mute": false, "q": 0.707,
                "slope": "x1", "solo": false, "type": "Off", "width": 4.0,
            }),
        };
        channel.insert(format!("band{i}"), band);
    }
    let channel = Value::Object(channel);
    json!({
        "balance": 0.0,
        "bypass": !settings.eq.enabled || p.bands.is_empty(),
        "input-gain": round(p.preamp_db.clamp(-36.0, 36.0), 2),
        "left": channel.clone(),
        "mode": "IIR",
        "num-bands": count,
        "output-gain": 0.0,
        "pitch-left": 0.0,
        "pitch-right": 0.0,
        "right": channel,
        "split-channels": false,
    })
}

fn easyeffects_multiband(settings: &Settings) -> Value {
    let d = &settings.dynamics;
    let active = dynamics_active(settings);
    let edges = [0.0, d.crossovers_hz[0], d.crossovers_hz[1], d.crossovers_hz[2], 20_000.0];
    let mut obj = Map::new();
    for (k, v) in [
        ("bypass", json!(!active)),
        ("compressor-mode", json!("Modern")),
        ("dry", json!(-80.01)),
        ("envelope-boost", json!("None")),
        ("input-gain", json!(0.0)),
        ("output-gain", json!(0.0)),
        ("stereo-split", json!(false)),
        ("wet", json!(0.0)),
    ] {
        obj.insert(k.to_string(), v);
    }
    let mut split = d.crossovers_hz[2];
    for n in 0..8usize {
        let mut band = Map::new();
        if n > 0 {
            band.insert("enable-band".into(), json!(n < 4));
            let f = if n < 4 {
                d.crossovers_hz[n - 1]
            } else {
                split = (split * 1.25).min(20_000.0);
                split
            };
            band.insert("split-frequency".into(), json!(round(f, 1)));
        }
        let b = d.bands.get(n).filter(|_| n < 4);
        let on = active && b.is_some_and(|b| !b.is_neutral());
        let (threshold, attack, release, ratio, knee, makeup) = match b {
            Some(b) => (b.threshold_dbfs, b.attack_ms, b.release_ms, b.ratio, b.knee_db, b.makeup_db),
            None => (-12.0, 20.0, 100.0, 1.0, 6.0, 0.0),
        };
        let (lo, hi) = if n < 4 { (edges[n].max(10.0), edges[n + 1]) } else { (10.0, 20_000.0) };
        // The plugin's threshold stops at -60 dBFS; a lower one (a same-music restoration puts it
        // under the band's quietest passages) raises the sidechain instead, as in the ffmpeg
        // script, so the gain law keeps its place.
        let (threshold, preamp) = if threshold < -60.0 { (-60.0, -60.0 - threshold) } else { (threshold, 0.0) };
        for (k, v) in [
            ("compressor-enable", json!(on)),
            ("solo", json!(false)),
            ("mute", json!(false)),
            ("attack-threshold", json!(round(threshold.clamp(-60.0, 0.0), 2))),
            ("attack-time", json!(round(attack.clamp(0.0, 2000.0), 2))),
            ("release-threshold", json!(-120.0)),
            ("release-time", json!(round(release.clamp(0.0, 5000.0), 2))),
            ("ratio", json!(round(ratio.clamp(1.0, 100.0), 3))),
            ("knee", json!(round((-knee / 2.0).clamp(-24.0, 0.0), 2))),
            ("makeup", json!(round(makeup.clamp(-60.0, 60.0), 2))),
            ("compression-mode", json!("Downward")),
            ("external-sidechain", json!(false)),
            ("sidechain-mode", json!("RMS")),
            ("sidechain-source", json!("Middle")),
            ("stereo-split-source", json!("Left/Right")),
            ("sidechain-lookahead", json!(0.0)),
            ("sidechain-reactivity", json!(10.0)),
            ("sidechain-preamp", json!(round(preamp, 2))),
            ("sidechain-custom-lowcut-filter", json!(false)),
            ("sidechain-custom-highcut-filter", json!(false)),
            ("sidechain-lowcut-frequency", json!(round(lo, 1))),
            ("sidechain-highcut-frequency", json!(round(hi, 1))),
            ("boost-threshold", json!(-72.0)),
            ("boost-amount", json!(6.0)),
        ] {
            band.insert(k.to_string(), v);
        }
        obj.insert(format!("band{n}"), Value::Object(band));
    }
    Value::Object(obj)
}

fn easyeffects_stereo_tools(settings: &Settings) -> Value {
    let width = average_width_change_db(settings);
    json!({
        "balance-in": 0.0,
        "balance-out": 0.0,
        "bypass": width.abs() < 0.005,
        "delay": 0.0,
        "input-gain": 0.0,
        "middle-level": 0.0,
        "middle-panorama": 0.0,
        "mode": "LR > LR (Stereo Default)",
        "mutel": false,
        "muter": false,
        "output-gain": 0.0,
        "phasel": false,
        "phaser": false,
        "sc-level": 1.0,
        "side-balance": 0.0,
        "side-level": round(width.clamp(-36.0, 36.0), 2),
        "softclip": false,
        "stereo-base": 0.0,
        "stereo-phase": 0.0,
    })
}

fn easyeffects_limiter(settings: &Settings) -> Value {
    let l = &settings.limiter;
    json!({
        "alr": false,
        "alr-attack": 5.0,
        "alr-knee": 0.0,
        "alr-release": 50.0,
        "attack": round(l.lookahead_ms.clamp(0.25, 20.0), 3),
        "bypass": !l.enabled,
        "dithering": "None",
        "external-sidechain": false,
        "gain-boost": false,
        "input-gain": round((l.drive_db + sat_drive_db(settings)).clamp(-36.0, 36.0), 2),
        "lookahead": round(l.lookahead_ms.clamp(0.1, 20.0), 3),
        "mode": "Herm Thin",
        // The safety trim refmaster's render carries after its limiter (0 dB on most masters).
        "output-gain": round(l.output_trim_db.clamp(OUTPUT_TRIM_DB.0, OUTPUT_TRIM_DB.1), 2),
        "oversampling": "Full x4(3L)",
        "release": round(l.release_ms.clamp(0.25, 20.0), 3),
        "sidechain-preamp": 0.0,
        "stereo-link": 100.0,
        "threshold": round((l.ceiling_dbtp - CEILING_MARGIN_DB).clamp(-48.0, 0.0), 2),
    })
}

/// The EasyEffects 7 output preset (pretty JSON): equalizer → multiband compressor → stereo
/// tools → limiter.
fn easyeffects(settings: &Settings) -> String {
    let preset = json!({
        "output": {
            "blocklist": [],
            "equalizer#0": easyeffects_equalizer(settings),
            "limiter#0": easyeffects_limiter(settings),
            "multiband_compressor#0": easyeffects_multiband(settings),
            "plugins_order": ["equalizer#0", "multiband_compressor#0", "stereo_tools#0", "limiter#0"],
            "stereo_tools#0": easyeffects_stereo_tools(settings),
        }
    });
    serde_json::to_string_pretty(&preset).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n"
}

/// The note that goes beside the EasyEffects preset (`STEM.easyeffects.txt`): provenance, what
/// the preset cannot express and what was assumed about EasyEffects' plugins.
pub fn easyeffects_note(settings: &Settings) -> String {
    let p = active_parametric(settings);
    let carries = vec![
        "EasyEffects 7 output preset (the .json beside this note; copy it to ~/.config/easyeffects/output/)."
            .to_string(),
        "JSON has no comments, so this note travels beside the preset.".to_string(),
        String::new(),
        "What the preset holds:".to_string(),
        format!(
            "  equalizer#0: the mid EQ's filters ({}), IIR, \"APO (DR)\" filters (RBJ cookbook, as \
             refmaster fits them), input gain = the fit's preamp, {} dB.",
            describe_fit(settings, &p),
            num(p.preamp_db, 2)
        ),
        "  multiband_compressor#0: refmaster's 4 bands and crossovers; RMS sidechain on the middle (mid) signal, \
         one gain for both channels; bands 4-7 disabled."
            .to_string(),
        format!(
            "  stereo_tools#0: side level {} dB, the average (100 Hz-10 kHz) of the side curve minus the mid curve.",
            num(average_width_change_db(settings), 2)
        ),
        format!(
            "  limiter#0: input gain = refmaster's drive ({} dB), threshold = the {} dBTP ceiling minus refmaster's \
             {} dB margin, 4x oversampling.",
            num(settings.limiter.drive_db, 2),
            num(settings.limiter.ceiling_dbtp, 1),
            num(CEILING_MARGIN_DB, 2)
        ),
        String::new(),
        "Assumed about EasyEffects 7 / LSP (not checked against a running EasyEffects):".to_string(),
        "  - LSP's compressor knee is the (negative) gain from the threshold to the knee's start, so refmaster's \
         knee width W dB is written as -W/2."
            .to_string(),
        "  - LSP's RMS detector (10 ms reactivity) and attack/release differ from refmaster's one-pole RMS \
         detector; the time constants are copied as they are."
            .to_string(),
        "  - The limiter's release is at most 20 ms in LSP; refmaster's longer release is clamped.".to_string(),
    ];
    let cannot = [
        "mid/side EQ: the equalizer applies the mid curve to L and R; the side EQ is lost",
        "per-band width: only the average side-level change is kept",
        phase_caveat(settings),
        "the loudness loop: the drive is refmaster's, calibrated on this mix; other audio will land elsewhere",
        "the saturator (EasyEffects has no oversampled soft clipper): its drive is added to the limiter's",
    ];
    commented(&header(settings, "EasyEffects preset note", &carries, &cannot))
}

/// The saturator's drive when it is on (dB), else 0: formats without a saturator add it to the
/// limiter's input gain so the loudness stays about right.
fn sat_drive_db(settings: &Settings) -> f64 {
    if settings.saturation.enabled {
        settings.saturation.drive_db
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str() {
        for f in ExportFormat::ALL {
            assert_eq!(f.name().parse::<ExportFormat>().ok(), Some(f));
        }
        assert!("mp3".parse::<ExportFormat>().is_err());
    }

    #[test]
    fn lists_keep_order_drop_repeats_and_expand_all() {
        assert_eq!(parse_list("ffmpeg, apo,ffmpeg").ok(), Some(vec![ExportFormat::Ffmpeg, ExportFormat::Apo]));
        assert_eq!(parse_list("all").ok(), Some(ExportFormat::ALL.to_vec()));
        assert!(parse_list(" , ").is_err());
        assert!(parse_list("apo,wav").is_err());
    }

    #[test]
    fn numbers_never_print_negative_zero() {
        assert_eq!(num(-0.0001, 2), "0.00");
        assert_eq!(num(-1.25, 1), "-1.2");
        assert_eq!(num(3.0, 0), "3");
    }

    #[test]
    fn graphic_eq_frequencies_follow_autoeq_spacing() {
        let f = graphic_eq_frequencies_hz();
        assert_eq!(f.len(), GRAPHIC_EQ_POINTS);
        assert_eq!(f[0], 20.0);
        assert!(f.windows(2).all(|w| w[1] > w[0]));
        assert!((19_800.0..20_000.0).contains(&f[GRAPHIC_EQ_POINTS - 1]));
    }
}
