//! `--report report.html` and `--plot spectrum.png`: the mastering run as one self-contained HTML
//! page (inline SVG plots drawn here, inline CSS, no scripts, no network, no external fonts) and
//! the spectrum plot alone as a PNG (the same SVG rendered by `resvg` with an embedded DejaVu Sans,
//! so no system library or installed font is needed).
//!
//! The page holds: the mid and side spectra of mix, reference and master (log frequency); the EQ
//! that was applied (matched mid and side curves, and the parametric fits' responses); short-term
//! loudness over time of mix and master; the limiter's gain reduction over time; waveform
//! overviews of mix and master on one scale (a "sausage" master shows); the numbers table
//! of the text report (same rows, same rounding); the settings in words; streaming playback
//! levels; warnings and notes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::analysis::Profile;
use crate::error::{Error, Result};
use crate::master::Mastered;
use crate::platform::Playback;
use crate::render::eq::{mid_curve_db, side_curve_db};
use crate::report::{fmt_db, settings_text, tonal_balance, TONAL_BANDS};
use crate::solve::parametric::response_db;

/// Font stack of every label (the PNG renderer has DejaVu Sans built in).
const FONT: &str = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif";

/// Line colours (Okabe–Ito palette: distinguishable with the common colour-vision deficiencies).
pub mod colours {
    /// The mix.
    pub const MIX: &str = "#0072B2";
    /// The reference.
    pub const REFERENCE: &str = "#E69F00";
    /// The master.
    pub const MASTER: &str = "#009E73";
    /// Mid EQ curve.
    pub const MID: &str = "#0072B2";
    /// Side EQ curve.
    pub const SIDE: &str = "#D55E00";
    /// Limiter gain reduction.
    pub const LIMITER: &str = "#CC3311";
    /// Target lines.
    pub const TARGET: &str = "#555555";
}

/// Frequency ticks of every spectrum-like plot, Hz.
pub const FREQUENCY_TICKS_HZ: [f64; 10] = [20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0, 20_000.0];

/// Everything the report shows.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    /// Profile of the mix.
    pub mix: &'a Profile,
    /// Profile of the reference (the average when several were given).
    pub reference: &'a Profile,
    /// The mastering run.
    pub mastered: &'a Mastered,
    /// Name of the master file, as shown.
    pub master_name: &'a str,
    /// Warnings (`report::warnings`).
    pub warnings: &'a [String],
    /// What the streaming platforms do to the master's level.
    pub playback: &'a [Playback],
    /// Time range of the `--preview` excerpts, (start, length) in seconds, to mark on the plots.
    pub preview: Option<(f64, f64)>,
    /// Waveform overviews of the mix and the master ([`waveform_overview`]).
    pub waveforms: Option<(&'a Waveform, &'a Waveform)>,
}

/// A waveform overview: the smallest and largest sample (over all channels) in each of a fixed
/// number of equal time slices, linear full scale. What a DAW draws zoomed out: a master limited
/// flat shows as a solid "sausage" touching the same level everywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    /// Length of the audio, s.
    pub duration_s: f64,
    /// Lowest sample in each slice.
    pub min: Vec<f32>,
    /// Highest sample in each slice.
    pub max: Vec<f32>,
}

/// The overview of `audio` in `columns` slices (fewer for audio shorter than that many samples).
pub fn waveform_overview(audio: &crate::audio::AudioBuffer, columns: usize) -> Waveform {
    let mut meter = WaveformMeter::new(audio.frames(), audio.sample_rate_hz, columns);
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    meter.push(&planes);
    meter.finish()
}

/// [`waveform_overview`] of a stream whose length is known in advance.
#[derive(Debug, Clone)]
pub struct WaveformMeter {
    frames: usize,
    rate: u32,
    columns: usize,
    column: usize,
    /// Frame at which the current slice ends.
    end: usize,
    pos: usize,
    min: Vec<f32>,
    max: Vec<f32>,
}

impl WaveformMeter {
    /// An overview of `frames` frames at `rate` in `columns` slices.
    pub fn new(frames: usize, rate: u32, columns: usize) -> Self {
        let columns = columns.clamp(1, frames.max(1));
        let mut m =
            Self { frames, rate, columns, column: 0, end: 0, pos: 0, min: vec![0.0; columns], max: vec![0.0; columns] };
        m.end = m.slice_end(0);
        m
    }

    fn slice_end(&self, c: usize) -> usize {
        let a = c * self.frames / self.columns;
        ((c + 1) * self.frames / self.columns).max(a + 1).min(self.frames)
    }

    /// Adds a planar chunk.
    pub fn push(&mut self, chunk: &[&[f32]]) {
        let n = chunk.first().map_or(0, |c| c.len());
        let mut i = 0;
        while i < n && self.column < self.columns {
            let take = (self.end - self.pos).min(n - i);
            let (lo, hi) = (&mut self.min[self.column], &mut self.max[self.column]);
            for ch in chunk {
                (*lo, *hi) = min_max(&ch[i..i + take], (*lo, *hi));
            }
            i += take;
            self.pos += take;
            if self.pos == self.end {
                self.column += 1;
                if self.column < self.columns {
                    self.end = self.slice_end(self.column);
                }
            }
        }
    }

    /// The overview.
    pub fn finish(self) -> Waveform {
        Waveform { duration_s: self.frames as f64 / f64::from(self.rate.max(1)), min: self.min, max: self.max }
    }
}

/// The smallest and largest of `x` and `(lo, hi)`, in eight lanes so that it vectorises (a
/// running minimum and maximum compile to a serial chain, a tenth of the writing stage's time
/// with a report). The same values as the running fold: minimum and maximum are exact, and
/// only the sign of a zero may come out differently, which no overview column shows.
fn min_max(x: &[f32], (lo, hi): (f32, f32)) -> (f32, f32) {
    let (mut l, mut h) = ([lo; 8], [hi; 8]);
    let chunks = x.chunks_exact(8);
    let (mut lo, mut hi) = chunks.remainder().iter().fold((lo, hi), |(l, h), &v| (l.min(v), h.max(v)));
    for c in chunks {
        for k in 0..8 {
            l[k] = l[k].min(c[k]);
            h[k] = h[k].max(c[k]);
        }
    }
    for k in 0..8 {
        (lo, hi) = (lo.min(l[k]), hi.max(h[k]));
    }
    (lo, hi)
}

// ---------------------------------------------------------------------------------------------
// SVG drawing
// ---------------------------------------------------------------------------------------------

/// Escapes text for HTML and SVG (element content and attribute values).
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// One axis: value range and whether it is logarithmic.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Scale {
    fn t(&self, v: f64) -> f64 {
        if self.log {
            (v.max(1e-9).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

/// A line series: label, colour, dash pattern, points.
struct Series<'a> {
    label: &'a str,
    colour: &'a str,
    dash: Option<&'a str>,
    width: f64,
    points: Vec<(f64, f64)>,
}

/// An SVG document being drawn: a size and a body of elements.
struct Svg {
    width: f64,
    height: f64,
    body: String,
    id: String,
}

/// One plot area inside an [`Svg`].
#[derive(Debug, Clone)]
struct Panel {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    xs: Scale,
    ys: Scale,
    clip: String,
}

impl Panel {
    fn px(&self, x: f64) -> f64 {
        self.x0 + self.xs.t(x) * self.w
    }
    fn py(&self, y: f64) -> f64 {
        // Far-off values are pulled in to a finite distance; the clip path hides them.
        let t = self.ys.t(y).clamp(-2.0, 3.0);
        self.y0 + self.h - t * self.h
    }
}

impl Svg {
    fn new(id: &str, width: f64, height: f64) -> Self {
        Self { width, height, body: String::new(), id: id.to_string() }
    }

    /// A panel with its plot area at (x0, y0, w, h), framed, with a clip path.
    fn panel(&mut self, n: usize, (x0, y0, w, h): (f64, f64, f64, f64), xs: Scale, ys: Scale) -> Panel {
        let clip = format!("{}-clip{n}", self.id);
        let _ = write!(
            self.body,
            r##"<clipPath id="{clip}"><rect x="{x0:.1}" y="{y0:.1}" width="{w:.1}" height="{h:.1}"/></clipPath><rect x="{x0:.1}" y="{y0:.1}" width="{w:.1}" height="{h:.1}" fill="#fcfcfc" stroke="none"/>"##
        );
        Panel { x0, y0, w, h, xs, ys, clip }
    }

    fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, extra: &str, s: &str) {
        let _ = write!(
            self.body,
            r##"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" fill="#222"{extra}>{}</text>"##,
            escape(s)
        );
    }

    /// Panel title (top left above the plot area) and legend (right-aligned on the same row, or
    /// on a row of its own below the title when both do not fit side by side).
    fn header(&mut self, p: &Panel, title: &str, items: &[(&str, &str, Option<&str>)]) {
        // Widths estimated from the font size (DejaVu Sans averages ~0.6 em a character, bold
        // ~0.68 em).
        let title_w = 9.6 * title.chars().count() as f64;
        let legend_w: f64 = items.iter().map(|(l, _, _)| legend_item_width(l)).sum();
        let two_rows = title_w + 24.0 + legend_w > p.w;
        let title_y = if two_rows { p.y0 - 32.0 } else { p.y0 - 10.0 };
        self.text(p.x0, title_y, 14.0, "start", r#" font-weight="bold""#, title);
        self.legend(p, items);
    }

    /// Vertical grid lines and labels at `ticks`, minor grid lines at `minor`, and the axis label.
    fn x_axis(&mut self, p: &Panel, ticks: &[(f64, String)], minor: &[f64], label: &str) {
        for &m in minor {
            let x = p.px(m);
            let _ = write!(
                self.body,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eeeeee" stroke-width="1"/>"##,
                p.y0,
                p.y0 + p.h
            );
        }
        for (v, s) in ticks {
            let x = p.px(*v);
            let _ = write!(
                self.body,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#d0d0d0" stroke-width="1"/>"##,
                p.y0,
                p.y0 + p.h + 4.0
            );
            self.text(x, p.y0 + p.h + 17.0, 11.0, "middle", "", s);
        }
        self.text(p.x0 + p.w / 2.0, p.y0 + p.h + 36.0, 12.0, "middle", "", label);
    }

    /// Horizontal grid lines and labels at `ticks`, and the (rotated) axis label.
    fn y_axis(&mut self, p: &Panel, ticks: &[(f64, String)], label: &str) {
        for (v, s) in ticks {
            let y = p.py(*v);
            let _ = write!(
                self.body,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#d0d0d0" stroke-width="1"/>"##,
                p.x0 - 4.0,
                p.x0 + p.w
            );
            self.text(p.x0 - 7.0, y + 4.0, 11.0, "end", "", s);
        }
        let (x, y) = (p.x0 - 48.0, p.y0 + p.h / 2.0);
        self.text(x, y, 12.0, "middle", &format!(r#" transform="rotate(-90 {x:.1} {y:.1})""#), label);
    }

    /// The frame around the plot area (drawn last, over the data).
    fn frame(&mut self, p: &Panel) {
        let _ = write!(
            self.body,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#888888" stroke-width="1"/>"##,
            p.x0, p.y0, p.w, p.h
        );
    }

    /// A line through the finite points of `s`, broken where values are missing.
    fn line(&mut self, p: &Panel, s: &Series<'_>) {
        let mut d = String::new();
        let mut pen_down = false;
        for &(x, y) in &s.points {
            if !x.is_finite() || !y.is_finite() {
                pen_down = false;
                continue;
            }
            let _ = write!(d, "{}{:.1},{:.1}", if pen_down { " L" } else { " M" }, p.px(x), p.py(y));
            pen_down = true;
        }
        if d.is_empty() {
            return;
        }
        let dash = s.dash.map(|v| format!(r#" stroke-dasharray="{v}""#)).unwrap_or_default();
        let _ = write!(
            self.body,
            r#"<path d="{}" fill="none" stroke="{}" stroke-width="{}" stroke-linejoin="round"{dash} clip-path="url(#{})"/>"#,
            d.trim_start(),
            s.colour,
            s.width,
            p.clip
        );
    }

    /// A filled area between `base` and the points (the limiter's gain reduction).
    fn area(&mut self, p: &Panel, points: &[(f64, f64)], base: f64, colour: &str) {
        if points.is_empty() {
            return;
        }
        let mut d = format!("M{:.1},{:.1}", p.px(points[0].0), p.py(base));
        for &(x, y) in points {
            let _ = write!(d, " L{:.1},{:.1}", p.px(x), p.py(if y.is_finite() { y } else { base }));
        }
        let _ = write!(d, " L{:.1},{:.1} Z", p.px(points[points.len() - 1].0), p.py(base));
        let _ = write!(
            self.body,
            r#"<path d="{d}" fill="{colour}" fill-opacity="0.35" stroke="{colour}" stroke-width="1" clip-path="url(#{})"/>"#,
            p.clip
        );
    }

    /// A filled band between two curves sampled at the same x positions (a waveform's min/max).
    fn band(&mut self, p: &Panel, upper: &[(f64, f64)], lower: &[(f64, f64)], colour: &str) {
        if upper.is_empty() || upper.len() != lower.len() {
            return;
        }
        let mut d = String::new();
        for (i, &(x, y)) in upper.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, p.px(x), p.py(y));
        }
        for &(x, y) in lower.iter().rev() {
            let _ = write!(d, " L{:.1},{:.1}", p.px(x), p.py(y));
        }
        d.push_str(" Z");
        let _ = write!(
            self.body,
            r#"<path d="{d}" fill="{colour}" fill-opacity="0.8" stroke="{colour}" stroke-width="0.6" clip-path="url(#{})"/>"#,
            p.clip
        );
    }

    /// A dashed horizontal line at `y` with a label at its right end.
    fn h_marker(&mut self, p: &Panel, y: f64, colour: &str, label: &str) {
        let yy = p.py(y);
        if !(p.y0..=p.y0 + p.h).contains(&yy) {
            return;
        }
        let _ = write!(
            self.body,
            r#"<line x1="{:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{colour}" stroke-width="1.2" stroke-dasharray="6 4"/>"#,
            p.x0,
            p.x0 + p.w
        );
        let halo = r##" stroke="#ffffff" stroke-width="3" paint-order="stroke""##;
        self.text(p.x0 + p.w - 6.0, yy - 5.0, 11.0, "end", &format!(r#" fill="{colour}"{halo}"#), label);
    }

    /// A shaded time range with a label (the preview excerpt).
    fn x_band(&mut self, p: &Panel, from: f64, to: f64, label: &str) {
        let (a, b) = (p.px(from).max(p.x0), p.px(to).min(p.x0 + p.w));
        if b <= a {
            return;
        }
        let _ = write!(
            self.body,
            r##"<rect x="{a:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#fff3c4" stroke="none"/>"##,
            p.y0,
            b - a,
            p.h
        );
        self.text((a + b) / 2.0, p.y0 + 14.0, 11.0, "middle", r##" fill="#8a6d00""##, label);
    }

    /// The legend, right-aligned in the title row above the plot area.
    fn legend(&mut self, p: &Panel, items: &[(&str, &str, Option<&str>)]) {
        let widths: Vec<f64> = items.iter().map(|(l, _, _)| legend_item_width(l)).collect();
        let mut x = p.x0 + p.w - widths.iter().sum::<f64>();
        let y = p.y0 - 14.0;
        for ((label, colour, dash), w) in items.iter().zip(&widths) {
            let dash = dash.map(|v| format!(r#" stroke-dasharray="{v}""#)).unwrap_or_default();
            let _ = write!(
                self.body,
                r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="3"{dash}/>"#,
                x + 22.0
            );
            self.text(x + 26.0, y + 4.0, 12.0, "start", "", label);
            x += w;
        }
    }

    /// The finished SVG. `standalone` adds the XML namespace (needed outside HTML, e.g. for the
    /// PNG renderer); inline in HTML it is left out, so the page holds no URL at all.
    fn finish(self, standalone: bool, description: &str) -> String {
        let ns = if standalone { r#" xmlns="http://www.w3.org/2000/svg""# } else { "" };
        format!(
            r##"<svg{ns} id="{}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}" font-family="{FONT}"><rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>{}</svg>"##,
            self.id,
            escape(description),
            self.body,
            w = self.width,
            h = self.height,
        )
    }
}

/// Width of one legend entry: line sample, gap, label, spacing.
fn legend_item_width(label: &str) -> f64 {
    26.0 + 6.8 * label.chars().count() as f64 + 14.0
}

/// "20", "500", "1k", "20k".
fn hz_tick(hz: f64) -> String {
    if hz >= 1000.0 {
        format!("{}k", hz / 1000.0)
    } else {
        format!("{hz}")
    }
}

fn frequency_ticks() -> (Vec<(f64, String)>, Vec<f64>) {
    let ticks = FREQUENCY_TICKS_HZ.iter().map(|&f| (f, hz_tick(f))).collect();
    let mut minor = Vec::new();
    let mut decade = 10.0;
    while decade < 20_000.0 {
        for k in 2..10 {
            let f = decade * f64::from(k);
            if (20.0..=20_000.0).contains(&f) && !FREQUENCY_TICKS_HZ.iter().any(|t| (t - f).abs() < 1e-6) {
                minor.push(f);
            }
        }
        decade *= 10.0;
    }
    (ticks, minor)
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `n` intervals over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let r = raw / mag;
    let m = if r <= 1.0 {
        1.0
    } else if r <= 2.0 {
        2.0
    } else if r <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Ticks every `step` from `lo` to `hi` (inclusive), labelled by `fmt`.
fn linear_ticks(lo: f64, hi: f64, step: f64, fmt: &dyn Fn(f64) -> String) -> Vec<(f64, String)> {
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-6 {
        out.push((v, fmt(if v.abs() < step * 1e-6 { 0.0 } else { v })));
        v += step;
    }
    out
}

/// "0:30", "2:05" for a time in seconds (plain "12 s" ticks would crowd on long tracks).
fn time_label(t: f64) -> String {
    let s = t.round() as i64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Time ticks (about ten) and the axis label: seconds up to two minutes, m:ss beyond.
fn time_axis(duration: f64) -> (Vec<(f64, String)>, &'static str) {
    let steps = [1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0];
    let step = steps.iter().copied().find(|s| duration / s <= 12.0).unwrap_or(3600.0);
    if duration <= 120.0 {
        (linear_ticks(0.0, duration, step, &|t| format!("{t:.0}")), "time (s)")
    } else {
        (linear_ticks(0.0, duration, step, &time_label), "time (m:ss)")
    }
}

/// Widens `(lo, hi)` to whole steps of the tick spacing for about `n` intervals.
fn snap((lo, hi): (f64, f64), n: f64) -> (f64, f64) {
    let step = nice_step(hi - lo, n);
    ((lo / step).floor() * step, (hi / step).ceil() * step)
}

/// Range of `values` (finite ones at or above `floor`), padded to whole `step`s.
fn padded_range(values: impl Iterator<Item = f64>, floor: f64, step: f64, min_span: f64, max_span: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && *v >= floor) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (floor, floor + min_span);
    }
    let top = (hi / step).ceil() * step + if (hi / step).ceil() * step - hi < step * 0.2 { step } else { 0.0 };
    let mut bottom = (lo / step).floor() * step;
    bottom = bottom.max(top - max_span).min(top - min_span);
    (bottom, top)
}

// ---------------------------------------------------------------------------------------------
// The plots
// ---------------------------------------------------------------------------------------------

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 22.0;

/// The mid and side spectra of mix, reference and master, two panels on a log-frequency axis.
/// `standalone` adds the SVG namespace (for a file or the PNG renderer).
pub fn spectrum_svg(mix: &Profile, reference: &Profile, master: &Profile, standalone: bool) -> String {
    let panel_h = 280.0;
    let mut svg = Svg::new("spectrum", WIDTH, 2.0 * panel_h + 2.0 * 100.0);
    let (fticks, minor) = frequency_ticks();
    let xs = Scale { lo: 20.0, hi: 20_000.0, log: true };
    // Mix and reference are drawn shifted to the master's integrated loudness, so the plot
    // compares tonal shape (what the EQ matched) rather than level; the shift is in the legend.
    let to_master = |p: &Profile| {
        let d = master.loudness.integrated_lufs - p.loudness.integrated_lufs;
        if d.is_finite() {
            d
        } else {
            0.0
        }
    };
    let label = |name: &str, shift: f64| {
        if shift.abs() < 0.05 {
            name.to_string()
        } else {
            format!("{name} ({shift:+.1} dB)")
        }
    };
    let (mix_label, ref_label) = (label("mix", to_master(mix)), label("reference", to_master(reference)));
    let profiles = [
        (mix, mix_label.as_str(), colours::MIX, None, to_master(mix)),
        (reference, ref_label.as_str(), colours::REFERENCE, Some("7 4"), to_master(reference)),
        (master, "master", colours::MASTER, None, 0.0),
    ];
    let in_band = |p: &Profile, side: bool, shift: f64| -> Vec<f64> {
        let vals = if side { &p.spectrum.side_db } else { &p.spectrum.mid_db };
        p.spectrum
            .frequencies_hz
            .iter()
            .zip(vals)
            .filter(|(f, _)| (20.0..=16_000.0).contains(*f))
            .map(|(_, v)| *v + shift)
            .collect()
    };
    for (n, side) in [false, true].into_iter().enumerate() {
        let all: Vec<f64> = profiles.iter().flat_map(|(p, _, _, _, shift)| in_band(p, side, *shift)).collect();
        let (lo, hi) = snap(padded_range(all.into_iter(), -140.0, 10.0, 30.0, 80.0), 7.0);
        let ys = Scale { lo, hi, log: false };
        let top = 50.0 + n as f64 * (panel_h + 100.0);
        let p = svg.panel(n, (LEFT, top, WIDTH - LEFT - RIGHT, panel_h), xs, ys);
        svg.x_axis(&p, &fticks, &minor, "frequency (Hz)");
        let yt = linear_ticks(lo, hi, nice_step(hi - lo, 7.0), &|v| format!("{v:.0}"));
        svg.y_axis(&p, &yt, "level (dB, 1/6-octave bands)");
        for (prof, label, colour, dash, shift) in profiles {
            let vals = if side { &prof.spectrum.side_db } else { &prof.spectrum.mid_db };
            let points = prof
                .spectrum
                .frequencies_hz
                .iter()
                .zip(vals)
                .filter(|(f, _)| **f <= 20_000.0)
                .map(|(&f, &v)| (f, v + shift))
                .collect();
            let width = if label == "master" { 2.2 } else { 1.8 };
            svg.line(&p, &Series { label, colour, dash, width, points });
        }
        svg.frame(&p);
        let items: Vec<(&str, &str, Option<&str>)> = profiles.iter().map(|(_, l, c, d, _)| (*l, *c, *d)).collect();
        svg.header(&p, if side { "Side spectrum (L−R)" } else { "Mid spectrum (L+R)" }, &items);
    }
    svg.finish(standalone, "Mid and side spectra of mix, reference and master, at the master's loudness")
}

/// The EQ that was applied: matched mid and side curves (the side curve includes the width
/// stage) and the responses of the parametric fits.
pub fn eq_svg(mastered: &Mastered) -> String {
    let st = &mastered.settings;
    let rate = f64::from(mastered.profile.sample_rate_hz);
    let freqs: Vec<f64> = (0..=240).map(|k| 20.0 * 1000f64.powf(f64::from(k) / 240.0)).collect();
    let mid: Vec<f64> = freqs.iter().map(|&f| mid_curve_db(&st.eq, f)).collect();
    let side: Vec<f64> = freqs.iter().map(|&f| side_curve_db(&st.eq, &st.width, f)).collect();
    // The parametric fits stop below Nyquist; above it there is nothing to draw.
    let below_nyquist: Vec<f64> = freqs.iter().copied().filter(|&f| f < 0.499 * rate).collect();
    let (pm, ps) = if st.eq.enabled {
        (
            response_db(&st.eq.parametric_mid.bands, &below_nyquist, rate),
            response_db(&st.eq.parametric_side.bands, &below_nyquist, rate),
        )
    } else {
        (vec![0.0; below_nyquist.len()], vec![0.0; below_nyquist.len()])
    };
    let peak =
        mid.iter().chain(&side).chain(&pm).chain(&ps).filter(|v| v.is_finite()).fold(0f64, |a, &b| a.max(b.abs()));
    let step = if peak <= 6.0 {
        1.0
    } else if peak <= 12.0 {
        2.0
    } else {
        3.0
    };
    let m = ((peak + 0.5) / step).ceil().max(3.0) * step;
    let mut svg = Svg::new("eq", WIDTH, 360.0);
    let ys = Scale { lo: -m, hi: m, log: false };
    let p = svg.panel(0, (LEFT, 50.0, WIDTH - LEFT - RIGHT, 250.0), Scale { lo: 20.0, hi: 20_000.0, log: true }, ys);
    let (fticks, minor) = frequency_ticks();
    svg.x_axis(&p, &fticks, &minor, "frequency (Hz)");
    let yt = linear_ticks(-m, m, nice_step(2.0 * m, 8.0), &|v| format!("{v:+.0}").replace("+0", "0"));
    svg.y_axis(&p, &yt, "gain (dB)");
    let zip = |xs: &[f64], ys: &[f64]| -> Vec<(f64, f64)> { xs.iter().copied().zip(ys.iter().copied()).collect() };
    if st.eq.render == crate::settings::EqRender::Filters {
        // The filters render: their response is the mid EQ; the side shows its filters and the
        // side with the width stage on top. Ranges a mix note calls out are shaded.
        for n in st.mix_notes.iter().filter(|n| n.kind == "tone") {
            svg.x_band(&p, n.low_hz.max(20.0), n.high_hz.min(20_000.0), &format!("mix note {:+.0} dB", n.gap_db));
        }
        let side_eq: Vec<f64> = freqs.iter().map(|&f| crate::render::eq::side_eq_db(&st.eq, f)).collect();
        let series = [
            Series {
                label: "mid EQ (filters)",
                colour: colours::MID,
                dash: None,
                width: 2.2,
                points: zip(&freqs, &mid),
            },
            Series {
                label: "side EQ (filters)",
                colour: colours::SIDE,
                dash: Some("3 4"),
                width: 1.6,
                points: zip(&freqs, &side_eq),
            },
            Series {
                label: "side with width",
                colour: colours::SIDE,
                dash: None,
                width: 2.2,
                points: zip(&freqs, &side),
            },
        ];
        for s in &series {
            svg.line(&p, s);
        }
        svg.frame(&p);
        let items: Vec<(&str, &str, Option<&str>)> = series.iter().map(|s| (s.label, s.colour, s.dash)).collect();
        let title = if st.eq.enabled { "Broad EQ: the exported filters, as rendered" } else { "EQ (off)" };
        svg.header(&p, title, &items);
        return svg.finish(false, "EQ applied: the mid and side filters and the side with the width stage");
    }
    let series = [
        Series { label: "mid (matched)", colour: colours::MID, dash: None, width: 2.2, points: zip(&freqs, &mid) },
        Series {
            label: "side (matched, with width)",
            colour: colours::SIDE,
            dash: None,
            width: 2.2,
            points: zip(&freqs, &side),
        },
        Series {
            label: "mid parametric fit",
            colour: colours::MID,
            dash: Some("3 4"),
            width: 1.6,
            points: zip(&below_nyquist, &pm),
        },
        Series {
            label: "side parametric fit",
            colour: colours::SIDE,
            dash: Some("3 4"),
            width: 1.6,
            points: zip(&below_nyquist, &ps),
        },
    ];
    for s in &series {
        svg.line(&p, s);
    }
    svg.frame(&p);
    let items: Vec<(&str, &str, Option<&str>)> = series.iter().map(|s| (s.label, s.colour, s.dash)).collect();
    svg.header(&p, if st.eq.enabled { "Matched EQ curves and parametric fits" } else { "EQ (off)" }, &items);
    svg.finish(false, "EQ curves applied: matched mid and side, and the parametric fits")
}

/// Time (s) of short-term value `k`: the centre of its 3 s window (one value a second).
fn short_term_time(k: usize, duration: f64) -> f64 {
    (k as f64 + 1.5).min(duration.max(0.0))
}

/// Short-term loudness over time of mix and master, with the target and the preview range.
pub fn loudness_svg(mix: &Profile, master: &Profile, target_lufs: f64, preview: Option<(f64, f64)>) -> String {
    let duration = mix.duration_s.max(master.duration_s).max(1.0);
    let series_of = |p: &Profile| -> Vec<(f64, f64)> {
        p.loudness
            .short_term_series_lufs
            .iter()
            .enumerate()
            .map(|(k, &v)| (short_term_time(k, p.duration_s), if v > -69.9 { v } else { f64::NAN }))
            .collect()
    };
    let (m, o) = (series_of(mix), series_of(master));
    let values = m.iter().chain(&o).map(|p| p.1).chain(std::iter::once(target_lufs));
    let (lo, hi) = snap(padded_range(values, -69.9, 5.0, 15.0, 45.0), 7.0);
    let mut svg = Svg::new("loudness", WIDTH, 340.0);
    let p = svg.panel(
        0,
        (LEFT, 50.0, WIDTH - LEFT - RIGHT, 230.0),
        Scale { lo: 0.0, hi: duration, log: false },
        Scale { lo, hi, log: false },
    );
    if let Some((start, len)) = preview {
        svg.x_band(&p, start, start + len, "preview excerpt");
    }
    let (tt, tl) = time_axis(duration);
    svg.x_axis(&p, &tt, &[], tl);
    let yt = linear_ticks(lo, hi, nice_step(hi - lo, 7.0), &|v| format!("{v:.0}"));
    svg.y_axis(&p, &yt, "short-term loudness (LUFS)");
    if target_lufs.is_finite() {
        svg.h_marker(&p, target_lufs, colours::TARGET, &format!("target {target_lufs:.1} LUFS"));
    }
    svg.line(&p, &Series { label: "mix", colour: colours::MIX, dash: None, width: 1.8, points: m });
    svg.line(&p, &Series { label: "master", colour: colours::MASTER, dash: None, width: 2.2, points: o });
    svg.frame(&p);
    svg.header(
        &p,
        "Short-term loudness (3 s) over time",
        &[("mix", colours::MIX, None), ("master", colours::MASTER, None), ("target", colours::TARGET, Some("6 4"))],
    );
    svg.finish(false, "Short-term loudness of mix and master over time")
}

/// Waveform overviews of mix and master, one above the other on the same amplitude scale, with
/// the ceiling marked on the master.
pub fn waveform_svg(mix: &Waveform, master: &Waveform, ceiling_dbtp: f64) -> String {
    let duration = mix.duration_s.max(master.duration_s).max(1e-3);
    let mut svg = Svg::new("waveform", WIDTH, 470.0);
    let (tt, tl) = time_axis(duration);
    let ceiling = 10f64.powf(ceiling_dbtp / 20.0);
    let ticks = [
        (-1.0, "-1".to_string()),
        (-0.5, "-0.5".to_string()),
        (0.0, "0".to_string()),
        (0.5, "0.5".to_string()),
        (1.0, "1".to_string()),
    ];
    for (n, (w, colour, name, y0)) in
        [(mix, colours::MIX, "mix", 50.0), (master, colours::MASTER, "master", 260.0)].into_iter().enumerate()
    {
        let p = svg.panel(
            n,
            (LEFT, y0, WIDTH - LEFT - RIGHT, 150.0),
            Scale { lo: 0.0, hi: duration, log: false },
            Scale { lo: -1.05, hi: 1.05, log: false },
        );
        svg.x_axis(&p, &tt, &[], if n == 1 { tl } else { "" });
        svg.y_axis(&p, &ticks, "amplitude (full scale 1)");
        let cols = w.max.len().max(1) as f64;
        let t = |c: usize| (c as f64 + 0.5) / cols * w.duration_s;
        let upper: Vec<(f64, f64)> = w.max.iter().enumerate().map(|(c, &v)| (t(c), f64::from(v))).collect();
        let lower: Vec<(f64, f64)> = w.min.iter().enumerate().map(|(c, &v)| (t(c), f64::from(v))).collect();
        svg.band(&p, &upper, &lower, colour);
        if n == 1 {
            svg.h_marker(&p, ceiling, colours::TARGET, &format!("ceiling {ceiling_dbtp:.1} dBTP"));
            svg.h_marker(&p, -ceiling, colours::TARGET, "");
        }
        svg.frame(&p);
        svg.header(&p, &format!("Waveform: {name}"), &[(name, colour, None)]);
    }
    svg.finish(false, "Waveform overview of mix and master on the same scale")
}

/// The limiter's gain reduction over time (largest in each 100 ms), hanging down from 0 dB.
pub fn limiter_svg(mastered: &Mastered) -> String {
    let series = &mastered.limiter.gain_reduction_series_db;
    let duration = mastered.profile.duration_s.max(1.0);
    let points: Vec<(f64, f64)> =
        series.iter().enumerate().map(|(j, &g)| ((j as f64 + 0.5) * 0.1, -f64::from(g.max(0.0)))).collect();
    let max = mastered.limiter.max_gain_reduction_db.max(0.0);
    let depth = if max <= 1.0 { 1.0 } else { (max / nice_step(max, 4.0)).ceil() * nice_step(max, 4.0) };
    let mut svg = Svg::new("limiter", WIDTH, 260.0);
    let p = svg.panel(
        0,
        (LEFT, 50.0, WIDTH - LEFT - RIGHT, 150.0),
        Scale { lo: 0.0, hi: duration, log: false },
        Scale { lo: -depth, hi: 0.0, log: false },
    );
    let (tt, tl) = time_axis(duration);
    svg.x_axis(&p, &tt, &[], tl);
    let yt = linear_ticks(-depth, 0.0, nice_step(depth, 4.0), &|v| format!("{v:.1}"));
    svg.y_axis(&p, &yt, "gain (dB)");
    svg.area(&p, &points, 0.0, colours::LIMITER);
    svg.frame(&p);
    let title = if mastered.settings.limiter.enabled {
        format!("Limiter gain reduction (largest {max:.1} dB)")
    } else {
        "Limiter gain reduction (limiter off)".to_string()
    };
    svg.header(&p, &title, &[("gain reduction per 100 ms", colours::LIMITER, None)]);
    svg.finish(false, "Limiter gain reduction over time")
}

// ---------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------

/// Rows of the numbers table: (key, label, value of a profile). Labels and rounding are the
/// text report's (`report::comparison_text`), so the two always agree.
#[allow(clippy::type_complexity)]
pub fn table_rows() -> Vec<(String, String, Box<dyn Fn(&Profile) -> String>)> {
    let mut rows: Vec<(String, String, Box<dyn Fn(&Profile) -> String>)> = vec![
        (
            "integrated_lufs".into(),
            "integrated (LUFS)".into(),
            Box::new(|p: &Profile| fmt_db(p.loudness.integrated_lufs)),
        ),
        ("true_peak_dbtp".into(), "true peak (dBTP)".into(), Box::new(|p: &Profile| fmt_db(p.loudness.true_peak_dbtp))),
        (
            "range_lu".into(),
            "loudness range (LU)".into(),
            Box::new(|p: &Profile| format!("{:.1}", p.loudness.range_lu)),
        ),
        ("plr_db".into(), "PLR (dB)".into(), Box::new(|p: &Profile| format!("{:.1}", p.loudness.plr_db))),
        ("width_db".into(), "side/mid (dB)".into(), Box::new(|p: &Profile| fmt_db(p.stereo.width_db))),
    ];
    for (i, (name, _, _)) in TONAL_BANDS.iter().enumerate() {
        rows.push((
            format!("tone_{i}"),
            format!("tone {name}"),
            Box::new(move |p: &Profile| format!("{:+.1}", tonal_balance(p)[i])),
        ));
    }
    rows
}

const CSS: &str = "
body{font-family:'DejaVu Sans',Verdana,Helvetica,Arial,sans-serif;color:#222;background:#fff;margin:24px auto;max-width:1040px;padding:0 16px;line-height:1.4}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:14px;margin:2px 0}
svg{display:block;width:100%;max-width:1000px;height:auto;margin:8px 0}
table{border-collapse:collapse;font-size:14px}th,td{padding:3px 12px;border-bottom:1px solid #eee}
th{text-align:left;font-weight:normal}td{text-align:right;font-variant-numeric:tabular-nums}
thead th{font-weight:bold;text-align:right;border-bottom:2px solid #ccc}thead th:first-child{text-align:left}
pre{background:#f6f6f6;padding:10px;font-size:13px;white-space:pre-wrap;overflow-wrap:anywhere}
ul{padding-left:22px}li{margin:3px 0}.warning{color:#9a3a00}
";

/// The whole report page.
pub fn report_html(r: &ReportInput<'_>) -> String {
    let m = r.mastered;
    let st = &m.settings;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>refmaster report: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        escape(r.master_name)
    );
    let _ = writeln!(h, "<h1>refmaster report</h1>");
    let _ = writeln!(h, "<p class=\"meta\">mix: {}</p>", escape(&r.mix.source));
    let _ = writeln!(h, "<p class=\"meta\">reference: {}</p>", escape(&r.reference.source));
    let _ = writeln!(
        h,
        "<p class=\"meta\">master: {} ({} Hz, {} ch, {:.1} s); target {} LUFS, ceiling {:.1} dBTP; refmaster {}</p>",
        escape(r.master_name),
        m.profile.sample_rate_hz,
        m.profile.channels,
        m.profile.duration_s,
        fmt_db(st.limiter.target_lufs),
        st.limiter.ceiling_dbtp,
        env!("CARGO_PKG_VERSION")
    );

    let _ = writeln!(h, "<h2>Spectrum</h2>");
    let _ = writeln!(
        h,
        "<p class=\"meta\">Long-term mid and side spectra; mix and reference shifted to the master's integrated loudness (shift in the legend) so the shapes compare.</p>"
    );
    h.push_str(&spectrum_svg(r.mix, r.reference, &m.profile, false));
    let _ = writeln!(h, "\n<h2>EQ applied</h2>");
    h.push_str(&eq_svg(m));
    h.push_str(&mix_notes_html(st));
    let _ = writeln!(h, "\n<h2>Loudness and limiting over time</h2>");
    h.push_str(&loudness_svg(r.mix, &m.profile, st.limiter.target_lufs, r.preview));
    h.push_str(&limiter_svg(m));
    if let Some((mix_w, master_w)) = r.waveforms {
        let _ = writeln!(h, "\n<h2>Waveform</h2>");
        let _ = writeln!(
            h,
            "<p class=\"meta\">Mix and master on the same scale. A master pressed flat against the ceiling everywhere (a \"sausage\") has lost its dynamics; PLR {:.1} dB here.</p>",
            m.profile.loudness.plr_db
        );
        h.push_str(&waveform_svg(mix_w, master_w, st.limiter.ceiling_dbtp));
    }

    let _ = writeln!(h, "\n<h2>Numbers</h2>");
    let _ = writeln!(h, "<table id=\"numbers\">");
    let _ = writeln!(h, "<thead><tr><th></th><th>mix</th><th>reference</th><th>master</th></tr></thead><tbody>");
    for (key, label, f) in table_rows() {
        let _ = writeln!(
            h,
            "<tr data-row=\"{key}\"><th>{}</th><td data-col=\"mix\">{}</td><td data-col=\"reference\">{}</td><td data-col=\"master\">{}</td></tr>",
            escape(&label),
            escape(&f(r.mix)),
            escape(&f(r.reference)),
            escape(&f(&m.profile))
        );
    }
    let _ = writeln!(h, "</tbody></table>");

    let _ = writeln!(h, "<h2>Settings</h2>");
    let _ = writeln!(h, "<pre>{}</pre>", escape(settings_text(st).trim_end()));

    if !r.playback.is_empty() {
        let _ = writeln!(h, "<h2>Streaming playback</h2>");
        let _ = writeln!(
            h,
            "<p class=\"meta\">What each service's loudness normalisation does to this master's level.</p><ul>"
        );
        for p in r.playback {
            let _ = writeln!(h, "<li>{}</li>", escape(&p.to_string()));
        }
        let _ = writeln!(h, "</ul>");
    }

    let _ = writeln!(h, "<h2>Warnings and notes</h2>");
    if r.warnings.is_empty() && m.notes.is_empty() {
        let _ = writeln!(h, "<p>none</p>");
    } else {
        let _ = writeln!(h, "<ul>");
        for w in r.warnings {
            let _ = writeln!(h, "<li class=\"warning\">warning: {}</li>", escape(w));
        }
        for n in &m.notes {
            let _ = writeln!(h, "<li>note: {}</li>", escape(n));
        }
        let _ = writeln!(h, "</ul>");
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// The mix notes (gaps mastering leaves to the mix) as a list, or a line saying there are none.
pub fn mix_notes_html(st: &crate::settings::Settings) -> String {
    let mut h = String::from("\n<h2>Mix notes</h2>\n");
    if st.mix_notes.is_empty() {
        h.push_str("<p id=\"mix-notes\">none: every gap to the reference is within what mastering should move</p>\n");
        return h;
    }
    h.push_str("<p class=\"meta\">Gaps to the reference bigger than mastering should close: fix these in the mix.</p>\n<ul id=\"mix-notes\">\n");
    for n in &st.mix_notes {
        let _ = writeln!(h, "<li class=\"mix-note\">mix note: {}</li>", escape(&n.text));
    }
    h.push_str("</ul>\n");
    h
}

/// Writes the report page to `path` (atomically: temporary file, then rename).
pub fn write_report(path: &Path, r: &ReportInput<'_>) -> Result<()> {
    crate::encode::write_text_atomically(path, &report_html(r))
}

/// The spectrum plot as PNG bytes (the SVG of [`spectrum_svg`] rendered at 1.5× scale).
pub fn spectrum_png(mix: &Profile, reference: &Profile, master: &Profile) -> std::result::Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let svg = spectrum_svg(mix, reference, master, true);
    let mut opt = usvg::Options { font_family: "DejaVu Sans".into(), ..usvg::Options::default() };
    {
        let db = opt.fontdb_mut();
        db.load_font_data(dejavu::sans::regular().to_vec());
        db.load_font_data(dejavu::sans::bold().to_vec());
        db.set_sans_serif_family("DejaVu Sans");
    }
    let tree = usvg::Tree::from_str(&svg, &opt).map_err(|e| format!("cannot draw the spectrum plot: {e}"))?;
    let scale = 1.5f32;
    let size = tree.size();
    let (w, h) = ((size.width() * scale).ceil() as u32, (size.height() * scale).ceil() as u32);
    let mut pixmap = tiny_skia::Pixmap::new(w, h).ok_or("cannot allocate the plot image")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("cannot encode the plot image: {e}"))
}

/// Writes the spectrum plot as a PNG to `path` (atomically).
pub fn write_spectrum_png(path: &Path, mix: &Profile, reference: &Profile, master: &Profile) -> Result<()> {
    let png = spectrum_png(mix, reference, master).map_err(|e| Error::output(path, e))?;
    crate::encode::write_atomically(path, |w| w.write_all(&png))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_and_ticks() {
        assert_eq!(nice_step(80.0, 7.0), 20.0);
        assert_eq!(nice_step(24.0, 8.0), 5.0);
        let t = linear_ticks(-6.0, 6.0, 2.0, &|v| format!("{v:.0}"));
        assert_eq!(t.len(), 7);
        assert_eq!(time_label(125.0), "2:05");
        assert_eq!(hz_tick(20_000.0), "20k");
        assert_eq!(hz_tick(50.0), "50");
    }

    /// The overview's columns are each the smallest and largest sample of their slice of frames
    /// (over all channels, and 0), however the stream is cut into chunks.
    #[test]
    fn the_waveform_overview_holds_each_slices_extremes_in_any_chunking() {
        let frames = 10_007;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let audio: Vec<Vec<f32>> = (0..2).map(|_| (0..frames).map(|_| 0.3 + noise()).collect()).collect();
        let columns = 37;
        let (mut want_lo, mut want_hi) = (vec![0f32; columns], vec![0f32; columns]);
        for c in 0..columns {
            let (a, b) = (c * frames / columns, (c + 1) * frames / columns);
            for ch in &audio {
                for &v in &ch[a..b] {
                    want_lo[c] = want_lo[c].min(v);
                    want_hi[c] = want_hi[c].max(v);
                }
            }
        }
        for chunk in [1, 7, 64, 1000, frames] {
            let mut m = WaveformMeter::new(frames, 1, columns);
            for s in (0..frames).step_by(chunk) {
                m.push(&[&audio[0][s..(s + chunk).min(frames)], &audio[1][s..(s + chunk).min(frames)]]);
            }
            let w = m.finish();
            assert_eq!((&w.min, &w.max), (&want_lo, &want_hi), "chunks of {chunk}");
        }
    }

    #[test]
    fn escaping_keeps_markup_out() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}

#[cfg(test)]
mod waveform_tests {
    use super::*;
    use crate::audio::AudioBuffer;

    #[test]
    fn the_overview_holds_each_slices_extremes_over_both_channels() {
        // Two seconds in four slices: a +0.5 spike in slice 1 (left), a -0.8 spike in slice 3
        // (right), silence elsewhere.
        let mut l = vec![0f32; 8000];
        let mut r = vec![0f32; 8000];
        l[2500] = 0.5;
        r[7000] = -0.8;
        let w = waveform_overview(&AudioBuffer { sample_rate_hz: 4000, channels: vec![l, r] }, 4);
        assert_eq!(w.max, vec![0.0, 0.5, 0.0, 0.0]);
        assert_eq!(w.min, vec![0.0, 0.0, 0.0, -0.8]);
        assert!((w.duration_s - 2.0).abs() < 1e-9);
        let svg = waveform_svg(&w, &w, -1.0);
        assert!(svg.contains(colours::MIX) && svg.contains(colours::MASTER) && svg.contains("ceiling -1.0 dBTP"));
    }
}
