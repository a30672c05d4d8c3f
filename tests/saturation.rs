//! The saturator (issue 9): clean enough to use, and used only where it helps.
//!
//! Aliasing is measured exactly: a 15 kHz sine at 44.1 kHz repeats every 147 samples, so a DFT
//! over a whole number of periods has no leakage and every harmonic (and every alias of one)
//! lands on its own bin.

mod common;

use realfft::RealFftPlanner;
use refmaster::audio::AudioBuffer;
use refmaster::render::saturation::saturate;
use refmaster::settings::SaturationSettings;

const RATE: u32 = 44_100;
/// 15 kHz at 44.1 kHz: 50 cycles in 147 samples.
const PERIOD: usize = 147;

/// Saturates a 15 kHz sine whose peak sits `over_db` above the clip level (-1 dBTP) and returns
/// the strongest component below 14 kHz relative to the fundamental, dB.
fn alias_level_db(over_db: f64) -> f64 {
    let clip_dbtp = -1.0;
    let frames = PERIOD * 600;
    let amp = 10f64.powf((clip_dbtp + over_db) / 20.0);
    let x: Vec<f32> = (0..frames)
        .map(|i| (amp * (2.0 * std::f64::consts::PI * 15_000.0 * i as f64 / f64::from(RATE)).sin()) as f32)
        .collect();
    let mut audio = AudioBuffer { sample_rate_hz: RATE, channels: vec![x] };
    let s = SaturationSettings { enabled: true, drive_db: 0.0, knee_db: 6.0, mix: 1.0 };
    saturate(&mut audio, &s, clip_dbtp);
    // A steady-state stretch of whole periods from the middle.
    let n = PERIOD * 300;
    let start = PERIOD * 150;
    let mut seg: Vec<f64> = audio.channels[0][start..start + n].iter().map(|&v| f64::from(v)).collect();
    let mut spectrum = RealFftPlanner::<f64>::new().plan_fft_forward(n).make_output_vec();
    RealFftPlanner::<f64>::new().plan_fft_forward(n).process(&mut seg, &mut spectrum).expect("fft");
    let bin_hz = f64::from(RATE) / n as f64;
    let fundamental = spectrum[(15_000.0 / bin_hz).round() as usize].norm();
    let worst = spectrum
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(k, _)| (*k as f64) * bin_hz < 14_000.0)
        .map(|(_, c)| c.norm())
        .fold(0.0, f64::max);
    20.0 * (worst / fundamental).log10()
}

#[test]
fn a_hard_driven_15_khz_sine_makes_no_alias_above_minus_80_db_below_14_khz() {
    // From just touching the clip level to 18 dB past it: three times the solver's default cap
    // (refmaster::master::MAX_SATURATION_DB) and 1.5 times its --allow-crush cap. (At +21 dB the
    // 23rd harmonic's alias at 7.8 kHz reaches -76 dB: that is where the oversampling runs out.)
    const { assert!(refmaster::master::CRUSH_MAX_SATURATION_DB <= 18.0) };
    let mut worst = f64::NEG_INFINITY;
    for step in 0..=6 {
        let over = 3.0 * f64::from(step);
        let alias = alias_level_db(over);
        println!("15 kHz sine {over:+.0} dB into the clipper: strongest component below 14 kHz {alias:.1} dB");
        assert!(alias < -80.0, "{over:+} dB drive: alias at {alias:.1} dB relative to the fundamental");
        worst = worst.max(alias);
    }
    println!("aliasing: worst {worst:.1} dB re the fundamental (bar -80 dB)");
}

// ---- used where it helps, and the loudness-war guard ------------------------------------------

use refmaster::analysis::analyze;
use refmaster::master::{master, MasterOptions};
use refmaster::solve::SolveOptions;

/// A dynamic "mix": pink noise with a drum-like decaying noise burst every half second, 12 dB
/// above the bed at its start (a high crest factor, as unmastered mixes have).
fn dynamic_mix(seconds: f64) -> Vec<Vec<f32>> {
    let bed_l = common::synth_pink(1, RATE, seconds, 30.0, 16_000.0, -26.0);
    let bed_r = common::synth_pink(2, RATE, seconds, 30.0, 16_000.0, -26.0);
    let mut rng = common::Rng::new(9);
    let hit = (0.5 * f64::from(RATE)) as usize;
    let mut l = bed_l;
    let mut r = bed_r;
    for i in 0..l.len() {
        let t = (i % hit) as f64 / f64::from(RATE);
        let burst = (rng.gaussian() * 0.2 * (-t / 0.03).exp()) as f32;
        l[i] += burst;
        r[i] += burst;
    }
    vec![l, r]
}

/// A loud, dense "reference": pink noise pushed through a hard tanh and scaled to `lufs`.
fn loud_reference(seconds: f64) -> Vec<Vec<f32>> {
    (0..2)
        .map(|c| {
            common::synth_pink(10 + c, RATE, seconds, 30.0, 16_000.0, -12.0)
                .iter()
                .map(|v| (3.0 * v).tanh() * 0.49)
                .collect()
        })
        .collect()
}

#[test]
fn material_below_the_knee_passes_the_saturator_bit_identical() {
    // -1 dBTP clip, 6 dB knee: a 1 kHz sine peaking 9 dB under the clip never reaches the knee.
    let x = common::sine(RATE, 1000.0, -10.0, 0.3, RATE as usize);
    let mut audio = AudioBuffer { sample_rate_hz: RATE, channels: vec![x.clone(), x.clone()] };
    let s = SaturationSettings { enabled: true, drive_db: 0.0, knee_db: 6.0, mix: 1.0 };
    let stats = saturate(&mut audio, &s, -1.0);
    assert_eq!(stats.active_fraction, 0.0);
    assert!(audio.channels.iter().all(|c| c.iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits())));
}

#[test]
fn with_a_loud_reference_saturation_lowers_the_limiters_work_and_keeps_the_tonal_and_width_match() {
    let mix = AudioBuffer { sample_rate_hz: RATE, channels: dynamic_mix(20.0) };
    let reference = AudioBuffer { sample_rate_hz: RATE, channels: loud_reference(20.0) };
    let mp = analyze(&mix, "mix", false);
    let rp = analyze(&reference, "reference", false);
    let quiet = |_: &str| {};
    let solve = SolveOptions { target_lufs: Some(-10.0), ..SolveOptions::default() };
    let (on, _) = master(&mix, &mp, &rp, &MasterOptions { solve: solve.clone(), ..MasterOptions::default() }, &quiet)
        .expect("masters with saturation");
    let (off, _) =
        master(&mix, &mp, &rp, &MasterOptions { solve, saturation: false, ..MasterOptions::default() }, &quiet)
            .expect("masters without");
    assert!(on.settings.saturation.enabled, "a mix 16 dB quieter than its target should use the saturator");
    assert!(!off.settings.saturation.enabled);
    for (name, m) in [("on", &on), ("off", &off)] {
        let i = m.profile.loudness.integrated_lufs;
        let tp = m.profile.loudness.true_peak_dbtp;
        println!(
            "saturation {name}: {i:.2} LUFS, {tp:.2} dBTP, limiter gain reduction {:.1} dB (99.9th pct), {:.1} dB max, \
             peaks {:.1} dB into the clipper",
            m.limiter.loud_gain_reduction_db, m.limiter.max_gain_reduction_db, m.saturation.peak_drive_db
        );
        assert!((i + 10.0).abs() <= 0.1, "saturation {name}: {i:.2} LUFS, target -10");
        assert!(tp <= -1.0, "saturation {name}: true peak {tp:.2} dBTP");
    }
    assert!(
        on.limiter.loud_gain_reduction_db < off.limiter.loud_gain_reduction_db - 3.0,
        "the saturator should take several dB off the limiter: {:.1} vs {:.1} dB",
        on.limiter.loud_gain_reduction_db,
        off.limiter.loud_gain_reduction_db
    );
    // And it buys that without giving up the tonal and width match: at most a tenth of a dB more
    // shape error on any measure, a level step under the smallest audible one. Both masters come
    // from the same mix, so the spectra's estimation noise is common to them. Measured (mid,
    // side, width): on 0.17/0.23/0.22 dB, off 0.10/0.20/0.14 dB, from the mix's 1.32/0.15/1.67.
    // (On the corpus pairs the scorecard finds it equal or better: see the issue notes.)
    let top_hz = refmaster::solve::follow_limit_hz(&mp, &rp);
    let start = shape_errors_db(&mp, &rp, top_hz);
    let (with, without) = (shape_errors_db(&on.profile, &rp, top_hz), shape_errors_db(&off.profile, &rp, top_hz));
    println!("shape error mid/side/width (dB): mix {start:.2?}, saturation on {with:.2?}, off {without:.2?}");
    for (k, name) in ["mid", "side", "width"].iter().enumerate() {
        assert!(with[k] <= without[k] + 0.1, "{name}: {:.2} dB with saturation, {:.2} dB without", with[k], without[k]);
    }
}

/// Mean |difference| of `a` and `b` over the grid bands from 40 Hz to 16 kHz, median offset
/// removed (shape, not level), for mid and side; and of their side-to-mid ratios from 100 Hz to
/// 10 kHz (width): the scorecard's measures on refmaster's grid, dB; all only up to `top_hz`,
/// the highest frequency the EQ follows (above it nothing is matched, by design).
fn shape_errors_db(a: &refmaster::analysis::Profile, b: &refmaster::analysis::Profile, top_hz: f64) -> [f64; 3] {
    let (sa, sb) = (&a.spectrum, &b.spectrum);
    let shape = |x: &[f64], y: &[f64]| {
        let d: Vec<f64> = sa
            .frequencies_hz
            .iter()
            .zip(x.iter().zip(y))
            .filter(|(f, _)| (40.0..=16_000.0f64.min(top_hz)).contains(*f))
            .map(|(_, (p, q))| p - q)
            .collect();
        let mut sorted = d.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        d.iter().map(|v| (v - median).abs()).sum::<f64>() / d.len() as f64
    };
    let width: Vec<f64> = sa
        .frequencies_hz
        .iter()
        .enumerate()
        .filter(|(_, f)| (100.0..=10_000.0f64.min(top_hz)).contains(*f))
        .map(|(i, _)| ((sa.side_db[i] - sa.mid_db[i]) - (sb.side_db[i] - sb.mid_db[i])).abs())
        .collect();
    [shape(&sa.mid_db, &sb.mid_db), shape(&sa.side_db, &sb.side_db), width.iter().sum::<f64>() / width.len() as f64]
}

#[test]
fn a_reference_louder_than_the_guard_allows_is_not_chased_unless_crush_is_allowed() {
    let dir = common::temp_dir();
    let mix = common::in_dir(&dir, "mix.wav");
    let reference = common::in_dir(&dir, "reference.wav");
    common::write_wav_f32(&mix, RATE, &dynamic_mix(20.0));
    common::write_wav_f32(&reference, RATE, &loud_reference(20.0));
    let r = common::ffmpeg_ebur128(&reference);
    assert!(r.integrated_lufs > -8.5, "the reference must be louder than the guard: {r:?}");
    let guarded = common::in_dir(&dir, "guarded.wav");
    let run = common::run_refmaster([
        mix.as_os_str(),
        "--ref".as_ref(),
        reference.as_os_str(),
        "-o".as_ref(),
        guarded.as_os_str(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let reason = stdout.lines().find(|l| l.contains("loudness guard")).expect("the guard says why it stopped");
    let g = common::ffmpeg_ebur128(&guarded);
    let plr = g.true_peak_dbtp - g.integrated_lufs;
    println!(
        "guarded: {:.1} LUFS, {:.1} dBTP, PLR {plr:.1} dB (reference {:.1} LUFS): {reason}",
        g.integrated_lufs, g.true_peak_dbtp, r.integrated_lufs
    );
    assert!(
        plr >= refmaster::master::MIN_PLR_DB,
        "PLR {plr:.1} dB under the {} dB guard",
        refmaster::master::MIN_PLR_DB
    );
    assert!(g.true_peak_dbtp <= -1.0);

    let crushed = common::in_dir(&dir, "crushed.wav");
    let run = common::run_refmaster([
        mix.as_os_str(),
        "--ref".as_ref(),
        reference.as_os_str(),
        "-o".as_ref(),
        crushed.as_os_str(),
        "--allow-crush".as_ref(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let c = common::ffmpeg_ebur128(&crushed);
    println!(
        "--allow-crush: {:.1} LUFS, {:.1} dBTP (reference {:.1} LUFS)",
        c.integrated_lufs, c.true_peak_dbtp, r.integrated_lufs
    );
    // ffmpeg prints one decimal: 0.3 LU plus its rounding.
    assert!((c.integrated_lufs - r.integrated_lufs).abs() <= 0.35, "--allow-crush missed the reference's loudness");
    assert!(c.true_peak_dbtp <= -1.0);
}

#[test]
fn saturation_is_linked_across_channels_so_a_panned_source_stays_where_it_was() {
    // One source panned left of centre (left 1.5 times the right), driven 9 dB into the clipper:
    // an unlinked clipper would flatten the left more than the right and pull it to the centre.
    let x = common::synth_pink(4, RATE, 4.0, 40.0, 16_000.0, -6.0);
    let left: Vec<f32> = x.iter().map(|v| 1.5 * v).collect();
    let right = x.clone();
    let mut audio = AudioBuffer { sample_rate_hz: RATE, channels: vec![left, right] };
    let s = SaturationSettings { enabled: true, drive_db: 9.0, knee_db: 6.0, mix: 1.0 };
    let stats = saturate(&mut audio, &s, -1.0);
    assert!(stats.active_fraction > 0.1, "the test must drive the clipper: {stats:?}");
    let (l, r) = (&audio.channels[0], &audio.channels[1]);
    let worst = l.iter().zip(r).map(|(a, b)| (a - 1.5 * b).abs()).fold(0f32, f32::max);
    let peak = l.iter().fold(0f32, |a, b| a.max(b.abs()));
    println!("panned source through the saturator: worst |L - 1.5 R| {worst:.2e} (peak {peak:.2})");
    assert!(worst < 1e-5 * peak.max(1.0), "the pan moved: |L - 1.5 R| up to {worst}");
}
