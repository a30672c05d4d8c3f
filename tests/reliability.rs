//! Nothing lost, whatever is asked: every way a run could destroy a file, crash, or write audio
//! that is silently wrong is refused before any work with one line naming the file or option,
//! exit status 1, and every input and existing file left byte for byte as it was.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{in_dir, kellet_pink, run_refmaster, temp_dir, write_wav_i16};

const RATE: u32 = 44_100;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(name)
}

/// A 3 s stereo 16-bit WAV of pink noise at −20 dBFS RMS.
fn song(path: &Path) -> PathBuf {
    let n = 3 * RATE as usize;
    write_wav_i16(path, RATE, &[kellet_pink(1, n, -20.0), kellet_pink(2, n, -20.0)]);
    path.to_path_buf()
}

/// A 4 s stereo reference (pink noise at −14 dBFS RMS).
fn reference(dir: &tempfile::TempDir) -> PathBuf {
    let path = in_dir(dir, "reference.wav");
    let n = 4 * RATE as usize;
    write_wav_i16(&path, RATE, &[kellet_pink(3, n, -14.0), kellet_pink(4, n, -14.0)]);
    path
}

/// Asserts a clean failure (status 1, one `refmaster: error:` line) that mentions every one of
/// `words`; returns the line.
fn assert_refused(out: &Output, words: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected a clean error (status 1), got {:?}:\n{stderr}", out.status);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{stderr}");
    assert!(lines[0].starts_with("refmaster: error: "), "{stderr}");
    for w in words {
        assert!(lines[0].contains(w), "error line does not mention `{w}`: {}", lines[0]);
    }
    lines[0].to_string()
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    run_refmaster(args.iter().map(|a| a.as_ref()))
}

#[test]
fn learn_refuses_an_output_that_is_a_song_inside_an_input_folder_and_the_song_survives() {
    let dir = temp_dir();
    let lib = in_dir(&dir, "lib");
    fs::create_dir(&lib).expect("mkdir lib");
    let song_path = song(&lib.join("song.wav"));
    let before = fs::read(&song_path).expect("read song");
    let out = run(&[&"learn", &lib, &"-o", &song_path, &"--quiet"]);
    assert_refused(&out, &["song.wav", "input"]);
    assert_eq!(fs::read(&song_path).expect("song still there"), before, "the song was changed");
}

#[test]
fn an_output_naming_a_fifo_or_a_link_to_dev_null_is_refused_and_left_as_it_was() {
    let dir = temp_dir();
    let mix = song(&in_dir(&dir, "mix.wav"));
    let reference = reference(&dir);
    // A FIFO stands for any special file (a device node needs root to make): renaming a finished
    // master over it would replace it with a regular file.
    let fifo = in_dir(&dir, "pipe.wav");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    let out = run(&[&mix, &"--ref", &reference, &"-o", &fifo]);
    assert_refused(&out, &["pipe.wav", "not a regular file"]);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&fifo).expect("still there").file_type().is_fifo(), "the FIFO was replaced");

    let link = in_dir(&dir, "null.wav");
    std::os::unix::fs::symlink("/dev/null", &link).expect("symlink");
    let out = run(&[&mix, &"--ref", &reference, &"-o", &link]);
    assert_refused(&out, &["null.wav", "not a regular file"]);
    assert!(fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "the link was replaced");
    assert!(fs::metadata("/dev/null").expect("/dev/null").file_type().is_char_device());

    let out = run(&[&mix, &"--ref", &reference, &"-o", &in_dir(&dir, "m.wav"), &"--settings", &"/dev/null"]);
    assert_refused(&out, &["/dev/null", "not a regular file"]);
    assert!(!in_dir(&dir, "m.wav").exists(), "the master was written though the run was refused");
}

#[test]
fn two_outputs_of_one_run_naming_one_file_are_refused_before_any_work() {
    let dir = temp_dir();
    let mix = song(&in_dir(&dir, "mix.wav"));
    let reference = reference(&dir);
    let out_wav = in_dir(&dir, "out.wav");
    fs::write(&out_wav, b"an older master the user keeps").expect("write");
    let out = run(&[&mix, &"--ref", &reference, &"-o", &out_wav, &"--settings", &out_wav]);
    assert_refused(&out, &["out.wav", "two outputs", "--settings"]);
    assert_eq!(fs::read(&out_wav).expect("read"), b"an older master the user keeps");

    let html = in_dir(&dir, "r.html");
    let out = run(&[&mix, &"--ref", &reference, &"-o", &out_wav, &"--settings", &html, &"--report", &html]);
    assert_refused(&out, &["r.html", "--settings", "--report"]);
    assert!(!html.exists());

    // An export's file name is also an output: `-o x.wav --export json --settings x.settings.json`.
    let s = in_dir(&dir, "out.settings.json");
    let out = run(&[&mix, &"--ref", &reference, &"-o", &out_wav, &"--settings", &s, &"--export", &"json"]);
    assert_refused(&out, &["out.settings.json", "json export"]);
}

#[test]
fn nan_or_infinite_bounds_are_refused_naming_the_option_not_a_panic() {
    let dir = temp_dir();
    let mix = song(&in_dir(&dir, "mix.wav"));
    let reference = reference(&dir);
    for (flag, value) in [
        ("--max-eq-db", "nan"),
        ("--max-width-db", "nan"),
        ("--max-eq-db", "inf"),
        ("--smoothing", "-5"),
        ("--smoothing", "0"),
        ("--smoothing", "nan"),
        ("--min-plr", "nan"),
        ("--amount", "nan"),
        ("--max-limiting-db", "-inf"),
        ("--lufs", "100"),
        ("--ceiling", "5"),
        ("--memory-budget", "17592186044416"),
    ] {
        let out = run(&[&mix, &"--ref", &reference, &"-o", &in_dir(&dir, "o.wav"), &flag, &value]);
        assert_refused(&out, &[flag]);
    }
}

#[test]
fn album_and_batch_check_their_options_as_the_master_command_does() {
    let dir = temp_dir();
    let mix = song(&in_dir(&dir, "mix.wav"));
    let reference = reference(&dir);
    let out_dir = in_dir(&dir, "masters");
    fs::create_dir(&out_dir).expect("mkdir");
    for cmd in ["album", "batch"] {
        for (flag, value) in [("--lufs", "100"), ("--lufs", "nan"), ("--ceiling", "nan")] {
            let out = run(&[&cmd, &mix, &"--ref", &reference, &"--out-dir", &out_dir, &flag, &value]);
            assert_refused(&out, &[flag]);
        }
    }
    assert_eq!(fs::read_dir(&out_dir).expect("read").count(), 0, "a master was written");
}

#[test]
fn a_targets_model_claiming_an_absurd_size_is_refused_not_allocated() {
    let dir = temp_dir();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.targets.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(model).expect("model")).expect("json");
    v["targets"][0]["size"] = serde_json::json!(1_000_000_000_000_000u64);
    let edited = in_dir(&dir, "huge.targets.json");
    fs::write(&edited, serde_json::to_string(&v).expect("json")).expect("write");
    let mix = song(&in_dir(&dir, "mix.wav"));
    let out = run(&[&"targets", &edited, &"--evaluate", &mix, &"--quiet"]);
    assert_refused(&out, &["huge.targets.json", "size"]);
}

#[test]
fn a_mix_of_nothing_but_dc_is_refused_as_having_no_audible_content() {
    let dir = temp_dir();
    let mix = in_dir(&dir, "dc.wav");
    let n = 3 * RATE as usize;
    write_wav_i16(&mix, RATE, &[vec![0.5; n], vec![0.5; n]]);
    let reference = reference(&dir);
    let out_wav = in_dir(&dir, "o.wav");
    let out = run(&[&mix, &"--ref", &reference, &"-o", &out_wav]);
    assert_refused(&out, &["dc.wav", "no audible content", "DC"]);
    assert!(!out_wav.exists());
}

#[test]
fn a_reference_profile_with_an_impossible_loudness_is_refused_naming_the_field() {
    let dir = temp_dir();
    let reference = reference(&dir);
    let profile = in_dir(&dir, "ref.profile.json");
    let o = run(&[&"analyze", &reference, &"--json", &"-o", &profile, &"--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&profile).expect("read")).expect("json");
    v["loudness"]["integrated_lufs"] = serde_json::json!(1e308);
    fs::write(&profile, serde_json::to_string(&v).expect("json")).expect("write");
    let mix = song(&in_dir(&dir, "mix.wav"));
    let out = run(&[&mix, &"--ref", &profile, &"-o", &in_dir(&dir, "o.wav")]);
    assert_refused(&out, &["ref.profile.json", "integrated_lufs"]);
}

#[test]
fn an_audio_output_named_for_another_format_is_refused_not_written_as_wav() {
    let dir = temp_dir();
    let mix = song(&in_dir(&dir, "mix.wav"));
    let reference = reference(&dir);
    for name in ["out.flac", "out.mp3"] {
        let path = in_dir(&dir, name);
        let out = run(&[&mix, &"--ref", &reference, &"-o", &path]);
        assert_refused(&out, &[name, "WAV"]);
        assert!(!path.exists());
    }
}

#[test]
fn option_and_output_errors_come_before_the_mix_is_read() {
    // A mix that cannot be decoded: if the options or outputs were checked only after decoding,
    // the error would name the mix instead.
    let dir = temp_dir();
    let garbage = in_dir(&dir, "garbage.wav");
    fs::write(&garbage, vec![0x5a; 4096]).expect("write");
    let reference = reference(&dir);
    let out = run(&[&garbage, &"--ref", &reference, &"-o", &in_dir(&dir, "o.wav"), &"--lufs", &"100"]);
    assert_refused(&out, &["--lufs"]);
    let out = run(&[&garbage, &"--ref", &reference, &"-o", &in_dir(&dir, "missing/o.wav")]);
    assert_refused(&out, &["missing", "does not exist"]);
}

#[test]
fn dry_run_settings_are_the_settings_a_real_run_writes() {
    let dir = temp_dir();
    let (mix, reference) = (shipped("demo_mix.flac"), shipped("demo_ref.ogg"));
    let dry = in_dir(&dir, "dry.json");
    let real = in_dir(&dir, "real.json");
    let o = run(&[&mix, &"--ref", &reference, &"--dry-run", &"--settings", &dry, &"--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[&mix, &"--ref", &reference, &"-o", &in_dir(&dir, "m.wav"), &"--settings", &real, &"--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let parse =
        |p: &Path| -> serde_json::Value { serde_json::from_str(&fs::read_to_string(p).expect("read")).expect("json") };
    assert_eq!(parse(&dry), parse(&real), "--dry-run solved other settings than the real run");
    assert!(!default_output_of(&mix).exists(), "--dry-run wrote a master");
}

fn default_output_of(mix: &Path) -> PathBuf {
    mix.with_file_name(format!("{}.master.wav", mix.file_stem().expect("stem").to_string_lossy()))
}

#[test]
fn without_the_limiter_nothing_clips_and_the_printed_peak_is_the_written_one() {
    let dir = temp_dir();
    let out_wav = in_dir(&dir, "nolim.wav");
    let o = run(&[&shipped("demo_mix.flac"), &"--ref", &shipped("demo_ref.ogg"), &"-o", &out_wav, &"--no-limiter"]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let measured = common::ffmpeg_ebur128(&out_wav);
    assert!(
        measured.true_peak_dbtp <= -1.0 + 0.1,
        "--no-limiter master peaks at {:.2} dBTP by ffmpeg, over the -1 dBTP ceiling",
        measured.true_peak_dbtp
    );
    assert!(
        stdout.contains("without the limiter the peaks set the level"),
        "no note says the target was given up:\n{stdout}"
    );
}
