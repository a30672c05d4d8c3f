//! Every bad input or output makes `refmaster` print exactly one line on stderr,
//! `refmaster: error: <file>: <problem>`, naming the file and the problem, and exit with status 1
//! (never a panic, whose status is 101, nor a signal). Failed runs leave no temporary
//! `.refmaster-*.part` files in the output folder and never touch their inputs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ffmpeg, in_dir, kellet_pink, run_ffmpeg, run_refmaster, sine, temp_dir, write_wav_f32, write_wav_i16};

const RATE: u32 = 44_100;

/// A 3 s stereo 16-bit WAV of pink noise at −20 dBFS RMS: a valid, non-silent input.
fn valid_wav(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let path = in_dir(dir, name);
    let n = 3 * RATE as usize;
    write_wav_i16(&path, RATE, &[kellet_pink(1, n, -20.0), kellet_pink(2, n, -20.0)]);
    path
}

/// A valid 5 s stereo reference (pink noise at −14 dBFS RMS).
fn reference(dir: &tempfile::TempDir) -> PathBuf {
    let path = in_dir(dir, "reference.wav");
    let n = 5 * RATE as usize;
    write_wav_i16(&path, RATE, &[kellet_pink(3, n, -14.0), kellet_pink(4, n, -14.0)]);
    path
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean failure: exit status 1, one stderr line `refmaster: error: ...` containing
/// `names` (the file), and at least one of `problem` (case-insensitive). Returns the line.
fn assert_fails_cleanly(out: &Output, names: &str, problem: &[&str]) -> String {
    let stderr = stderr_of(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit status 1 (a clean error), got {:?}; stderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line on stderr, got {}:\n{stderr}", lines.len());
    let line = lines[0];
    assert!(line.starts_with("refmaster: error: "), "stderr line lacks the `refmaster: error: ` prefix: {line}");
    assert!(line.contains(names), "error line does not name `{names}`: {line}");
    let lower = line.to_lowercase();
    assert!(
        problem.iter().any(|p| lower.contains(&p.to_lowercase())),
        "error line does not say the problem (expected one of {problem:?}): {line}"
    );
    line.to_string()
}

/// Asserts no `.refmaster-*.part` temporary file was left in `dir`.
fn assert_no_stray_part_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let stray: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".refmaster-") && n.ends_with(".part"))
        .collect();
    assert!(stray.is_empty(), "temporary files left behind in {}: {stray:?}", dir.display());
}

/// `refmaster analyze --json FILE`.
fn analyze(path: &Path) -> Output {
    run_refmaster([Path::new("analyze"), Path::new("--json"), path])
}

/// `refmaster MIX --ref REF -o OUT --quiet`.
fn master(mix: &Path, reference: &Path, out: &Path) -> Output {
    run_refmaster([mix, Path::new("--ref"), reference, Path::new("-o"), out, Path::new("--quiet")])
}

/// The file name of `p`, as the error line shows it (the tests pass absolute paths).
fn name(p: &Path) -> String {
    p.display().to_string()
}

// ---- unreadable inputs ----------------------------------------------------------------------

#[test]
fn missing_file_is_named_with_no_such_file() {
    let dir = temp_dir();
    let path = in_dir(&dir, "does-not-exist.wav");
    assert_fails_cleanly(&analyze(&path), &name(&path), &["no such file", "not found", "does not exist"]);
}

#[test]
fn directory_given_as_input_is_refused_as_a_directory() {
    let dir = temp_dir();
    let path = in_dir(&dir, "folder.wav");
    fs::create_dir(&path).unwrap();
    assert_fails_cleanly(&analyze(&path), &name(&path), &["directory", "folder"]);
}

#[test]
fn empty_file_is_refused_as_empty() {
    let dir = temp_dir();
    let path = in_dir(&dir, "empty.wav");
    fs::write(&path, b"").unwrap();
    assert_fails_cleanly(&analyze(&path), &name(&path), &["empty", "0 bytes"]);
}

#[test]
fn wav_cut_in_half_is_refused_as_truncated() {
    let dir = temp_dir();
    let full = valid_wav(&dir, "full.wav");
    let bytes = fs::read(&full).unwrap();
    let path = in_dir(&dir, "half.wav");
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_cleanly(&analyze(&path), &name(&path), &["truncated"]);
}

#[test]
fn flac_cut_in_half_is_refused_as_truncated() {
    let dir = temp_dir();
    let wav = valid_wav(&dir, "full.wav");
    let flac = in_dir(&dir, "full.flac");
    run_ffmpeg(ffmpeg().args(["-v", "error", "-i"]).arg(&wav).args(["-c:a", "flac"]).arg(&flac));
    let bytes = fs::read(&flac).unwrap();
    let path = in_dir(&dir, "half.flac");
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_cleanly(&analyze(&path), &name(&path), &["truncated", "corrupt", "end of file"]);
}

#[test]
fn random_bytes_named_wav_are_refused_as_unreadable() {
    let dir = temp_dir();
    let path = in_dir(&dir, "noise.wav");
    let mut rng = common::Rng::new(7);
    let bytes: Vec<u8> = (0..100_000).map(|_| rng.next_u64() as u8).collect();
    fs::write(&path, bytes).unwrap();
    assert_fails_cleanly(&analyze(&path), &name(&path), &["not a readable audio file", "unsupported", "corrupt"]);
}

#[test]
fn text_file_is_refused_as_not_audio() {
    let dir = temp_dir();
    let path = in_dir(&dir, "notes.txt");
    fs::write(&path, "this is not audio\n").unwrap();
    assert_fails_cleanly(&analyze(&path), &name(&path), &["not a readable audio file", "unsupported"]);
}

#[test]
fn png_renamed_mp3_is_refused_as_not_audio() {
    let dir = temp_dir();
    let path = in_dir(&dir, "picture.mp3");
    // A PNG signature and IHDR chunk, then zeros: a real image header, no audio anywhere.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x02\0\0\0\x90\x91\x68\x36".to_vec();
    png.resize(4096, 0);
    fs::write(&path, png).unwrap();
    assert_fails_cleanly(&analyze(&path), &name(&path), &["not a readable audio file", "unsupported", "corrupt"]);
}

#[test]
fn nan_samples_in_a_float_wav_are_refused_with_their_count_and_position() {
    let dir = temp_dir();
    let path = in_dir(&dir, "nan.wav");
    let mut l = sine(RATE, 1000.0, -20.0, 0.0, 2 * RATE as usize);
    let mut r = l.clone();
    // Three non-finite samples, the first at frame 22050 (0.500 s).
    l[22_050] = f32::NAN;
    r[22_050] = f32::NAN;
    r[30_000] = f32::INFINITY;
    write_wav_f32(&path, RATE, &[l, r]);
    let line = assert_fails_cleanly(&analyze(&path), &name(&path), &["nan"]);
    assert!(line.contains("3 NaN"), "error should count the 3 non-finite samples: {line}");
    assert!(line.contains("22050") || line.contains("0.500 s"), "error should give the first position: {line}");
    // Mastering decodes the same way and refuses the same way.
    let out = in_dir(&dir, "out.wav");
    let line = assert_fails_cleanly(&master(&path, &reference(&dir), &out), &name(&path), &["nan"]);
    assert!(line.contains("3 NaN"), "{line}");
    assert!(!out.exists(), "no output may be written for a refused mix");
    assert_no_stray_part_files(dir.path());
}

// ---- silence, very short and multichannel files ----------------------------------------------

#[test]
fn digital_silence_analyses_to_null_loudness_without_crashing() {
    let dir = temp_dir();
    let path = in_dir(&dir, "silence.wav");
    let n = 5 * RATE as usize;
    write_wav_i16(&path, RATE, &[vec![0.0; n], vec![0.0; n]]);
    let out = analyze(&path);
    assert!(out.status.success(), "analyzing silence should succeed: {}", stderr_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON for silence");
    for key in ["integrated_lufs", "true_peak_dbtp", "sample_peak_dbfs"] {
        assert!(
            v["loudness"][key].is_null(),
            "loudness.{key} of silence should be null (-inf), got {}",
            v["loudness"][key]
        );
    }
}

#[test]
fn mastering_digital_silence_fails_with_a_clear_line() {
    let dir = temp_dir();
    let path = in_dir(&dir, "silence.wav");
    let n = 5 * RATE as usize;
    write_wav_i16(&path, RATE, &[vec![0.0; n], vec![0.0; n]]);
    let out = in_dir(&dir, "out.wav");
    assert_fails_cleanly(&master(&path, &reference(&dir), &out), &name(&path), &["silence", "silent"]);
    assert!(!out.exists());
    assert_no_stray_part_files(dir.path());
}

#[test]
fn silent_reference_fails_with_a_clear_line() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let silent = in_dir(&dir, "silent-ref.wav");
    let n = 5 * RATE as usize;
    write_wav_i16(&silent, RATE, &[vec![0.0; n], vec![0.0; n]]);
    let out = in_dir(&dir, "out.wav");
    assert_fails_cleanly(&master(&mix, &silent, &out), &name(&silent), &["silence", "silent"]);
    assert!(!out.exists());
    assert_no_stray_part_files(dir.path());
}

#[test]
fn tenth_of_a_second_file_is_analysed_or_refused_cleanly_never_crashing() {
    let dir = temp_dir();
    let path = in_dir(&dir, "blip.wav");
    let x = sine(RATE, 1000.0, -20.0, 0.0, RATE as usize / 10);
    write_wav_i16(&path, RATE, &[x.clone(), x]);
    let out = analyze(&path);
    if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        assert!((v["duration_s"].as_f64().unwrap() - 0.1).abs() < 1e-3, "duration_s: {}", v["duration_s"]);
    } else {
        assert_fails_cleanly(&out, &name(&path), &["short"]);
    }
}

#[test]
fn mastering_a_tenth_of_a_second_mix_never_crashes_nor_calls_it_silence() {
    let dir = temp_dir();
    let path = in_dir(&dir, "blip.wav");
    let x = sine(RATE, 1000.0, -20.0, 0.0, RATE as usize / 10);
    write_wav_i16(&path, RATE, &[x.clone(), x]);
    let out_path = in_dir(&dir, "out.wav");
    let out = master(&path, &reference(&dir), &out_path);
    if !out.status.success() {
        let line = assert_fails_cleanly(&out, &name(&path), &["short"]);
        assert!(!line.contains("silence"), "a 0.1 s sine at -20 dBFS is not digital silence: {line}");
    }
    assert_no_stray_part_files(dir.path());
}

#[test]
fn six_channel_file_analyses_as_six_channels() {
    let dir = temp_dir();
    let path = in_dir(&dir, "surround.wav");
    let n = 3 * RATE as usize;
    let channels: Vec<Vec<f32>> = (0..6).map(|c| kellet_pink(10 + c, n, -26.0)).collect();
    write_wav_i16(&path, RATE, &channels);
    let out = analyze(&path);
    assert!(out.status.success(), "analyzing 6 channels should work: {}", stderr_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["channels"], 6, "reported channel count");
    assert!(v["loudness"]["integrated_lufs"].as_f64().is_some(), "6-channel loudness should be a number");
}

#[test]
fn mastering_a_six_channel_mix_says_it_handles_mono_and_stereo_only() {
    let dir = temp_dir();
    let path = in_dir(&dir, "surround.wav");
    let n = 3 * RATE as usize;
    let channels: Vec<Vec<f32>> = (0..6).map(|c| kellet_pink(10 + c, n, -26.0)).collect();
    write_wav_i16(&path, RATE, &channels);
    let out = in_dir(&dir, "out.wav");
    let line = assert_fails_cleanly(&master(&path, &reference(&dir), &out), &name(&path), &["stereo"]);
    assert!(line.contains('6'), "error should say how many channels the mix has: {line}");
    assert!(!out.exists());
    assert_no_stray_part_files(dir.path());
}

// ---- bad output paths -----------------------------------------------------------------------

#[test]
fn output_in_a_missing_folder_is_refused_naming_the_output() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let out = dir.path().join("no-such-folder").join("out.wav");
    assert_fails_cleanly(&master(&mix, &reference(&dir), &out), &name(&out), &["does not exist", "no such"]);
    assert!(!out.exists());
    assert_no_stray_part_files(dir.path());
}

#[test]
fn analyze_json_output_in_a_missing_folder_is_refused_naming_the_output() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let out = dir.path().join("no-such-folder").join("profile.json");
    let res = run_refmaster([Path::new("analyze"), &mix, Path::new("-o"), &out]);
    assert_fails_cleanly(&res, &name(&out), &["does not exist", "no such"]);
    assert_no_stray_part_files(dir.path());
}

#[test]
fn output_whose_parent_is_a_regular_file_is_refused_naming_the_output() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let file = in_dir(&dir, "plain-file");
    fs::write(&file, "x").unwrap();
    let out = file.join("out.wav");
    assert_fails_cleanly(
        &master(&mix, &reference(&dir), &out),
        &name(&out),
        &["not a folder", "not a directory", "does not exist"],
    );
    assert_eq!(fs::read(&file).unwrap(), b"x", "the regular file must be untouched");
    assert_no_stray_part_files(dir.path());
}

#[test]
fn output_in_a_read_only_folder_is_refused_and_leaves_nothing_behind() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let reference = reference(&dir);
    let ro = in_dir(&dir, "read-only");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    // Root (as in CI) ignores permission bits, so chmod 555 stops nothing. Detect that by trying
    // to create a file; if it works, aim at /sys instead: sysfs refuses new files to everyone,
    // root included (EACCES, or EROFS where /sys is mounted read-only), and nothing can be left
    // behind there.
    let probe = ro.join("probe");
    let privileged = fs::write(&probe, b"").is_ok();
    let _ = fs::remove_file(&probe);
    let (folder, out) = if privileged {
        (PathBuf::from("/sys"), PathBuf::from(format!("/sys/refmaster-test-{}.wav", std::process::id())))
    } else {
        (ro.clone(), ro.join("out.wav"))
    };
    let res = master(&mix, &reference, &out);
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    assert_fails_cleanly(&res, &name(&out), &["permission denied", "read-only", "cannot create"]);
    assert!(!out.exists());
    assert_no_stray_part_files(&folder);
}

#[test]
fn output_equal_to_the_mix_is_refused_and_the_mix_stays_byte_identical() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let before = fs::read(&mix).unwrap();
    let res = master(&mix, &reference(&dir), &mix);
    assert_fails_cleanly(&res, &name(&mix), &["input"]);
    assert!(fs::read(&mix).unwrap() == before, "the mix was modified");
    assert_no_stray_part_files(dir.path());
}

#[test]
fn output_equal_to_the_mix_by_another_spelling_is_refused() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let before = fs::read(&mix).unwrap();
    // dir/sub/../mix.wav is the mix under another name.
    fs::create_dir(in_dir(&dir, "sub")).unwrap();
    let alias = dir.path().join("sub").join("..").join("mix.wav");
    let res = master(&mix, &reference(&dir), &alias);
    assert_fails_cleanly(&res, &name(&alias), &["input"]);
    assert!(fs::read(&mix).unwrap() == before, "the mix was modified");
    assert_no_stray_part_files(dir.path());
}

#[test]
fn output_equal_to_the_reference_is_refused_and_the_reference_stays_byte_identical() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let reference = reference(&dir);
    let before = fs::read(&reference).unwrap();
    let res = master(&mix, &reference, &reference);
    assert_fails_cleanly(&res, &name(&reference), &["input"]);
    assert!(fs::read(&reference).unwrap() == before, "the reference was modified");
    assert_no_stray_part_files(dir.path());
}

#[test]
fn analyze_json_output_equal_to_its_input_is_refused() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let before = fs::read(&mix).unwrap();
    let res = run_refmaster([Path::new("analyze"), &mix, Path::new("-o"), &mix]);
    assert_fails_cleanly(&res, &name(&mix), &["input"]);
    assert!(fs::read(&mix).unwrap() == before, "the input was modified");
}

#[test]
fn output_that_is_a_directory_is_refused() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let out = in_dir(&dir, "out.wav");
    fs::create_dir(&out).unwrap();
    assert_fails_cleanly(&master(&mix, &reference(&dir), &out), &name(&out), &["directory", "folder"]);
    assert!(out.is_dir());
    assert_no_stray_part_files(dir.path());
}

// ---- bad settings files ---------------------------------------------------------------------

#[test]
fn apply_with_a_missing_settings_file_names_it() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let settings = in_dir(&dir, "missing.json");
    let out = in_dir(&dir, "out.wav");
    let res = run_refmaster([Path::new("apply"), &mix, Path::new("--settings"), &settings, Path::new("-o"), &out]);
    assert_fails_cleanly(&res, &name(&settings), &["no such file", "cannot read", "not found"]);
    assert!(!out.exists());
}

#[test]
fn apply_with_a_settings_file_that_is_not_json_names_it() {
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let settings = in_dir(&dir, "broken.json");
    fs::write(&settings, "{ \"version\": ").unwrap();
    let out = in_dir(&dir, "out.wav");
    let res = run_refmaster([Path::new("apply"), &mix, Path::new("--settings"), &settings, Path::new("-o"), &out]);
    assert_fails_cleanly(&res, &name(&settings), &["json"]);
    assert!(!out.exists());
    assert_no_stray_part_files(dir.path());
}

// ---- what a successful run leaves -----------------------------------------------------------

#[test]
fn written_master_gets_ordinary_file_permissions_not_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let mix = valid_wav(&dir, "mix.wav");
    let out = in_dir(&dir, "out.wav");
    let res = master(&mix, &reference(&dir), &out);
    assert!(res.status.success(), "mastering failed: {}", stderr_of(&res));
    // What a plain new file gets here (0666 less this process's umask), e.g. 0644.
    let plain = in_dir(&dir, "plain");
    fs::write(&plain, b"").unwrap();
    let expected = fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
    let got = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(got, expected, "output mode {got:o}, a new file here gets {expected:o}");
    assert_no_stray_part_files(dir.path());
}

#[test]
fn output_piped_into_a_reader_that_quits_early_ends_quietly() {
    // `refmaster analyze FILE | head -1`: the reader closes the pipe after one line.
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join("demo_mix.flac");
    let mut child = common::refmaster()
        .arg("analyze")
        .arg(&demo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start refmaster");
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "a closed pipe made refmaster panic: {stderr}");
}
