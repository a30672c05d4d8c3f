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
    // -12.5 LUFS: without saturation the limiter alone reaches it within its 12 dB depth limit
    // (the dynamics stage leaves this mix uncompressed: it is not judged closer to the
    // reference's level motion), so both masters sit at the same loudness and compare fairly.
    // The saturator hands the limiter its 3 dB share (`LIMITER_SHARE_DB`), so the limiter alone
    // must work well over 6 dB for "several dB" to be measurable: at -13 LUFS, with the broad
    // EQ's tidied fit, it works 6.1 dB alone.
    let target = -12.5;
    let solve = SolveOptions { target_lufs: Some(target), ..SolveOptions::default() };
    let (on, _) = master(&mix, &mp, &rp, &MasterOptions { solve: solve.clone(), ..MasterOptions::default() }, &quiet)
        .expect("masters with saturation");
    let (off, _) =
        master(&mix, &mp, &rp, &MasterOptions { solve, saturation: false, ..MasterOptions::default() }, &quiet)
            .expect("masters without");
    assert!(on.settings.saturation.enabled, "a mix 13 dB quieter than its target should use the saturator");
    assert!(!off.settings.saturation.enabled);
    for (name, m) in [("on", &on), ("off", &off)] {
        let i = m.profile.loudness.integrated_lufs;
        let tp = m.profile.loudness.true_peak_dbtp;
        println!(
            "saturation {name}: {i:.2} LUFS, {tp:.2} dBTP, limiter gain reduction {:.1} dB (99.9th pct), {:.1} dB max, \
             peaks {:.1} dB into the clipper",
            m.limiter.loud_gain_reduction_db, m.limiter.max_gain_reduction_db, m.saturation.peak_drive_db
        );
        assert!((i - target).abs() <= 0.1, "saturation {name}: {i:.2} LUFS, target {target}");
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
    // side, width, with the broad EQ): on 0.33/0.58/0.38 dB, off 0.31/0.51/0.36 dB, from the
    // mix's 1.32/0.15/1.67.
    // (The corpus pairs, scored at equal loudness, are in the issue notes.)
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

/// Sum of squares of `x`.
fn energy(x: &[f32]) -> f64 {
    x.iter().map(|v| f64::from(*v).powi(2)).sum()
}

/// Level of `l` over `r` in each 10 ms block where `before` (the input's left) reaches `level`, dB.
fn block_pans_db(l: &[f32], r: &[f32], before: &[f32], level: f32) -> Vec<f64> {
    let block = (RATE / 100) as usize;
    (0..l.len() / block)
        .map(|b| b * block..(b + 1) * block)
        .filter(|span| before[span.clone()].iter().any(|v| v.abs() >= level))
        .map(|span| 10.0 * (energy(&l[span.clone()]) / energy(&r[span])).log10())
        .collect()
}

#[test]
fn saturation_is_linked_across_channels_so_a_panned_source_stays_where_it_was() {
    // One source panned left of centre (left 1.5 times the right, +3.52 dB), clipped all the
    // time (every 10 ms block), at the default and at the --allow-crush cap. An unlinked clipper
    // (each channel on its own) flattens the left more than the right and pulls the source
    // 2.5-3.1 dB toward the centre. The linked one turns mid and side down together; the side
    // takes the mid's gain smoothed over a millisecond, which lets a constantly clipped source
    // drift a little toward the centre (measured: at most 0.31 / 0.48 dB in a block, 0.19 /
    // 0.36 dB overall). The bar is the smallest level difference between the ears that moves a
    // source, about 0.5 dB, and a fifth of what the unlinked clipper does.
    let x = common::synth_pink(4, RATE, 4.0, 40.0, 16_000.0, -9.0);
    let left: Vec<f32> = x.iter().map(|v| 1.5 * v).collect();
    let right = x.clone();
    let pan_db = 20.0 * 1.5f64.log10();
    for drive_db in [refmaster::master::MAX_SATURATION_DB, refmaster::master::CRUSH_MAX_SATURATION_DB] {
        let s = SaturationSettings { enabled: true, drive_db, knee_db: 6.0, mix: 1.0 };
        let knee = (10f64.powf((-1.0 - 6.0 - drive_db) / 20.0)) as f32;
        let mut linked = AudioBuffer { sample_rate_hz: RATE, channels: vec![left.clone(), right.clone()] };
        let stats = saturate(&mut linked, &s, -1.0);
        assert!(stats.active_fraction > 0.1, "the test must drive the clipper: {stats:?}");
        let mut alone: Vec<Vec<f32>> = Vec::new();
        for ch in [&left, &right] {
            let mut mono = AudioBuffer { sample_rate_hz: RATE, channels: vec![ch.clone()] };
            saturate(&mut mono, &s, -1.0);
            alone.extend(mono.channels);
        }
        let worst = |pans: &[f64]| pans.iter().map(|p| (p - pan_db).abs()).fold(0.0, f64::max);
        let (l, r) = (&linked.channels[0], &linked.channels[1]);
        let clipped = block_pans_db(l, r, &left, knee);
        let unlinked = block_pans_db(&alone[0], &alone[1], &left, knee);
        let whole = block_pans_db(l, r, &left, 0.0);
        let overall = 10.0 * (energy(l) / energy(r)).log10() - pan_db;
        println!(
            "panned source (+{pan_db:.2} dB), drive {drive_db} dB, {} of {} 10 ms blocks clipped: pan moves by up to \
             {:.3} dB linked ({overall:+.3} dB overall), {:.2} dB with each channel clipped alone",
            clipped.len(),
            whole.len(),
            worst(&clipped),
            worst(&unlinked)
        );
        assert!(clipped.len() > 100, "the test must clip many blocks");
        let bar = 0.5f64.min(worst(&unlinked) / 5.0);
        assert!(
            worst(&clipped) < bar,
            "drive {drive_db} dB: the pan moved by {:.3} dB in a clipped block",
            worst(&clipped)
        );
        assert!(overall.abs() < bar, "drive {drive_db} dB: the pan moved by {overall:.3} dB overall");
    }
}

#[test]
fn a_centred_drum_driving_the_clipper_puts_no_high_treble_into_a_wide_mixs_side() {
    // A centred drum (a 55 Hz kick and a noise-burst snare) every half second, driven 6 dB into
    // a clipper its loudest peaks already reach (13 dB deep in all); a wide 200 Hz pad lives
    // only in the side, with nothing above it. The side must be
    // turned down with the drum's peaks, but a side gain that follows every clipped sample
    // carries the drum's broadband clipping onto the pad: pad times gain, sprayed over the
    // side's treble, where the mix has nothing.
    let n = 4 * RATE as usize;
    let hit = RATE as usize / 2;
    let clip_lin = 10f64.powf(-1.0 / 20.0);
    let mut rng = common::Rng::new(21);
    let (mut left, mut right) = (vec![0f32; n], vec![0f32; n]);
    for i in 0..n {
        let t = i as f64 / f64::from(RATE);
        let since = (i % hit) as f64 / f64::from(RATE);
        let kick = clip_lin * (-since / 0.15).exp() * (2.0 * std::f64::consts::PI * 55.0 * t).sin();
        let snare = 0.6 * clip_lin * (-since / 0.05).exp() * rng.gaussian();
        let pad = 0.1 * (2.0 * std::f64::consts::PI * 200.0 * t).sin();
        left[i] = (kick + snare + pad) as f32;
        right[i] = (kick + snare - pad) as f32;
    }
    let input_side: Vec<f64> = left.iter().zip(&right).map(|(l, r)| 0.5 * f64::from(l - r)).collect();
    let mut audio = AudioBuffer { sample_rate_hz: RATE, channels: vec![left, right] };
    let s = SaturationSettings { enabled: true, drive_db: 6.0, knee_db: 6.0, mix: 1.0 };
    let stats = saturate(&mut audio, &s, -1.0);
    let side: Vec<f64> =
        audio.channels[0].iter().zip(&audio.channels[1]).map(|(l, r)| 0.5 * f64::from(l - r)).collect();
    // Power per FFT bin, and its sum over a band.
    let power = |x: &[f64]| -> Vec<f64> {
        let mut planner = RealFftPlanner::<f64>::new();
        let fft = planner.plan_fft_forward(x.len());
        let mut buf = x.to_vec();
        let mut spectrum = fft.make_output_vec();
        fft.process(&mut buf, &mut spectrum).expect("fft");
        spectrum.iter().map(|c| c.norm_sqr()).collect()
    };
    let bin_hz = f64::from(RATE) / n as f64;
    let band = |p: &[f64], lo: f64, hi: f64| -> f64 {
        p.iter().enumerate().filter(|(k, _)| (lo..hi).contains(&(*k as f64 * bin_hz))).map(|(_, v)| v).sum()
    };
    let (out, input) = (power(&side), power(&input_side));
    let treble_db = 10.0 * (band(&out, 4_000.0, 20_000.0) / band(&out, 0.0, 22_050.0)).log10();
    // The saturator's drive raises everything by drive_db before the clipper.
    let level_db = 10.0 * (band(&out, 0.0, 22_050.0) / band(&input, 0.0, 22_050.0)).log10() - s.drive_db;
    println!(
        "drum {:.1} dB into the clipper: the side's treble (4-20 kHz) {treble_db:.1} dB re the whole side; the side {level_db:+.2} dB",
        stats.peak_drive_db
    );
    assert!(stats.peak_drive_db > 5.0, "the drum must drive the clipper: {stats:?}");
    assert!(treble_db < -60.0, "the clipper put the side's treble at {treble_db:.1} dB re the side");
}
