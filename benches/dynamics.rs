//! Criterion benchmark of the multiband compressor on 60 s of real stereo music at 44.1 kHz
//! (the shipped demo mix three times over, as mid and side), fed in 4096-frame chunks as the
//! render feeds it: four bands with their own detectors and the linear-phase split that applies
//! their gains (what the solver writes for a same-music round trip), and the broadband
//! (linked) compressor, which scales the signal and needs no split.
//!
//! Run: `cargo bench --bench dynamics`.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use refmaster::decode::decode_file;
use refmaster::render::dynamics::Compressor;
use refmaster::settings::{CompressorBand, DynamicsSettings};

/// The demo mix, 60 s, as (mid, side).
fn mid_side() -> (Vec<f32>, Vec<f32>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join("demo_mix.flac");
    let (audio, _) = decode_file(&path).expect("decode the demo mix");
    let (l, r) = (&audio.channels[0], &audio.channels[1]);
    let mid: Vec<f32> = l.iter().zip(r).map(|(a, b)| 0.5 * (a + b)).collect();
    let side: Vec<f32> = l.iter().zip(r).map(|(a, b)| 0.5 * (a - b)).collect();
    (mid.repeat(3), side.repeat(3))
}

fn settings(linked: bool) -> DynamicsSettings {
    let band = |threshold_dbfs, attack_ms: f64| CompressorBand {
        threshold_dbfs,
        ratio: 1.3,
        knee_db: 6.0,
        attack_ms,
        release_ms: attack_ms,
        makeup_db: 4.0,
    };
    DynamicsSettings {
        enabled: true,
        crossovers_hz: refmaster::dsp::crossover::DEFAULT_CROSSOVERS_HZ,
        bands: vec![band(-40.0, 200.0), band(-38.0, 100.0), band(-42.0, 45.0), band(-45.0, 45.0)],
        linked,
        feedback: false,
    }
}

fn dynamics(c: &mut Criterion) {
    let (mid, side) = mid_side();
    let mut g = c.benchmark_group("compressor_60s_stereo_44k1");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    for (name, linked) in [("multiband_4_bands", false), ("broadband_linked", true)] {
        let s = settings(linked);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut c = Compressor::new(44_100, &s, true);
                let (mut m, mut o) = (Vec::with_capacity(mid.len()), Vec::with_capacity(side.len()));
                for (a, b) in mid.chunks(4096).zip(side.chunks(4096)) {
                    c.process(a, b, &mut m, &mut o);
                }
                c.finish(&mut m, &mut o);
                m.len() + o.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, dynamics);
criterion_main!(benches);
