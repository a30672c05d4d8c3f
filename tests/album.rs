//! Specifications of album and batch mastering: relative loudness kept, ceiling held, reruns
//! skip finished songs.

mod common;

use std::path::{Path, PathBuf};

use common::{ffmpeg_ebur128, in_dir, run_refmaster, temp_dir, write_wav_f32};
use refmaster::decode::decode_file;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(name)
}

/// Three "songs": the demo mix at 0, -4 and -9 dB (a single, an album track, a ballad).
fn songs(dir: &tempfile::TempDir) -> Vec<PathBuf> {
    let (mix, _) = decode_file(&shipped("demo_mix.flac")).expect("demo mix decodes");
    [("single", 0.0), ("track", -4.0), ("ballad", -9.0)]
        .iter()
        .map(|(name, db)| {
            let g = 10f32.powf(*db / 20.0);
            let ch: Vec<Vec<f32>> = mix.channels.iter().map(|c| c.iter().map(|x| x * g).collect()).collect();
            let p = in_dir(dir, &format!("{name}.wav"));
            write_wav_f32(&p, mix.sample_rate_hz, &ch);
            p
        })
        .collect()
}

fn run(sub: &str, songs: &[PathBuf], out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<std::ffi::OsString> = vec![sub.into()];
    args.extend(songs.iter().map(|s| s.clone().into_os_string()));
    args.extend(["--ref".into(), shipped("demo_ref.ogg").into_os_string(), "--out-dir".into(), out.into()]);
    args.extend(extra.iter().map(|e| (*e).into()));
    run_refmaster(args)
}

#[test]
fn album_keeps_the_songs_loudness_differences_under_the_ceiling_and_reruns_skip() {
    let dir = temp_dir();
    let tracks = songs(&dir);
    let out = dir.path().join("masters");
    std::fs::create_dir(&out).expect("out dir");
    let o = run("album", &tracks, &out, &["--lufs", "-14"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let masters: Vec<PathBuf> = tracks.iter().map(|t| refmaster::album::output_path(t, &out)).collect();
    let mix_l: Vec<f64> = tracks.iter().map(|t| ffmpeg_ebur128(t).integrated_lufs).collect();
    let master_l: Vec<f64> = masters.iter().map(|m| ffmpeg_ebur128(m).integrated_lufs).collect();
    for i in 1..3 {
        let d_mix = mix_l[i] - mix_l[0];
        let d_master = master_l[i] - master_l[0];
        assert!((d_mix - d_master).abs() <= 1.0, "song {i}: mix difference {d_mix:.1} LU, master {d_master:.1} LU");
    }
    assert!((master_l[0] + 14.0).abs() <= 0.3, "the single is at {:.1} LUFS", master_l[0]);
    for m in &masters {
        assert!(ffmpeg_ebur128(m).true_peak_dbtp <= -1.0, "{} over the ceiling", m.display());
    }
    let before: Vec<Vec<u8>> = masters.iter().map(|m| std::fs::read(m).expect("read")).collect();
    let o = run("album", &tracks, &out, &["--lufs", "-14"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("skipped").count(), 6, "each song reported skipped twice (line and table):\n{text}");
    let after: Vec<Vec<u8>> = masters.iter().map(|m| std::fs::read(m).expect("read")).collect();
    assert!(before == after, "a rerun changed finished masters");
}

#[test]
fn batch_masters_every_song_to_the_full_target() {
    let dir = temp_dir();
    let tracks = songs(&dir);
    let out = dir.path().join("masters");
    std::fs::create_dir(&out).expect("out dir");
    let o = run("batch", &tracks[1..], &out, &["--lufs", "-16", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "--quiet printed: {}", String::from_utf8_lossy(&o.stdout));
    for t in &tracks[1..] {
        let l = ffmpeg_ebur128(&refmaster::album::output_path(t, &out)).integrated_lufs;
        assert!((l + 16.0).abs() <= 0.3, "{} at {l:.1} LUFS", t.display());
    }
}
