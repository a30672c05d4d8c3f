//! Fault injection: what `refmaster` does when the world misbehaves while it writes (a full
//! disk, a file-size limit, a read-only folder, a kill in the middle of the write, two runs
//! racing for one output name) and with awkward but legal input pairs (the reference is the mix
//! itself; 8 kHz against 192 kHz). In every case the run ends in a complete output or in one
//! clean error line with no partial or temporary file left, and the inputs stay byte-identical.
//! Each test prints one line saying what happened (`cargo test --test faults -- --nocapture`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{in_dir, kellet_pink, refmaster, temp_dir, write_wav_i16};

const RATE: u32 = 44_100;

/// A stereo 16-bit WAV of pink noise at `rms_dbfs`, `seconds` long.
fn noise_wav(dir: &tempfile::TempDir, name: &str, seed: u64, seconds: f64, rms_dbfs: f64) -> PathBuf {
    let path = in_dir(dir, name);
    let n = (seconds * f64::from(RATE)) as usize;
    write_wav_i16(&path, RATE, &[kellet_pink(seed, n, rms_dbfs), kellet_pink(seed + 1, n, rms_dbfs)]);
    path
}

/// A 3 s mix and a 5 s, 6 dB louder reference.
fn pair(dir: &tempfile::TempDir) -> (PathBuf, PathBuf) {
    (noise_wav(dir, "mix.wav", 1, 3.0, -20.0), noise_wav(dir, "reference.wav", 3, 5.0, -14.0))
}

/// The inputs' bytes, to prove afterwards that a run left them alone.
struct Untouched(Vec<(PathBuf, Vec<u8>)>);

impl Untouched {
    fn new(paths: &[&Path]) -> Self {
        Self(paths.iter().map(|p| (p.to_path_buf(), fs::read(p).expect("read input"))).collect())
    }
    fn check(&self) {
        for (p, bytes) in &self.0 {
            let now = fs::read(p).unwrap_or_default();
            assert!(now == *bytes, "input {} was modified or removed", p.display());
        }
    }
}

/// The `.refmaster-*.part` temporary files in `dir`.
/// The file `pid` is writing in `dir`, found through its open descriptors (`/proc/PID/fd`), with
/// its current size: a named `.refmaster-*.part`, or on Linux the anonymous `O_TMPFILE` file,
/// which `/proc` shows as `DIR/#INODE (deleted)`.
fn output_being_written(pid: u32, dir: &Path) -> Option<(String, u64)> {
    let dir = fs::canonicalize(dir).ok()?;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        if target.parent() != Some(dir.as_path()) {
            continue;
        }
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('#') || name.starts_with(".refmaster-") {
            let size = fs::metadata(entry.path()).map(|m| m.len()).unwrap_or(0);
            return Some((name, size));
        }
    }
    None
}

fn part_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".refmaster-") && n.ends_with(".part"))
        .collect();
    v.sort();
    v
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean failure (exit status 1, not a signal nor a panic; one stderr line
/// `refmaster: error: ...` naming `names` and one of `problem`) and returns the line.
fn clean_failure(out: &Output, names: &str, problem: &[&str]) -> String {
    let stderr = stderr_of(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean error (status 1), got {:?}; stderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("refmaster: error: "), "{line}");
    assert!(line.contains(names), "error line does not name {names}: {line}");
    let lower = line.to_lowercase();
    assert!(problem.iter().any(|p| lower.contains(p)), "error line does not say {problem:?}: {line}");
    line.to_string()
}

/// `refmaster MIX --ref REF -o OUT --quiet` plus `extra`, as a `Command`.
fn master_cmd(mix: &Path, reference: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = refmaster();
    c.arg(mix).arg("--ref").arg(reference).arg("-o").arg(out).arg("--quiet").args(extra);
    c
}

/// A tmpfs mounted for one test and unmounted when dropped (root only, where mounting is
/// allowed). `None` when it cannot be mounted.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Option<Self> {
        fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

// ---- the output folder is full ----------------------------------------------------------------

#[test]
fn file_size_limit_gives_a_clean_error_and_no_partial_file() {
    let dir = temp_dir();
    let (mix, reference) = pair(&dir);
    let inputs = Untouched::new(&[&mix, &reference]);
    let out = in_dir(&dir, "out.wav");
    // `ulimit -f 100`: 100 blocks (51,200 bytes in sh); the 3 s master is ~800 kB. Past the limit
    // the kernel sends SIGXFSZ, whose default action kills the process on the spot.
    let res = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 100 && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_refmaster"))
        .arg(&mix)
        .args(["--ref".as_ref(), reference.as_os_str(), "-o".as_ref(), out.as_os_str(), "--quiet".as_ref()])
        .output()
        .expect("run sh");
    let line = clean_failure(&res, &out.display().to_string(), &["file too large", "size limit"]);
    assert!(!out.exists(), "a partial output was left at the target name");
    assert_eq!(part_files(dir.path()), Vec::<String>::new(), "temporary files left behind");
    inputs.check();
    println!("fault: file-size limit (ulimit -f 100): exit 1, `{line}`, nothing left behind");
}

#[test]
fn full_disk_gives_a_clean_error_and_no_partial_file() {
    let dir = temp_dir();
    let (mix, reference) = pair(&dir);
    let inputs = Untouched::new(&[&mix, &reference]);
    let Some(small) = Tmpfs::mount(&in_dir(&dir, "small"), "size=256k") else {
        println!("fault: full disk: SKIPPED (cannot mount a tmpfs here: not root, or mount not permitted)");
        return;
    };
    let out = small.0.join("out.wav");
    let res = master_cmd(&mix, &reference, &out, &[]).output().expect("run refmaster");
    let line = clean_failure(&res, &out.display().to_string(), &["no space left"]);
    assert!(!out.exists(), "a partial output was left at the target name");
    assert_eq!(part_files(&small.0), Vec::<String>::new(), "temporary files left on the full disk");
    let free = fs::read_dir(&small.0).map(|d| d.count()).unwrap_or(0);
    assert_eq!(free, 0, "the full tmpfs should be empty again");
    inputs.check();
    println!("fault: full disk (256 KiB tmpfs): exit 1, `{line}`, nothing left behind");
}

#[test]
fn read_only_output_folder_gives_a_clean_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let (mix, reference) = pair(&dir);
    let inputs = Untouched::new(&[&mix, &reference]);
    // Root ignores permission bits, so as root the folder is a read-only tmpfs (a real EROFS);
    // anyone else gets a chmod 555 folder (EACCES).
    let folder = in_dir(&dir, "read-only");
    let mounted = Tmpfs::mount(&folder, "ro,size=1m");
    if mounted.is_none() {
        fs::create_dir_all(&folder).unwrap();
        fs::set_permissions(&folder, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let probe_ok = fs::write(folder.join("probe"), b"").is_ok();
    let _ = fs::remove_file(folder.join("probe"));
    // Root where mounting is not allowed: sysfs refuses new files to everyone (as bad_input.rs).
    let folder = if probe_ok { PathBuf::from("/sys") } else { folder };
    let out = folder.join(format!("refmaster-fault-{}.wav", std::process::id()));
    let res = master_cmd(&mix, &reference, &out, &[]).output().expect("run refmaster");
    let line = clean_failure(&res, &out.display().to_string(), &["read-only", "permission denied", "cannot create"]);
    assert!(!line.contains(".part"), "the error names the temporary file instead of the output: {line}");
    assert!(!out.exists());
    assert_eq!(part_files(&folder), Vec::<String>::new());
    drop(mounted);
    let _ = fs::set_permissions(in_dir(&dir, "read-only"), fs::Permissions::from_mode(0o755));
    inputs.check();
    println!("fault: read-only output folder: exit 1, `{line}`, nothing left behind");
}

// ---- killed in the middle of the write --------------------------------------------------------

/// Streams `seconds` of stereo white noise at -20 dBFS into a 16-bit WAV (no big buffers).
fn long_noise_wav(path: &Path, seconds: usize) {
    let spec =
        hound::WavSpec { channels: 2, sample_rate: RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).expect("create WAV");
    let mut rng = common::Rng::new(42);
    {
        let mut iw = w.get_i16_writer((seconds * RATE as usize * 2) as u32);
        for _ in 0..seconds * RATE as usize * 2 {
            iw.write_sample((rng.gaussian() * 3277.0).clamp(-32768.0, 32767.0) as i16);
        }
        iw.flush().expect("write WAV");
    }
    w.finalize().expect("finalize WAV");
}

#[test]
fn killed_mid_write_leaves_nothing_behind() {
    let dir = temp_dir();
    let mix = in_dir(&dir, "ten-minutes.wav");
    long_noise_wav(&mix, 600);
    let reference = noise_wav(&dir, "reference.wav", 3, 5.0, -14.0);
    let inputs = Untouched::new(&[&mix, &reference]);
    let out = in_dir(&dir, "out.wav");
    // Only the stages that matter here (a long render, then a ~200 MB float write).
    let mut child = master_cmd(
        &mix,
        &reference,
        &out,
        &["--no-eq", "--no-dynamics", "--no-width", "--passes", "0", "--bits", "32f"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start refmaster");
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(300) {
        if let Some(found) = output_being_written(child.id(), dir.path()) {
            if found.1 > 0 {
                seen = Some(found);
                break;
            }
        }
        if child.try_wait().expect("poll refmaster").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let Some((part, size)) = seen else {
        let o = child.wait_with_output().expect("wait");
        panic!("the output was never seen being written (run ended: {:?}, {})", o.status, stderr_of(&o));
    };
    child.kill().expect("SIGKILL refmaster"); // Child::kill is SIGKILL on Unix
    let status = child.wait().expect("reap refmaster");
    assert!(!out.exists(), "a killed run left a file at the target name");
    let left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "ten-minutes.wav" && n != "reference.wav")
        .collect();
    assert!(left.is_empty(), "files left behind by the killed run: {left:?}");
    inputs.check();
    // The next run is not disturbed by the stale temporary file.
    let rerun = master_cmd(
        &mix,
        &reference,
        &out,
        &["--no-eq", "--no-dynamics", "--no-width", "--passes", "0", "--bits", "16"],
    )
    .output()
    .expect("rerun");
    assert!(rerun.status.success(), "a rerun after the kill failed: {}", stderr_of(&rerun));
    let still = part_files(dir.path());
    assert!(still.is_empty(), "the rerun left temporary files: {still:?}");
    println!(
        "fault: SIGKILL mid-write ({status:?} after {:.1} s, {part} at {size} bytes): nothing left behind, \
         no file at the target name; a rerun succeeds",
        start.elapsed().as_secs_f64()
    );
}

// ---- two runs into one folder at once ---------------------------------------------------------

#[test]
fn two_runs_writing_one_output_at_once_leave_one_complete_master() {
    let dir = temp_dir();
    let mix_a = noise_wav(&dir, "a.wav", 11, 10.0, -24.0);
    let mix_b = noise_wav(&dir, "b.wav", 21, 10.0, -18.0);
    let reference = noise_wav(&dir, "reference.wav", 3, 5.0, -14.0);
    let inputs = Untouched::new(&[&mix_a, &mix_b, &reference]);
    // What each run writes alone (the output is deterministic).
    let (alone_a, alone_b) = (in_dir(&dir, "alone-a.wav"), in_dir(&dir, "alone-b.wav"));
    for (m, o) in [(&mix_a, &alone_a), (&mix_b, &alone_b)] {
        let r = master_cmd(m, &reference, o, &[]).output().expect("run");
        assert!(r.status.success(), "{}", stderr_of(&r));
    }
    let (bytes_a, bytes_b) = (fs::read(&alone_a).unwrap(), fs::read(&alone_b).unwrap());
    assert_ne!(bytes_a, bytes_b);
    let out = in_dir(&dir, "out.wav");
    let mut outcomes = Vec::new();
    for round in 0..3 {
        let _ = fs::remove_file(&out);
        let a = master_cmd(&mix_a, &reference, &out, &[]).stderr(Stdio::piped()).spawn().expect("start a");
        let b = master_cmd(&mix_b, &reference, &out, &[]).stderr(Stdio::piped()).spawn().expect("start b");
        let (ra, rb) = (a.wait_with_output().expect("a"), b.wait_with_output().expect("b"));
        for r in [&ra, &rb] {
            if !r.status.success() {
                clean_failure(r, &out.display().to_string(), &["cannot write"]);
            }
        }
        assert!(ra.status.success() || rb.status.success(), "both runs failed");
        let got = fs::read(&out).expect("an output exists");
        let winner = if got == bytes_a {
            "a"
        } else if got == bytes_b {
            "b"
        } else {
            panic!("round {round}: the output is neither run's master (interleaved or partial, {} bytes)", got.len())
        };
        assert_eq!(part_files(dir.path()), Vec::<String>::new(), "temporary files left behind");
        outcomes.push(format!("{}+{}→{winner}", ra.status.code().unwrap_or(-1), rb.status.code().unwrap_or(-1)));
    }
    inputs.check();
    println!("fault: two runs, one output name, 3 rounds (exit a+b → whose master): {}", outcomes.join(", "));
}

// ---- awkward but legal pairs ------------------------------------------------------------------

fn read_f32_wav(path: &Path) -> (u32, Vec<Vec<f32>>) {
    let mut r = hound::WavReader::open(path).expect("open WAV");
    let spec = r.spec();
    let ch = usize::from(spec.channels);
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(|s| s.expect("sample")).collect(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / f64::from(1u32 << (spec.bits_per_sample - 1));
            r.samples::<i32>().map(|s| (f64::from(s.expect("sample")) * scale) as f32).collect()
        }
    };
    let planes = (0..ch).map(|c| samples.iter().skip(c).step_by(ch).copied().collect()).collect();
    (spec.sample_rate, planes)
}

/// Masters the shipped demo mix against itself with a -6 dBTP ceiling (its peaks reach
/// -4.1 dBTP, so the limiter has work) and checks that nothing but the limiter's gain changed:
/// no EQ, width or compression in the settings, and every output frame is the input frame times
/// one gain, the same on both channels, never above the drive. Returns a summary.
fn master_against_itself(extra: &[&str]) -> String {
    let dir = temp_dir();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join("demo_mix.flac");
    let mix = in_dir(&dir, "demo_mix.flac");
    fs::copy(&shipped, &mix).expect("copy the demo mix");
    let inputs = Untouched::new(&[&mix]);
    let out = in_dir(&dir, "out.wav");
    let settings = in_dir(&dir, "settings.json");
    let mut args = vec!["--ceiling", "-6", "--bits", "32f", "--settings", settings.to_str().unwrap()];
    args.extend_from_slice(extra);
    let res = master_cmd(&mix, &mix, &out, &args).output().unwrap();
    assert!(res.status.success(), "mastering a mix against itself failed: {}", stderr_of(&res));
    inputs.check();
    assert_eq!(part_files(dir.path()), Vec::<String>::new());
    let s: serde_json::Value = serde_json::from_slice(&fs::read(&settings).unwrap()).unwrap();
    let abs_max =
        |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap().abs()).fold(0.0, f64::max);
    let eq = abs_max(&s["eq"]["mid_gain_db"]).max(abs_max(&s["eq"]["side_gain_db"]));
    let width = s["width"]["bands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["side_gain_db"].as_f64().unwrap().abs())
        .fold(0.0, f64::max);
    let drive = s["limiter"]["drive_db"].as_f64().unwrap();
    let (input, _) = refmaster::decode::decode_file(&mix).expect("decode the mix");
    let (rate, output) = read_f32_wav(&out);
    assert_eq!(rate, input.sample_rate_hz);
    let drive_lin = 10f64.powf(drive / 20.0) as f32;
    let (mut limited, mut mismatch) = (0usize, 0f32);
    assert_eq!(output[0].len(), input.frames());
    let frames = input.channels[0].iter().zip(&input.channels[1]).zip(output[0].iter().zip(&output[1]));
    for ((&a, &b), (&out_a, &out_b)) in frames {
        if a.abs() < 1e-3 || b.abs() < 1e-3 {
            continue;
        }
        let (ga, gb) = (out_a / a, out_b / b);
        mismatch = mismatch.max((ga - gb).abs()).max(ga.max(gb) - drive_lin);
        if ga < drive_lin * 0.999 {
            limited += 1;
        }
    }
    let share = 100.0 * limited as f64 / input.frames() as f64;
    let summary = format!(
        "EQ max |{eq:.3}| dB, width max |{width:.3}| dB, drive {drive:+.3} dB, {share:.2} % of frames limited, \
         worst per-frame gain mismatch {mismatch:.1e}"
    );
    assert!(s["dynamics"]["enabled"] == false, "compression against itself ({summary})");
    // The closed loop may correct the limiter's own tonal shift on a hot mix (on the shipped
    // reference, already limited to 0 dBFS, limiting alone moves a 1/6-octave band by 1.3 dB), so
    // the bar is the issue's: the chain stays within 0.5 dB of doing nothing.
    assert!(eq <= 0.5 && width <= 0.5, "a mix matched to itself got more than 0.5 dB of EQ or width ({summary})");
    assert!(drive.abs() <= 0.5, "drive {drive} dB for a mix matched to itself ({summary})");
    if eq == 0.0 && width == 0.0 {
        assert!(mismatch <= 1e-4, "the output is not the input times one gain per frame ({summary})");
    }
    summary
}

#[test]
fn the_mix_as_its_own_reference_open_loop_changes_nothing_but_the_peaks() {
    let summary = master_against_itself(&["--passes", "0"]);
    println!("fault: mix as its own reference, --passes 0: works; {summary}");
}

#[test]
fn the_mix_as_its_own_reference_changes_nothing_but_the_peaks() {
    let summary = master_against_itself(&[]);
    println!("fault: mix as its own reference: works; {summary}");
}

#[test]
fn mix_and_reference_far_apart_in_sample_rate_master_at_the_mix_rate() {
    let dir = temp_dir();
    let make = |name: &str, rate: u32, seed: u64, rms: f64| {
        let path = in_dir(&dir, name);
        let n = 4 * rate as usize;
        write_wav_i16(&path, rate, &[kellet_pink(seed, n, rms), kellet_pink(seed + 1, n, rms)]);
        path
    };
    let low = make("8k.wav", 8_000, 1, -24.0);
    let high = make("192k.wav", 192_000, 3, -16.0);
    let inputs = Untouched::new(&[&low, &high]);
    let mut lines = Vec::new();
    for (mix, reference, rate) in [(&low, &high, 8_000u32), (&high, &low, 192_000)] {
        let out = in_dir(&dir, &format!("out-{rate}.wav"));
        let res = master_cmd(mix, reference, &out, &[]).output().expect("run");
        assert!(res.status.success(), "{} against {} failed: {}", mix.display(), reference.display(), stderr_of(&res));
        let v = common::analyze_json(&out);
        assert_eq!(v["sample_rate_hz"], rate, "the master is not at the mix's rate");
        let tp = v["loudness"]["true_peak_dbtp"].as_f64().unwrap();
        let lufs = v["loudness"]["integrated_lufs"].as_f64().unwrap();
        let want = common::analyze_json(reference)["loudness"]["integrated_lufs"].as_f64().unwrap();
        assert!(tp <= -1.0, "true peak {tp} dBTP over the -1 dBTP ceiling");
        assert!((lufs - want).abs() <= 0.5, "master at {lufs} LUFS, the reference is at {want} LUFS");
        lines.push(format!(
            "{rate} Hz mix vs {} Hz ref → {rate} Hz master, {lufs:.1} LUFS (ref {want:.1}), {tp:.2} dBTP",
            if rate == 8_000 { 192_000 } else { 8_000 }
        ));
    }
    inputs.check();
    assert_eq!(part_files(dir.path()), Vec::<String>::new());
    println!("fault: sample rates far apart: {}", lines.join("; "));
}
