//! Telling the user what happened: readable tables of profiles, the side-by-side comparison of
//! mix, reference and master, the settings in words, and warnings.

use std::fmt::Write;

use crate::analysis::Profile;
use crate::master::Mastered;
use crate::settings::Settings;
use crate::solve::mean_between;

/// Formats a frequency compactly: "120 Hz", "1.2 kHz", "16 kHz".
pub fn fmt_hz(hz: f64) -> String {
    if hz >= 10_000.0 {
        format!("{:.0} kHz", hz / 1000.0)
    } else if hz >= 1000.0 {
        format!("{:.1} kHz", hz / 1000.0)
    } else {
        format!("{hz:.0} Hz")
    }
}

/// A dB/LUFS value, "-inf" for silence.
pub fn fmt_db(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-inf".into()
    }
}

/// Tonal-balance bands of the report: (name, low Hz, high Hz).
pub const TONAL_BANDS: [(&str, f64, f64); 6] = [
    ("sub 20-60", 20.0, 60.0),
    ("bass 60-250", 60.0, 250.0),
    ("low-mid 250-1k", 250.0, 1000.0),
    ("mid 1-4k", 1000.0, 4000.0),
    ("presence 4-10k", 4000.0, 10_000.0),
    ("air 10-16k", 10_000.0, 16_000.0),
];

/// Mid level per tonal band relative to the profile's mean over 40 Hz–16 kHz (shape, not level), dB.
pub fn tonal_balance(p: &Profile) -> Vec<f64> {
    let grid = &p.spectrum.frequencies_hz;
    let mean = mean_between(grid, &p.spectrum.mid_db, 40.0, 16_000.0);
    TONAL_BANDS.iter().map(|(_, lo, hi)| mean_between(grid, &p.spectrum.mid_db, *lo, *hi) - mean).collect()
}

/// A readable summary of one profile.
pub fn profile_text(p: &Profile) -> String {
    let l = &p.loudness;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}  ({} Hz, {} ch, {:.1} s{})",
        p.source,
        p.sample_rate_hz,
        p.channels,
        p.duration_s,
        if p.lossy { ", lossy" } else { "" }
    );
    let _ = writeln!(
        s,
        "  loudness  {} LUFS integrated, LRA {:.1} LU, max momentary {} / short-term {} LUFS",
        fmt_db(l.integrated_lufs),
        l.range_lu,
        fmt_db(l.max_momentary_lufs),
        fmt_db(l.max_short_term_lufs)
    );
    let _ = writeln!(
        s,
        "  peaks     {} dBTP true peak, {} dBFS sample peak, PLR {:.1} dB",
        fmt_db(l.true_peak_dbtp),
        fmt_db(l.sample_peak_dbfs),
        l.plr_db
    );
    let [p10, p50, p90, p95] = l.short_term_percentiles_lufs;
    let _ = writeln!(s, "  short-term percentiles 10/50/90/95: {p10:.1} / {p50:.1} / {p90:.1} / {p95:.1} LUFS");
    let _ = writeln!(s, "  content up to {}", fmt_hz(p.spectrum.content_cutoff_hz));
    let tb = tonal_balance(p);
    let _ = writeln!(
        s,
        "  tonal balance (dB re mean): {}",
        TONAL_BANDS.iter().zip(&tb).map(|((n, _, _), v)| format!("{n} {v:+.1}")).collect::<Vec<_>>().join(", ")
    );
    for d in &p.dynamics {
        let _ = writeln!(
            s,
            "  band {:>7}-{:<7} rms {:6.1} dBFS  crest {:5.1} dB  spread {:5.1} dB",
            fmt_hz(d.low_hz),
            fmt_hz(d.high_hz),
            d.rms_dbfs,
            d.crest_db,
            d.spread_db
        );
    }
    let st = &p.stereo;
    let _ = writeln!(
        s,
        "  stereo    correlation {:.2}, balance {:+.1} dB, side/mid {} dB ({})",
        st.correlation,
        st.balance_db,
        fmt_db(st.width_db),
        st.bands
            .iter()
            .map(|b| format!("{}-{} {}", fmt_hz(b.low_hz), fmt_hz(b.high_hz), fmt_db(b.side_to_mid_db)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}

/// Mix, reference and master side by side.
pub fn comparison_text(mix: &Profile, reference: &Profile, master: &Profile) -> String {
    let cols = [mix, reference, master];
    let mut s = String::new();
    let _ = writeln!(s, "{:<26}{:>10}{:>11}{:>10}", "", "mix", "reference", "master");
    let mut row = |name: &str, f: &dyn Fn(&Profile) -> String| {
        let _ = writeln!(s, "{name:<26}{:>10}{:>11}{:>10}", f(cols[0]), f(cols[1]), f(cols[2]));
    };
    row("integrated (LUFS)", &|p| fmt_db(p.loudness.integrated_lufs));
    row("true peak (dBTP)", &|p| fmt_db(p.loudness.true_peak_dbtp));
    row("loudness range (LU)", &|p| format!("{:.1}", p.loudness.range_lu));
    row("PLR (dB)", &|p| format!("{:.1}", p.loudness.plr_db));
    row("side/mid (dB)", &|p| fmt_db(p.stereo.width_db));
    for (i, (name, _, _)) in TONAL_BANDS.iter().enumerate() {
        row(&format!("tone {name}"), &|p| format!("{:+.1}", tonal_balance(p)[i]));
    }
    s
}

/// The settings in words, the way an engineer would read them out.
pub fn settings_text(st: &Settings) -> String {
    let mut s = String::new();
    if st.eq.enabled {
        // The fine curve's parametric fit only approximates what renders: say by how much.
        let describe_fit = |p: &crate::solve::parametric::ParametricEq| {
            if p.bands.is_empty() {
                describe_filters(p)
            } else {
                format!("{} (parametric fit error {:.2} dB rms)", describe_filters(p), p.fit_rms_error_db)
            }
        };
        match st.eq.render {
            crate::settings::EqRender::Filters => {
                let _ = writeln!(
                    s,
                    "EQ: broad tonal match (shelves and bells, rendered linear-phase; these are the exported filters)"
                );
                let _ = writeln!(s, "EQ mid:  {}", describe_filters(&st.eq.parametric_mid));
                let _ = writeln!(s, "EQ side: {}", describe_filters(&st.eq.parametric_side));
            }
            crate::settings::EqRender::Curve => {
                let _ = writeln!(
                    s,
                    "EQ: fine match of the same music (at most 8 filters fitted to the matched curve; their response renders and is what the exports hold)"
                );
                let _ = writeln!(
                    s,
                    "EQ mid:  {} (follows the matched curve to {:.2} dB rms)",
                    describe_filters(&st.eq.parametric_mid),
                    st.eq.parametric_mid.fit_rms_error_db
                );
                let _ = writeln!(s, "EQ side: {}", describe_fit(&st.eq.parametric_side));
            }
        }
    } else {
        let _ = writeln!(s, "EQ: off");
    }
    if st.dynamics.enabled && st.dynamics.linked {
        let b = &st.dynamics.bands[0];
        let _ = writeln!(
            s,
            "compressor (broadband, one detector for all bands): threshold {:.1} dBFS, ratio {:.2}:1, knee {:.0} dB, attack {:.0} ms, release {:.0} ms, make-up {:+.1} dB",
            b.threshold_dbfs, b.ratio, b.knee_db, b.attack_ms, b.release_ms, b.makeup_db
        );
    } else if st.dynamics.enabled {
        let edges = [
            0.0,
            st.dynamics.crossovers_hz[0],
            st.dynamics.crossovers_hz[1],
            st.dynamics.crossovers_hz[2],
            f64::INFINITY,
        ];
        for (i, b) in st.dynamics.bands.iter().enumerate() {
            let range = if i == 3 {
                format!("above {}", fmt_hz(edges[3]))
            } else if i == 0 {
                format!("below {}", fmt_hz(edges[1]))
            } else {
                format!("{}-{}", fmt_hz(edges[i]), fmt_hz(edges[i + 1]))
            };
            if b.ratio > 1.0 {
                let _ = writeln!(
                    s,
                    "compressor band {} ({range}): threshold {:.1} dBFS, ratio {:.1}:1, knee {:.0} dB, attack {:.0} ms, release {:.0} ms, make-up {:+.1} dB",
                    i + 1,
                    b.threshold_dbfs,
                    b.ratio,
                    b.knee_db,
                    b.attack_ms,
                    b.release_ms,
                    b.makeup_db
                );
            } else {
                let _ = writeln!(s, "compressor band {} ({range}): off", i + 1);
            }
        }
    } else {
        let _ = writeln!(s, "compression: off");
    }
    if st.width.enabled {
        let _ = writeln!(s, "width (side gain, mean per band): {}", width_summary(&st.width).join(", "));
    } else {
        let _ = writeln!(s, "width: unchanged");
    }
    if st.saturation.enabled {
        let _ = writeln!(
            s,
            "saturation: drive {:+.1} dB into a soft clipper at the ceiling (knee {:.0} dB under it, 8x oversampled), mix {:.0} %",
            st.saturation.drive_db,
            st.saturation.knee_db,
            100.0 * st.saturation.mix
        );
    } else {
        let _ = writeln!(s, "saturation: off");
    }
    let _ = writeln!(
        s,
        "limiter: drive {:+.1} dB, ceiling {:.1} dBTP, look-ahead {:.1} ms, release {:.0} ms{}{}; target {:.1} LUFS",
        st.limiter.drive_db,
        st.limiter.ceiling_dbtp,
        st.limiter.lookahead_ms,
        st.limiter.release_ms,
        if st.limiter.output_trim_db < 0.0 {
            format!(", output trim {:.2} dB", st.limiter.output_trim_db)
        } else {
            String::new()
        },
        if st.limiter.enabled { "" } else { " (limiter OFF: gain only)" },
        st.limiter.target_lufs
    );
    for n in &st.mix_notes {
        let _ = writeln!(s, "mix note: {}", n.text);
    }
    s
}

/// A parametric EQ's filters in words, one list ("flat" without any).
fn describe_filters(p: &crate::solve::parametric::ParametricEq) -> String {
    if p.bands.is_empty() {
        return "flat".into();
    }
    let bands: Vec<String> = p
        .bands
        .iter()
        .map(|b| {
            let kind = match b.kind {
                crate::dsp::biquad::FilterKind::LowShelf => "low shelf",
                crate::dsp::biquad::FilterKind::HighShelf => "high shelf",
                crate::dsp::biquad::FilterKind::Peaking => "bell",
            };
            format!("{kind} {} {:+.1} dB Q {:.2}", fmt_hz(b.freq_hz), b.gain_db, b.q)
        })
        .collect();
    bands.join(", ")
}

/// The width stage in the analysis's five stereo bands ([`crate::analysis::WIDTH_BAND_EDGES_HZ`]):
/// each band's mean side gain over the log-frequency points inside it, "20 Hz-120 Hz -0.5 dB".
/// The full per-band detail stays in the settings JSON and the report.
pub fn width_summary(width: &crate::settings::WidthSettings) -> Vec<String> {
    let edges = crate::analysis::WIDTH_BAND_EDGES_HZ;
    let mut lo = 20.0;
    let mut out = Vec::new();
    for &hi in &edges[1..] {
        let n = 24;
        let mean = (0..n)
            .map(|k| crate::render::eq::width_at(width, lo * (hi / lo).powf((k as f64 + 0.5) / n as f64)))
            .sum::<f64>()
            / n as f64;
        out.push(format!("{}-{} {:+.1} dB", fmt_hz(lo), fmt_hz(hi), mean));
        lo = hi;
    }
    out
}

/// Warnings about the inputs and the result.
pub fn warnings(mix: &Profile, reference: &Profile, mastered: &Mastered) -> Vec<String> {
    let mut w = Vec::new();
    if mix.loudness.sample_peak_dbfs > -0.01 {
        w.push("the mix reaches 0 dBFS: it may be clipped; leave headroom when you bounce it".into());
    }
    if reference.lossy {
        w.push(format!(
            "the reference is lossy (content stops near {}); the EQ does not follow it above that",
            fmt_hz(reference.spectrum.content_cutoff_hz)
        ));
    }
    if reference.channels < 2 || reference.stereo.width_db < -60.0 {
        w.push("the reference is mono: width is matched toward mono".into());
    }
    let ceiling = mastered.settings.limiter.ceiling_dbtp;
    if reference.loudness.integrated_lufs.is_finite() && reference.loudness.true_peak_dbtp > ceiling + 0.5 {
        w.push(format!(
            "the reference peaks at {:.1} dBTP, above your {ceiling:.1} dBTP ceiling: matching its loudness needs more limiting than it used",
            reference.loudness.true_peak_dbtp
        ));
    }
    let got = mastered.profile.loudness.integrated_lufs;
    let want = mastered.settings.limiter.target_lufs;
    if (got - want).abs() > 0.3 {
        w.push(format!("master is {got:.1} LUFS, {:.1} LU from the {want:.1} LUFS target", got - want));
    }
    if mastered.profile.loudness.true_peak_dbtp > ceiling + 0.05 {
        w.push(format!(
            "master true peak {:.2} dBTP is over the ceiling {ceiling:.1}",
            mastered.profile.loudness.true_peak_dbtp
        ));
    }
    let tm = tonal_balance(mix);
    let tr = tonal_balance(reference);
    let dist = tm.iter().zip(&tr).map(|(a, b)| (a - b).abs()).sum::<f64>() / tm.len() as f64;
    if dist > 6.0 {
        w.push(format!(
            "mix and reference have very different tonal balance (mean {dist:.1} dB apart): is the reference the right genre?"
        ));
    }
    w
}
