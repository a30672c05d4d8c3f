//! `refmaster analyze --json` measures loudness as ffmpeg's `ebur128=peak=true` filter does, and
//! its true peak (refmaster's own detector) as the `ebur128` crate's BS.1770 meter does.
//!
//! Tolerances (the acceptance figures): integrated within 0.1 LU, loudness range within
//! 0.3 LU, true peak within 0.2 dB. ffmpeg prints its summary to one decimal, so up to 0.05 of each
//! tolerance is ffmpeg's own rounding; the rest covers real differences between the meters:
//! ffmpeg resamples everything to 48 kHz before measuring and finds true peak at 192 kHz, while
//! refmaster measures at the file's rate with 4× oversampling (BS.1770-4 allows either).
//!
//! Synthetic cases follow EBU Tech 3341 (loudness, true peak) and Tech 3342 (loudness range).
//! Real music: the two shipped demo files, and 60 s excerpts of Oggs from the corpus that
//! `.ci/fetch-corpus` downloads (directory `$REFMASTER_CORPUS_DIR`, default
//! `$HOME/.cache/refmaster-corpus/x`).
//!
//! Run with `--nocapture` to see every case's figures side by side.

mod common;

use std::path::{Path, PathBuf};

use common::{
    fade_in_out, ffmpeg, ffmpeg_ebur128, in_dir, kellet_pink, our_loudness, run_ffmpeg, sine, stepped_sine, temp_dir,
    write_wav_f32, FfmpegLoudness, OurLoudness,
};

const INTEGRATED_TOLERANCE_LU: f64 = 0.1;
const LRA_TOLERANCE_LU: f64 = 0.3;
const TRUE_PEAK_TOLERANCE_DB: f64 = 0.2;

/// Measures `path` with both tools, prints the figures and asserts they agree.
fn assert_agrees_with_ffmpeg(label: &str, path: &Path) -> (OurLoudness, FfmpegLoudness) {
    let ours = our_loudness(path);
    let theirs = ffmpeg_ebur128(path);
    let di = ours.integrated_lufs - theirs.integrated_lufs;
    let dl = ours.lra_lu - theirs.lra_lu;
    let dt = ours.true_peak_dbtp - theirs.true_peak_dbtp;
    println!(
        "{label:<34} I {:>8.3} vs {:>6.1} ({di:+.3}) | LRA {:>6.3} vs {:>5.1} ({dl:+.3}) | TP {:>7.3} vs {:>5.1} ({dt:+.3})",
        ours.integrated_lufs,
        theirs.integrated_lufs,
        ours.lra_lu,
        theirs.lra_lu,
        ours.true_peak_dbtp,
        theirs.true_peak_dbtp,
    );
    assert!(
        di.abs() <= INTEGRATED_TOLERANCE_LU,
        "{label}: integrated loudness {:.3} LUFS, ffmpeg says {:.1} LUFS (tolerance {INTEGRATED_TOLERANCE_LU} LU)",
        ours.integrated_lufs,
        theirs.integrated_lufs
    );
    assert!(
        dl.abs() <= LRA_TOLERANCE_LU,
        "{label}: loudness range {:.3} LU, ffmpeg says {:.1} LU (tolerance {LRA_TOLERANCE_LU} LU)",
        ours.lra_lu,
        theirs.lra_lu
    );
    assert!(
        dt.abs() <= TRUE_PEAK_TOLERANCE_DB,
        "{label}: true peak {:.3} dBTP, ffmpeg says {:.1} dBTP (tolerance {TRUE_PEAK_TOLERANCE_DB} dB)",
        ours.true_peak_dbtp,
        theirs.true_peak_dbtp
    );
    // The same samples through the `ebur128` crate's BS.1770 true-peak meter (libebur128's 4x
    // interpolator): refmaster's detector, which the analysis now reports, is held to it with
    // the same tolerance as to ffmpeg.
    let (audio, _) = refmaster::decode::decode_file(path).expect("the test file decodes");
    let crate_tp = refmaster::analysis::loudness::true_peak_dbtp(&audio);
    let dc = ours.true_peak_dbtp - crate_tp;
    println!("{label:<34} TP {:>7.3} vs the ebur128 crate's {crate_tp:>7.3} ({dc:+.3})", ours.true_peak_dbtp);
    assert!(
        dc.abs() <= TRUE_PEAK_TOLERANCE_DB,
        "{label}: true peak {:.3} dBTP, the ebur128 crate says {crate_tp:.3} dBTP (tolerance {TRUE_PEAK_TOLERANCE_DB} dB)",
        ours.true_peak_dbtp
    );
    (ours, theirs)
}

/// Writes the same signal into both channels of a 32-bit float stereo WAV.
fn write_dual(path: &Path, rate: u32, x: Vec<f32>) {
    write_wav_f32(path, rate, &[x.clone(), x]);
}

// ---- EBU Tech 3341 / 3342 synthetic signals -------------------------------------------------

#[test]
fn stereo_1khz_sine_at_minus_23_dbfs_reads_minus_23_lufs_like_ffmpeg() {
    // Tech 3341 test 1: a 1 kHz sine at −23 dBFS in both channels is −23.0 LUFS (±0.1).
    let dir = temp_dir();
    let path = in_dir(&dir, "sine_-23.wav");
    write_dual(&path, 48_000, sine(48_000, 1000.0, -23.0, 0.0, 20 * 48_000));
    let (ours, _) = assert_agrees_with_ffmpeg("1 kHz sine -23 dBFS", &path);
    assert!((ours.integrated_lufs + 23.0).abs() <= 0.1, "expected -23.0 LUFS, got {}", ours.integrated_lufs);
}

#[test]
fn stereo_1khz_sine_at_minus_33_dbfs_reads_minus_33_lufs_like_ffmpeg() {
    // Tech 3341 test 2: the same at −33 dBFS is −33.0 LUFS (±0.1).
    let dir = temp_dir();
    let path = in_dir(&dir, "sine_-33.wav");
    write_dual(&path, 48_000, sine(48_000, 1000.0, -33.0, 0.0, 20 * 48_000));
    let (ours, _) = assert_agrees_with_ffmpeg("1 kHz sine -33 dBFS", &path);
    assert!((ours.integrated_lufs + 33.0).abs() <= 0.1, "expected -33.0 LUFS, got {}", ours.integrated_lufs);
}

#[test]
fn gated_steps_minus_36_minus_23_minus_36_read_minus_23_lufs_like_ffmpeg() {
    // Tech 3341 test 3: 10 s at −36, 60 s at −23, 10 s at −36 dBFS. The relative gate (−33 LUFS)
    // drops the −36 parts, so the programme reads −23.0 LUFS (±0.1).
    let dir = temp_dir();
    let path = in_dir(&dir, "tech3341_3.wav");
    write_dual(&path, 48_000, stepped_sine(48_000, 1000.0, &[(-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0)]));
    let (ours, _) = assert_agrees_with_ffmpeg("3341 #3 -36/-23/-36 (10/60/10 s)", &path);
    assert!((ours.integrated_lufs + 23.0).abs() <= 0.1, "expected -23.0 LUFS, got {}", ours.integrated_lufs);
}

#[test]
fn equal_thirds_minus_36_minus_23_minus_36_give_the_same_loudness_range_as_ffmpeg() {
    // 20 s at −36, 20 s at −23, 20 s at −36 dBFS: here the −36 parts pass the relative gate, so
    // integrated loudness and the 13 LU loudness range both depend on the gating being right.
    let dir = temp_dir();
    let path = in_dir(&dir, "thirds.wav");
    write_dual(&path, 48_000, stepped_sine(48_000, 1000.0, &[(-36.0, 20.0), (-23.0, 20.0), (-36.0, 20.0)]));
    let (ours, _) = assert_agrees_with_ffmpeg("-36/-23/-36 (20/20/20 s)", &path);
    assert!((ours.lra_lu - 13.0).abs() <= 1.0, "expected an LRA near 13 LU, got {}", ours.lra_lu);
}

#[test]
fn tech3342_case1_steps_minus_20_then_minus_30_give_10_lu_range_like_ffmpeg() {
    // Tech 3342 test 1: 20 s at −20 dBFS then 20 s at −30 dBFS is an LRA of 10 LU (±1).
    let dir = temp_dir();
    let path = in_dir(&dir, "tech3342_1.wav");
    write_dual(&path, 48_000, stepped_sine(48_000, 1000.0, &[(-20.0, 20.0), (-30.0, 20.0)]));
    let (ours, _) = assert_agrees_with_ffmpeg("3342 #1 -20/-30 (20/20 s)", &path);
    assert!((ours.lra_lu - 10.0).abs() <= 1.0, "expected LRA 10 LU, got {}", ours.lra_lu);
}

#[test]
fn tech3342_case3_steps_minus_40_then_minus_20_give_20_lu_range_like_ffmpeg() {
    // Tech 3342 test 3: 20 s at −40 dBFS then 20 s at −20 dBFS is an LRA of 20 LU (±1).
    let dir = temp_dir();
    let path = in_dir(&dir, "tech3342_3.wav");
    write_dual(&path, 48_000, stepped_sine(48_000, 1000.0, &[(-40.0, 20.0), (-20.0, 20.0)]));
    let (ours, _) = assert_agrees_with_ffmpeg("3342 #3 -40/-20 (20/20 s)", &path);
    assert!((ours.lra_lu - 20.0).abs() <= 1.0, "expected LRA 20 LU, got {}", ours.lra_lu);
}

/// A 48 kHz stereo sine at fs/4, peak amplitude 0.5 (−6.02 dBFS), starting at `phase_deg`
/// (Tech 3341 tests 15-18). It fades in and out over 100 ms: ffmpeg's 192 kHz resampler rings on
/// a hard onset and reads up to 0.6 dB high (−5.4 dBTP for the 45° case without fades), which
/// would measure the start transient rather than the sine.
fn quarter_rate_sine_true_peak_case(phase_deg: f64) {
    let rate = 48_000;
    let dir = temp_dir();
    let path = in_dir(&dir, "fs4.wav");
    let mut x = sine(rate, f64::from(rate) / 4.0, -6.0206, phase_deg.to_radians(), 10 * rate as usize);
    fade_in_out(&mut x, rate, 0.1);
    // The samples land at phase_deg + k·90°, so the sample peak is 0.5·max(|sin|, |cos|) of the phase.
    let p = phase_deg.to_radians();
    let expected_sample_peak_db = 20.0 * (0.5 * p.sin().abs().max(p.cos().abs())).log10();
    write_dual(&path, rate, x);
    let (ours, _) = assert_agrees_with_ffmpeg(&format!("fs/4 sine, {phase_deg} deg phase"), &path);
    // Tech 3341 tests 15-18: the true peak is the sine's own peak, −6.0 dBTP (+0.2/−0.4 dB).
    assert!(
        ours.true_peak_dbtp >= -6.02 - 0.4 && ours.true_peak_dbtp <= -6.02 + 0.2,
        "expected a true peak of -6.0 dBTP, got {}",
        ours.true_peak_dbtp
    );
    assert!(
        (ours.sample_peak_dbfs - expected_sample_peak_db).abs() < 0.01,
        "sample peak {} dBFS, expected {expected_sample_peak_db:.3}",
        ours.sample_peak_dbfs
    );
    // The point of the case: the true peak sits above the sample peak by what the phase hides.
    let hidden = -6.0206 - expected_sample_peak_db;
    assert!(
        ours.true_peak_dbtp - ours.sample_peak_dbfs > hidden - 0.4,
        "true peak {} should exceed sample peak {} by about {hidden:.2} dB",
        ours.true_peak_dbtp,
        ours.sample_peak_dbfs
    );
}

#[test]
fn quarter_rate_sine_at_45_degrees_has_true_peak_3_db_over_its_samples_like_ffmpeg() {
    quarter_rate_sine_true_peak_case(45.0);
}

#[test]
fn quarter_rate_sine_at_60_degrees_has_true_peak_over_its_samples_like_ffmpeg() {
    quarter_rate_sine_true_peak_case(60.0);
}

#[test]
fn stereo_pink_noise_at_44k1_agrees_with_ffmpeg() {
    // Decorrelated channels (different seeds), 30 s at −20 dBFS RMS, at 44.1 kHz: ffmpeg
    // resamples to 48 kHz, refmaster does not, and they must still agree.
    let dir = temp_dir();
    let path = in_dir(&dir, "pink.wav");
    let n = 30 * 44_100;
    write_wav_f32(&path, 44_100, &[kellet_pink(1, n, -20.0), kellet_pink(2, n, -20.0)]);
    assert_agrees_with_ffmpeg("pink noise stereo 44.1k", &path);
}

#[test]
fn mono_pink_noise_agrees_with_ffmpeg() {
    // One channel: both meters weight it as a single front channel (no dual-mono +3 dB).
    let dir = temp_dir();
    let path = in_dir(&dir, "pink_mono.wav");
    write_wav_f32(&path, 48_000, &[kellet_pink(3, 20 * 48_000, -18.0)]);
    assert_agrees_with_ffmpeg("pink noise mono 48k", &path);
}

// ---- real music -----------------------------------------------------------------------------

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(name)
}

#[test]
fn shipped_demo_mix_flac_agrees_with_ffmpeg() {
    assert_agrees_with_ffmpeg("references/demo_mix.flac", &shipped("demo_mix.flac"));
}

#[test]
fn shipped_demo_reference_ogg_agrees_with_ffmpeg() {
    // Decoded separately by each tool (symphonia vs ffmpeg's Vorbis decoder), so this also
    // checks the decode.
    assert_agrees_with_ffmpeg("references/demo_ref.ogg", &shipped("demo_ref.ogg"));
}

#[test]
fn decoded_ogg_keeps_its_samples_above_full_scale_like_ffmpeg() {
    // A loud lossy master decodes to samples beyond ±1.0 (demo_ref.ogg: +0.6 dBFS). They are
    // part of the signal: clipping them at decode under-reads the true peak and distorts the
    // reference. ffmpeg prints its sample peak to 0.1 dB, hence 0.05 dB of rounding + 0.05 dB.
    let path = shipped("demo_ref.ogg");
    let ours = our_loudness(&path);
    let theirs = ffmpeg_ebur128(&path).sample_peak_dbfs;
    println!("demo_ref.ogg sample peak: ours {:.3} dBFS, ffmpeg {theirs:.1} dBFS", ours.sample_peak_dbfs);
    assert!(theirs > 0.0, "the shipped reference should peak above full scale (ffmpeg: {theirs} dBFS)");
    assert!(
        (ours.sample_peak_dbfs - theirs).abs() <= 0.1,
        "sample peak {:.3} dBFS where ffmpeg decodes {theirs:.1} dBFS: the decoder clips samples at full scale",
        ours.sample_peak_dbfs
    );
}

/// The corpus folder, failing (not skipping) with a hint when it is missing.
fn corpus_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("REFMASTER_CORPUS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME is not set; set REFMASTER_CORPUS_DIR");
        PathBuf::from(home).join(".cache/refmaster-corpus/x")
    });
    assert!(
        dir.is_dir(),
        "corpus folder {} is missing: run `.ci/fetch-corpus` (or set REFMASTER_CORPUS_DIR)",
        dir.display()
    );
    let path = dir.join(name);
    assert!(path.is_file(), "corpus file {} is missing: run `.ci/fetch-corpus`", path.display());
    path
}

/// Cuts `seconds` of `name` from `start_s` on into a 32-bit float WAV, so both tools measure the
/// same samples and the test stays fast.
fn corpus_excerpt_agrees_with_ffmpeg(name: &str, start_s: f64, seconds: f64) {
    let src = corpus_file(name);
    let dir = temp_dir();
    let wav = in_dir(&dir, &format!("{name}.wav"));
    run_ffmpeg(
        ffmpeg()
            .args(["-v", "error", "-ss", &start_s.to_string(), "-t", &seconds.to_string(), "-i"])
            .arg(&src)
            .args(["-map_metadata", "-1", "-c:a", "pcm_f32le"])
            .arg(&wav),
    );
    assert_agrees_with_ffmpeg(&format!("{name} ({seconds} s from {start_s} s)"), &wav);
}

#[test]
fn corpus_northerners_orchestral_excerpt_agrees_with_ffmpeg() {
    corpus_excerpt_agrees_with_ffmpeg("northerners.ogg", 30.0, 60.0);
}

#[test]
fn corpus_quite_electronic_excerpt_agrees_with_ffmpeg() {
    corpus_excerpt_agrees_with_ffmpeg("Quite.ogg", 30.0, 60.0);
}

#[test]
fn corpus_nebula_48k_ambient_excerpt_agrees_with_ffmpeg() {
    corpus_excerpt_agrees_with_ffmpeg("Nebula.ogg", 60.0, 60.0);
}

#[test]
fn corpus_traveling_minstrels_folk_excerpt_agrees_with_ffmpeg() {
    corpus_excerpt_agrees_with_ffmpeg("traveling_minstrels.ogg", 30.0, 60.0);
}
