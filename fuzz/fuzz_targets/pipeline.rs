//! Tiny arbitrary audio through analyse → solve → render (and the closed-loop `master` for half
//! the inputs): finite output, under the ceiling by refmaster's own true-peak meter, and `master`
//! refuses with an error, never a panic.
//!
//! Input layout: bytes 0-1 the sample rate (mapped onto 8-192 kHz), byte 2 flags (bit 0 stereo,
//! bit 1 tile the samples to 0.45 s so the loudness gate opens, bits 2-3 gain ×1/×4/×1e-3/×1,
//! bit 4 run `master`, bits 5-7 the ceiling), then little-endian i16 samples, interleaved.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use refmaster::analysis::{analyze, Profile};
use refmaster::audio::AudioBuffer;
use refmaster::master::{master, MasterOptions};
use refmaster::solve::{solve, SolveOptions};

/// A fixed stereo target: 2 s of seeded noise, low-passed on one side, analysed once.
fn target() -> &'static Profile {
    static T: OnceLock<Profile> = OnceLock::new();
    T.get_or_init(|| {
        let rate = 44_100u32;
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let (mut l, mut r) = (Vec::new(), Vec::new());
        let mut y = 0f32;
        for _ in 0..2 * rate {
            let x = next();
            y = 0.9 * y + 0.1 * x;
            l.push(0.3 * x);
            r.push(y + 0.1 * next());
        }
        analyze(&AudioBuffer { sample_rate_hz: rate, channels: vec![l, r] }, "target", false)
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let rate = 8_000 + u32::from(u16::from_le_bytes([data[0], data[1]])) * 184_000 / 65_535;
    let flags = data[2];
    let channels = 1 + usize::from(flags & 1);
    let gain = [1.0f32, 4.0, 1e-3, 1.0][usize::from((flags >> 2) & 3)];
    let ceiling = -f64::from(flags >> 5) * 2.5; // 0, -2.5, ..., -17.5 dBTP
    let samples: Vec<f32> =
        data[3..].chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0 * gain).collect();
    let mut frames = samples.len() / channels;
    if frames == 0 {
        return;
    }
    if flags & 2 != 0 {
        frames = frames.max((0.45 * f64::from(rate)) as usize);
    }
    let planes: Vec<Vec<f32>> =
        (0..channels).map(|c| (0..frames).map(|i| samples[((i * channels) + c) % samples.len()]).collect()).collect();
    let mix = AudioBuffer { sample_rate_hz: rate, channels: planes };
    let profile = analyze(&mix, "fuzz", false);
    let opts = SolveOptions { ceiling_dbtp: ceiling, ..SolveOptions::default() };
    let (settings, _) = solve(&profile, target(), &opts);
    settings.validate("solved").expect("solved settings validate");
    let check = |audio: &AudioBuffer, what: &str| {
        assert_eq!(audio.frames(), frames, "{what}: length changed");
        assert!(audio.channels.iter().flatten().all(|x| x.is_finite()), "{what}: non-finite output");
        let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
        let tp = refmaster::dsp::truepeak::true_peak_db(&planes);
        assert!(tp <= ceiling, "{what}: true peak {tp} over the ceiling {ceiling}");
    };
    let rendered = refmaster::render::render(&mix, &settings).expect("mono/stereo renders");
    check(&rendered.audio, "render");
    if flags & 16 != 0 {
        let options = MasterOptions { solve: opts, ..MasterOptions::default() };
        match master(&mix, &profile, target(), &options, &|_| {}) {
            Ok(done) => {
                done.settings.validate("mastered").expect("mastered settings validate");
                check(&done.audio, "master");
            }
            Err(e) => assert!(!e.to_string().contains('\n')),
        }
    }
});
