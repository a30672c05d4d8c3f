//! Criterion benchmark of the saturator on 60 s of real stereo music at 44.1 kHz: the shipped
//! demo mix (`references/demo_mix.flac`, 20 s) three times over, driven so its loudest peaks
//! (99.9th percentile of the true-peak envelope) sit 6 dB past the clip level, the solver's cap
//! (`master::MAX_SATURATION_DB`), as on a loud master, and 3 dB past it. Measured: the whole
//! buffer at both qualities (`saturate_with`) and the streamed stage the master's render uses
//! (`SaturatorStage`, 4096-frame chunks in, windows of 32768 frames saturated two at a time).
//!
//! Measured in CPU time of the whole process (user + system, both threads), not wall time: the
//! machine this runs on is shared, and under load a wall time follows the share of the cores a
//! run gets more than the work it does. Run: `cargo bench --bench saturator`.

use std::path::Path;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use refmaster::audio::AudioBuffer;
use refmaster::decode::decode_file;
use refmaster::dsp::truepeak::{envelope_quantile_db, peak_envelope};
use refmaster::render::saturation::{saturate_with, Quality};
use refmaster::render::stream::{slices, Planes, SaturatorStage};
use refmaster::settings::SaturationSettings;

/// CPU time of this process (all its threads), nanoseconds.
struct CpuTime;

fn cpu_ns() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime");
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

impl Measurement for CpuTime {
    type Intermediate = f64;
    type Value = f64;
    fn start(&self) -> f64 {
        cpu_ns()
    }
    fn end(&self, start: f64) -> f64 {
        cpu_ns() - start
    }
    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }
    fn zero(&self) -> f64 {
        0.0
    }
    fn to_f64(&self, v: &f64) -> f64 {
        *v
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self
    }
}

impl ValueFormatter for CpuTime {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical_ns < 1e6 { (1e-3, "µs cpu") } else { (1e-6, "ms cpu") };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, _t: &Throughput, _values: &mut [f64]) -> &'static str {
        "ns cpu"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// The limiter ceiling the saturator clips at, dBTP.
const CLIP_DBTP: f64 = -1.0;

/// The demo mix, 60 s.
fn music() -> AudioBuffer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join("demo_mix.flac");
    let (mut audio, _) = decode_file(&path).expect("decode the demo mix");
    for ch in audio.channels.iter_mut() {
        let one = ch.clone();
        for _ in 0..2 {
            ch.extend_from_slice(&one);
        }
    }
    audio
}

/// Settings that drive the loudest peaks of `audio` `over_db` past the clip level.
fn settings_for(audio: &AudioBuffer, over_db: f64) -> SaturationSettings {
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    let peak_db = envelope_quantile_db(&peak_envelope(&planes), 0.999);
    SaturationSettings { enabled: true, drive_db: CLIP_DBTP + over_db - peak_db, knee_db: 6.0, mix: 1.0 }
}

fn saturator(c: &mut Criterion<CpuTime>) {
    let audio = music();
    let mut g = c.benchmark_group("saturator_60s_stereo_44k1");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    for over_db in [6.0, 3.0] {
        let s = settings_for(&audio, over_db);
        g.bench_function(format!("oversampled_8x_{over_db}db_over"), |b| {
            b.iter_batched(
                || audio.clone(),
                |mut a| saturate_with(&mut a, &s, CLIP_DBTP, Quality::Oversampled),
                BatchSize::LargeInput,
            )
        });
        g.bench_function(format!("draft_{over_db}db_over"), |b| {
            b.iter_batched(
                || audio.clone(),
                |mut a| saturate_with(&mut a, &s, CLIP_DBTP, Quality::Draft),
                BatchSize::LargeInput,
            )
        });
    }
    let s = settings_for(&audio, 6.0);
    g.bench_function("stage_streamed_8x_6db_over", |b| {
        b.iter(|| {
            let mut stage = SaturatorStage::new(audio.sample_rate_hz, 2, &s, CLIP_DBTP, Quality::Oversampled);
            let mut out: Planes = vec![Vec::new(); 2];
            let (l, r) = (&audio.channels[0], &audio.channels[1]);
            for (a, b) in l.chunks(4096).zip(r.chunks(4096)) {
                stage.process(&[a, b], &mut out);
            }
            stage.finish(&mut out);
            slices(&out).iter().map(|c| c.len()).sum::<usize>()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = saturator
}
criterion_main!(benches);
