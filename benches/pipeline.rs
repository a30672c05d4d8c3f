//! Criterion benchmarks of the pipeline on a 5-minute stereo 44.1 kHz pair: the shipped demo
//! excerpts looped to 5 minutes by ffmpeg (FLAC mix, Ogg Vorbis reference), so the figures are
//! for real music, not synthetic noise. Run: `cargo bench --bench pipeline`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use refmaster::analysis::analyze;
use refmaster::decode::decode_file;
use refmaster::master::{master_stream, CollectSink, MasterOptions, DEFAULT_MEMORY_BUDGET_BYTES};
use refmaster::solve::{solve, SolveOptions};
use refmaster::source::{open_mix, profile_file};

fn looped(src: &str, name: &str, codec: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join("refmaster-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let out = dir.join(name);
    if !out.exists() {
        let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(src);
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-y", "-stream_loop", "15", "-i"])
            .arg(&input)
            .args(["-t", "300"])
            .args(codec)
            .arg(&out)
            .status()
            .expect("ffmpeg is needed to build the 5-minute bench files");
        assert!(status.success(), "ffmpeg failed to build {}", out.display());
    }
    out
}

fn pipeline(c: &mut Criterion) {
    let mix_path = looped("demo_mix.flac", "mix5min.flac", &["-c:a", "flac", "-sample_fmt", "s32"]);
    let ref_path = looped("demo_ref.ogg", "ref5min.ogg", &["-c:a", "libvorbis", "-q:a", "6"]);
    let mut g = c.benchmark_group("5min_stereo_44k1");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    g.bench_function("decode_flac", |b| b.iter(|| decode_file(&mix_path).expect("decode")));
    g.bench_function("decode_vorbis", |b| b.iter(|| decode_file(&ref_path).expect("decode")));
    let (mix, _) = decode_file(&mix_path).expect("decode");
    let (reference, _) = decode_file(&ref_path).expect("decode");
    g.bench_function("analyze", |b| b.iter(|| analyze(&mix, "mix", false)));
    g.bench_function("decode_and_analyze_flac", |b| {
        b.iter(|| {
            let (a, i) = decode_file(&mix_path).expect("decode");
            analyze(&a, "mix", i.lossy)
        })
    });
    // What refmaster does with a file it analyses: decode and measure in one streamed read.
    g.bench_function("profile_flac_streamed", |b| b.iter(|| profile_file(&mix_path).expect("profile")));
    let mp = analyze(&mix, "mix", false);
    let rp = analyze(&reference, "ref", true);
    g.bench_function("solve", |b| b.iter(|| solve(&mp, &rp, &SolveOptions::default())));
    let (settings, _) = solve(&mp, &rp, &SolveOptions::default());
    // The parametric approximation of the solved EQ (10 peaking bands and shelves), for export.
    g.bench_function("parametric_fit", |b| {
        b.iter(|| {
            refmaster::solve::parametric::fit(
                &settings.eq.frequencies_hz,
                &settings.eq.mid_gain_db,
                20_000.0,
                10,
                44_100.0,
            )
        })
    });
    g.bench_function("render_pre_limiter", |b| b.iter(|| refmaster::render::render_pre_limiter(&mix, &settings)));
    g.bench_function("render_full_chain", |b| b.iter(|| refmaster::render::render(&mix, &settings)));
    // What `refmaster MIX --ref REF` does, minus the WAV writing: decode and analyse both files
    // in one read each (the reference on a second thread), master as a stream.
    g.bench_function("whole_pipeline_decode_to_master", |b| {
        b.iter(|| {
            let (loaded, rp) = std::thread::scope(|s| {
                let r = s.spawn(|| profile_file(&ref_path).expect("reference"));
                let m = open_mix(&mix_path, DEFAULT_MEMORY_BUDGET_BYTES / 2).expect("mix");
                (m, r.join().expect("reference thread"))
            });
            let (source, mp, _) = loaded;
            let mut sink = CollectSink::default();
            master_stream(&source, &mp, &rp, &MasterOptions::default(), &|_| {}, &mut sink).expect("master")
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
