//! Helpers shared by the integration tests: deterministic test signals, WAV writing, running the
//! `refmaster` binary and ffmpeg. Each test file uses a different subset, hence the `allow`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `refmaster` binary cargo built for these tests.
pub fn refmaster() -> Command {
    Command::new(env!("CARGO_BIN_EXE_refmaster"))
}

/// Runs `refmaster` with `args`, returning its output (never panics on a non-zero exit).
pub fn run_refmaster<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    refmaster().args(args).output().expect("cannot start the refmaster binary")
}

/// A `Command` for ffmpeg, panicking with an install hint when ffmpeg is not on PATH. Tests that
/// need ffmpeg fail (never skip) without it.
pub fn ffmpeg() -> Command {
    let ok = Command::new("ffmpeg").arg("-version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok,
        "ffmpeg is required by this test but was not found on PATH: install ffmpeg \
         (e.g. `apt-get install ffmpeg`; .ci/run does this)"
    );
    let mut c = Command::new("ffmpeg");
    c.args(["-nostdin", "-hide_banner", "-nostats"]);
    c
}

/// Runs an ffmpeg command and panics with its stderr when it fails.
pub fn run_ffmpeg(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cannot start ffmpeg");
    assert!(out.status.success(), "ffmpeg failed: {:?}\n{}", cmd, String::from_utf8_lossy(&out.stderr));
    out
}

/// Deterministic PRNG (SplitMix64): the same seed gives the same signal on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Peak amplitude of a sine at `dbfs` (a full-scale sine, amplitude 1, is 0 dBFS).
pub fn dbfs_to_amplitude(dbfs: f64) -> f64 {
    10f64.powf(dbfs / 20.0)
}

/// A sine of `freq_hz` at peak level `dbfs`, `phase_rad` at sample 0, `frames` long.
pub fn sine(rate: u32, freq_hz: f64, dbfs: f64, phase_rad: f64, frames: usize) -> Vec<f32> {
    let a = dbfs_to_amplitude(dbfs);
    let w = 2.0 * std::f64::consts::PI * freq_hz / f64::from(rate);
    (0..frames).map(|i| (a * (w * i as f64 + phase_rad).sin()) as f32).collect()
}

/// A 1 kHz sine whose level steps through `(dbfs, seconds)` segments (EBU Tech 3341/3342 style).
/// The phase runs on across steps, so the only discontinuity is the level change itself.
pub fn stepped_sine(rate: u32, freq_hz: f64, steps: &[(f64, f64)]) -> Vec<f32> {
    let w = 2.0 * std::f64::consts::PI * freq_hz / f64::from(rate);
    let mut out = Vec::new();
    for &(dbfs, seconds) in steps {
        let a = dbfs_to_amplitude(dbfs);
        let n = (seconds * f64::from(rate)).round() as usize;
        let start = out.len();
        out.extend((0..n).map(|i| (a * (w * (start + i) as f64).sin()) as f32));
    }
    out
}

/// Applies raised-cosine fades of `seconds` at both ends (in place).
pub fn fade_in_out(x: &mut [f32], rate: u32, seconds: f64) {
    let n = ((seconds * f64::from(rate)) as usize).min(x.len() / 2);
    for i in 0..n {
        let g = (0.5 - 0.5 * (std::f64::consts::PI * i as f64 / n as f64).cos()) as f32;
        x[i] *= g;
        let j = x.len() - 1 - i;
        x[j] *= g;
    }
}

/// Pink noise by Paul Kellet's "refined" filter on Gaussian white noise (within ±0.05 dB of
/// 1/f above 9.2 Hz at 44.1 kHz), scaled to an RMS of `rms_dbfs` dB re full-scale amplitude 1.
pub fn kellet_pink(seed: u64, frames: usize, rms_dbfs: f64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut b = [0f64; 7];
    let mut out: Vec<f64> = Vec::with_capacity(frames);
    for _ in 0..frames {
        let white = rng.gaussian();
        b[0] = 0.99886 * b[0] + white * 0.055_517_9;
        b[1] = 0.99332 * b[1] + white * 0.075_075_9;
        b[2] = 0.96900 * b[2] + white * 0.153_852_0;
        b[3] = 0.86650 * b[3] + white * 0.310_485_6;
        b[4] = 0.55000 * b[4] + white * 0.532_952_2;
        b[5] = -0.7616 * b[5] - white * 0.016_898_0;
        out.push(b.iter().sum::<f64>() + white * 0.5362);
        b[6] = white * 0.115_926;
    }
    scale_to_rms(&out, rms_dbfs)
}

/// Pink noise synthesised in the frequency domain: every FFT bin between `low_hz` and `high_hz`
/// gets amplitude ∝ 1/√f and a seeded random phase, nothing outside. The bin spacing is 1/duration
/// whatever the rate, and the phases are drawn per bin, so two renderings with the same seed and
/// duration at different sample rates are samples of the very same band-limited periodic signal.
pub fn synth_pink(seed: u64, rate: u32, duration_s: f64, low_hz: f64, high_hz: f64, rms_dbfs: f64) -> Vec<f32> {
    use realfft::RealFftPlanner;
    let n = (duration_s * f64::from(rate)).round() as usize;
    assert!(n % 2 == 0, "synth_pink needs an even length");
    assert!(high_hz < f64::from(rate) / 2.0, "content must stay below Nyquist");
    let df = 1.0 / (n as f64 / f64::from(rate));
    let ifft = RealFftPlanner::<f64>::new().plan_fft_inverse(n);
    let mut spec = ifft.make_input_vec();
    let mut rng = Rng::new(seed);
    for (k, slot) in spec.iter_mut().enumerate() {
        // Draw the phase for every bin (used or not) so bin k always gets the same phase.
        let phase = 2.0 * std::f64::consts::PI * rng.unit();
        let f = k as f64 * df;
        if f >= low_hz && f <= high_hz && k > 0 && k < n / 2 {
            let a = 1.0 / f.sqrt();
            *slot = realfft::num_complex::Complex::new(a * phase.cos(), a * phase.sin());
        }
    }
    let mut out = ifft.make_output_vec();
    ifft.process(&mut spec, &mut out).expect("inverse FFT");
    scale_to_rms(&out, rms_dbfs)
}

fn scale_to_rms(x: &[f64], rms_dbfs: f64) -> Vec<f32> {
    let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64).sqrt();
    let g = dbfs_to_amplitude(rms_dbfs) / rms;
    x.iter().map(|v| (v * g) as f32).collect()
}

/// Writes planar `channels` as a 32-bit float WAV (no quantisation: both tools read the very
/// same samples).
pub fn write_wav_f32(path: &Path, rate: u32, channels: &[Vec<f32>]) {
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create WAV");
    for i in 0..channels[0].len() {
        for ch in channels {
            w.write_sample(ch[i]).expect("write WAV sample");
        }
    }
    w.finalize().expect("finalize WAV");
}

/// Writes planar `channels` as a 16-bit integer WAV (plain rounding, no dither).
pub fn write_wav_i16(path: &Path, rate: u32, channels: &[Vec<f32>]) {
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create WAV");
    for i in 0..channels[0].len() {
        for ch in channels {
            let v = (f64::from(ch[i]) * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            w.write_sample(v).expect("write WAV sample");
        }
    }
    w.finalize().expect("finalize WAV");
}

/// What ffmpeg's `ebur128=peak=true+sample` filter prints in its final summary (one decimal).
#[derive(Debug, Clone, Copy)]
pub struct FfmpegLoudness {
    pub integrated_lufs: f64,
    pub lra_lu: f64,
    pub true_peak_dbtp: f64,
    pub sample_peak_dbfs: f64,
}

/// Measures `path` with ffmpeg's ebur128 filter and parses the summary it logs on stderr.
pub fn ffmpeg_ebur128(path: &Path) -> FfmpegLoudness {
    let out = run_ffmpeg(ffmpeg().arg("-i").arg(path).args([
        "-af",
        "ebur128=peak=true+sample:framelog=verbose",
        "-f",
        "null",
        "-",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    parse_ebur128_summary(&stderr).unwrap_or_else(|| panic!("no ebur128 summary in ffmpeg's output:\n{stderr}"))
}

/// Parses the `Summary:` block of ffmpeg's ebur128 filter: `I:` under "Integrated loudness",
/// `LRA:` under "Loudness range", `Peak:` under "True peak" and "Sample peak".
pub fn parse_ebur128_summary(stderr: &str) -> Option<FfmpegLoudness> {
    let summary = &stderr[stderr.rfind("Summary:")?..];
    let (mut i, mut lra, mut tp, mut sp) = (None, None, None, None);
    let mut section = "";
    for line in summary.lines().map(str::trim) {
        if line.ends_with(':') {
            section = line;
            continue;
        }
        let Some((key, rest)) = line.split_once(':') else { continue };
        let number = rest.split_whitespace().next().and_then(|v| match v {
            "-inf" => Some(f64::NEG_INFINITY),
            v => v.parse::<f64>().ok(),
        });
        match (section, key) {
            ("Integrated loudness:", "I") => i = number,
            ("Loudness range:", "LRA") => lra = number,
            ("True peak:", "Peak") => tp = number,
            ("Sample peak:", "Peak") => sp = number,
            _ => {}
        }
    }
    Some(FfmpegLoudness { integrated_lufs: i?, lra_lu: lra?, true_peak_dbtp: tp?, sample_peak_dbfs: sp? })
}

/// What `refmaster analyze --json` reports for loudness.
#[derive(Debug, Clone, Copy)]
pub struct OurLoudness {
    pub integrated_lufs: f64,
    pub lra_lu: f64,
    pub true_peak_dbtp: f64,
    pub sample_peak_dbfs: f64,
}

/// Runs `refmaster analyze --json FILE` and returns the parsed JSON, panicking (with stderr) on
/// failure.
pub fn analyze_json(path: &Path) -> serde_json::Value {
    let out = run_refmaster([Path::new("analyze"), Path::new("--json"), Path::new("--quiet"), path]);
    assert!(
        out.status.success(),
        "refmaster analyze {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("analyze --json prints valid JSON")
}

/// The loudness figures of `refmaster analyze --json FILE` (a `null` reads as −inf).
pub fn our_loudness(path: &Path) -> OurLoudness {
    let v = analyze_json(path);
    let l = &v["loudness"];
    let f = |k: &str| l[k].as_f64().unwrap_or(f64::NEG_INFINITY);
    OurLoudness {
        integrated_lufs: f("integrated_lufs"),
        lra_lu: f("range_lu"),
        true_peak_dbtp: f("true_peak_dbtp"),
        sample_peak_dbfs: f("sample_peak_dbfs"),
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("refmaster-test-").tempdir().expect("create temp dir")
}

/// `dir/name` as a `PathBuf`.
pub fn in_dir(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
