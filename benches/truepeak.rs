//! Criterion benchmark of true-peak measurement on 60 s of stereo 44.1 kHz: refmaster's precise
//! detector (`dsp::truepeak::TruePeakDetector`, 4x, 48 taps per branch cut at Nyquist, with a
//! parabolic reading, screened) against the `ebur128` crate's true-peak mode (4x, 12 taps per
//! branch), and the limiter's 4x 16-tap true-peak envelope (`peak_envelope`, every sample).
//! Run: `cargo bench --bench truepeak`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use refmaster::dsp::truepeak::TruePeakDetector;

/// A deterministic music-like test signal: a few tones, a square bass and noise bursts.
fn signal(frames: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..frames)
        .map(|i| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let noise = ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
            let t = i as f32 / 44_100.0;
            let bass = if (t * 55.0).fract() < 0.5 { 0.2 } else { -0.2 };
            0.3 * (t * 440.0 * std::f32::consts::TAU).sin() + bass + noise * if (i / 4410) % 3 == 0 { 0.8 } else { 0.1 }
        })
        .collect()
}

fn truepeak(c: &mut Criterion) {
    let frames = 60 * 44_100;
    let (l, r) = (signal(frames, 1), signal(frames, 2));
    let mut g = c.benchmark_group("true_peak_60s_stereo_44k1");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    g.bench_function("refmaster_precise_4x48", |b| {
        b.iter(|| {
            let mut d = TruePeakDetector::new(2);
            for (a, b) in l.chunks(65_536).zip(r.chunks(65_536)) {
                d.push(&[a, b]);
            }
            d.peak_dbtp()
        })
    });
    g.bench_function("refmaster_limiter_envelope_4x16", |b| {
        b.iter(|| {
            let mut peak = 0f32;
            for (a, b) in l.chunks(32_768).zip(r.chunks(32_768)) {
                peak = refmaster::dsp::truepeak::peak_envelope(&[a, b]).iter().fold(peak, |m, &v| m.max(v));
            }
            peak
        })
    });
    g.bench_function("ebur128_crate_true_peak", |b| {
        b.iter(|| {
            let mut m = ebur128::EbuR128::new(2, 44_100, ebur128::Mode::TRUE_PEAK).expect("meter");
            for (a, b) in l.chunks(65_536).zip(r.chunks(65_536)) {
                m.add_frames_planar_f32(&[a, b]).expect("frames");
            }
            m.true_peak(0).unwrap_or(0.0).max(m.true_peak(1).unwrap_or(0.0))
        })
    });
    g.finish();
}

criterion_group!(benches, truepeak);
criterion_main!(benches);
