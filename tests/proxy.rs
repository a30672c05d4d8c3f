//! The proxy ([`refmaster::proxy`]): the closed loop's intermediate passes run on a short stand-in
//! for a long song, and only the last pass renders the whole song. What the proxy is chosen
//! from and how close its master comes to the one every pass renders in full.

mod common;

use common::{ffmpeg_ebur128, kellet_pink, temp_dir, write_wav_f32, Rng};
use refmaster::analysis::{analyze, Profile};
use refmaster::master::{master, MasterOptions};
use refmaster::proxy::{choose_excerpts, read_proxy};
use refmaster::AudioBuffer;

const RATE: u32 = 44_100;

/// One-pole low-pass (`a` near 1: darker) or its complement, in place.
fn tilt(x: &mut [f32], a: f32, highpass: bool) {
    let mut y = 0f32;
    for v in x.iter_mut() {
        y = a * y + (1.0 - a) * *v;
        if highpass {
            *v -= y;
        } else {
            *v = y;
        }
    }
}

/// A song in sections, as songs are: a dark quiet verse, a bright loud chorus with accented
/// beats, and a sparse bridge, in an order that repeats with variations; stereo with a wider
/// chorus. Its loudness, spectrum and peaks differ from section to section, which is what the
/// proxy must sample fairly.
fn sectioned_song(seconds: usize, seed: u64) -> AudioBuffer {
    let n = seconds * RATE as usize;
    let mut rng = Rng::new(seed);
    let (mut l, mut r) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut t = 0usize;
    let mut section = 0usize;
    while t < n {
        let len = ((12 + (rng.unit() * 10.0) as usize) * RATE as usize).min(n - t);
        let kind = [0, 1, 0, 1, 2, 1][section % 6];
        let mut a = kellet_pink(seed * 100 + section as u64, len, [-26.0, -17.0, -32.0][kind]);
        let mut b = kellet_pink(seed * 100 + 50 + section as u64, len, [-26.0, -17.0, -32.0][kind]);
        match kind {
            0 => {
                tilt(&mut a, 0.8, false);
                tilt(&mut b, 0.8, false);
            }
            1 => {
                let beat = RATE as usize / 2;
                for (i, (x, y)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
                    let k = 1.0 + 3.0 * (-((i % beat) as f32) / beat as f32 * 10.0).exp();
                    *x *= k;
                    *y *= k;
                }
            }
            _ => {
                tilt(&mut a, 0.3, true);
                tilt(&mut b, 0.3, true);
            }
        }
        let width = [0.3f32, 0.7, 0.5][kind];
        for (x, y) in a.iter().zip(&b) {
            let (m, s) = (x + y, (x - y) * width);
            l.push(0.5 * (m + s));
            r.push(0.5 * (m - s));
        }
        t += len;
        section += 1;
    }
    AudioBuffer { sample_rate_hz: RATE, channels: vec![l, r] }
}

/// A brighter, denser reference, so that the loop EQs, saturates and limits.
fn reference() -> Profile {
    let mut t = sectioned_song(40, 7);
    for c in t.channels.iter_mut() {
        tilt(c, 0.5, true);
        for x in c.iter_mut() {
            *x = (*x * 4.0).clamp(-0.9, 0.9);
        }
    }
    analyze(&t, "reference", false)
}

#[test]
fn the_proxy_is_a_short_sample_of_the_song_in_song_order_whose_loudness_spreads_like_the_songs() {
    let song = sectioned_song(200, 1);
    let profile = analyze(&song, "song", false);
    let excerpts = choose_excerpts(&profile).expect("a 200 s song gets a proxy");
    let total_s: f64 = excerpts.iter().map(|e| e.frames as f64 / f64::from(RATE)).sum();
    // 15 % of the song, between 30 and 60 s.
    assert!((29.0..=61.0).contains(&total_s), "proxy of {total_s:.1} s");
    for pair in excerpts.windows(2) {
        assert!(pair[0].start_frame + pair[0].frames <= pair[1].start_frame, "excerpts overlap or are out of order");
    }
    // Its loudness spreads like the song's: the proxy's integrated loudness within 1 LU.
    // Without pre-roll the excerpts join with 10 ms crossfades (or none where they follow each
    // other in the song).
    let proxy = read_proxy(&song, &excerpts, 0).expect("reads").audio;
    let total: usize = excerpts.iter().map(|e| e.frames).sum();
    assert!(proxy.frames() >= total && proxy.frames() <= total + (excerpts.len() - 1) * 441);
    let p = analyze(&proxy, "proxy", false);
    let gap = p.loudness.integrated_lufs - profile.loudness.integrated_lufs;
    eprintln!("proxy {total_s:.1} s in {} excerpts, loudness {gap:+.2} LU from the song's", excerpts.len());
    assert!(
        gap.abs() < 1.0,
        "proxy {:.2} LUFS, song {:.2} LUFS",
        p.loudness.integrated_lufs,
        profile.loudness.integrated_lufs
    );
}

#[test]
fn a_song_under_a_minute_is_measured_whole() {
    let song = sectioned_song(50, 2);
    assert!(choose_excerpts(&analyze(&song, "song", false)).is_none());
}

/// Mid-band levels (1/6 octave, 50 Hz–16 kHz) of `audio` with their mean removed, dB.
fn mid_shape_db(audio: &AudioBuffer) -> Vec<f64> {
    let p = analyze(audio, "master", false);
    let bands: Vec<f64> = p
        .spectrum
        .frequencies_hz
        .iter()
        .zip(&p.spectrum.mid_db)
        .filter(|(f, _)| (50.0..=16_000.0).contains(*f))
        .map(|(_, l)| *l)
        .collect();
    let mean = bands.iter().sum::<f64>() / bands.len() as f64;
    bands.iter().map(|l| l - mean).collect()
}

#[test]
fn the_master_solved_on_the_proxy_matches_the_one_solved_on_every_pass_in_full() {
    let song = sectioned_song(150, 3);
    let mix_profile = analyze(&song, "song", false);
    assert!(choose_excerpts(&mix_profile).is_some(), "the test song must be long enough for a proxy");
    let target = reference();
    let quiet = |_: &str| {};
    let (by_proxy, a) = master(&song, &mix_profile, &target, &MasterOptions::default(), &quiet).expect("masters");
    let full = MasterOptions { proxy: false, ..MasterOptions::default() };
    let (in_full, b) = master(&song, &mix_profile, &target, &full, &quiet).expect("masters");
    assert!(
        by_proxy.settings.saturation.enabled || by_proxy.limiter.loud_gain_reduction_db > 1.0,
        "the chain must work"
    );
    // Loudness and true peak by ffmpeg: the two masters within 0.05 LU, both under the ceiling.
    let dir = temp_dir();
    let (pa, pb) = (dir.path().join("proxy.wav"), dir.path().join("full.wav"));
    write_wav_f32(&pa, RATE, &a.channels);
    write_wav_f32(&pb, RATE, &b.channels);
    let (la, lb) = (ffmpeg_ebur128(&pa), ffmpeg_ebur128(&pb));
    assert!(
        (la.integrated_lufs - lb.integrated_lufs).abs() <= 0.05,
        "proxy {:.2} LUFS, full loop {:.2} LUFS",
        la.integrated_lufs,
        lb.integrated_lufs
    );
    assert!(la.true_peak_dbtp <= -1.0 && lb.true_peak_dbtp <= -1.0);
    // Spectral shape: mean |difference| of the mid bands within 0.05 dB.
    let (sa, sb) = (mid_shape_db(&a), mid_shape_db(&b));
    let d = sa.iter().zip(&sb).map(|(x, y)| (x - y).abs()).sum::<f64>() / sa.len() as f64;
    assert!(d <= 0.05, "mid shape differs by {d:.3} dB on average");
    eprintln!(
        "proxy against full loop: {:.3} / {:.3} LUFS, mid shape {d:.3} dB, drive {:.2} / {:.2} dB",
        la.integrated_lufs, lb.integrated_lufs, by_proxy.settings.limiter.drive_db, in_full.settings.limiter.drive_db
    );
    let drive = (by_proxy.settings.limiter.drive_db - in_full.settings.limiter.drive_db).abs();
    assert!(
        drive < 0.5,
        "limiter drives {:.2} and {:.2} dB",
        by_proxy.settings.limiter.drive_db,
        in_full.settings.limiter.drive_db
    );
}

#[test]
fn each_excerpt_of_a_pre_rolled_proxy_is_the_songs_own_samples_where_the_proxy_says_it_is() {
    let song = sectioned_song(200, 4);
    let excerpts = choose_excerpts(&analyze(&song, "song", false)).expect("a 200 s song gets a proxy");
    let preroll = RATE as usize; // 1 s
    let proxy = read_proxy(&song, &excerpts, preroll).expect("reads");
    assert_eq!(proxy.measured.len(), excerpts.len());
    for (e, r) in excerpts.iter().zip(&proxy.measured) {
        // The excerpt, less at most the next join's 10 ms crossfade, and not its pre-roll.
        assert!(r.len() <= e.frames && r.len() + 441 >= e.frames, "measured {} of {} frames", r.len(), e.frames);
        for (c, channel) in proxy.audio.channels.iter().enumerate() {
            let same = channel[r.clone()] == song.channels[c][e.start_frame..e.start_frame + r.len()];
            assert!(same, "the measured frames of channel {c} are not the song's excerpt at {}", e.start_frame);
        }
    }
    // Pre-rolls lie between excerpts, never inside one.
    for pair in proxy.measured.windows(2) {
        assert!(pair[1].start >= pair[0].end, "measured ranges overlap");
        assert!(pair[1].start - pair[0].end <= preroll + 882, "the pre-roll is at most what was asked");
    }
}
