//! The adversarial ceiling suite: signals built to beat a true-peak limiter (full-scale squares
//! and pulse trains, a quarter-rate sine at 45° whose true peak is 3 dB over its samples, sweeps
//! to Nyquist, impulse doublets, white noise at +12 dBFS, hard-clipped masters, DC steps), at
//! 8-192 kHz, mono and stereo, through every command that writes audio (default,
//! `--no-saturation`, `--allow-crush`, `apply`, `album`, `batch`; `--bits 16|24|32f`). Every
//! written file is measured by a true-peak meter written here, independently of `src/`
//! (16× oversampled, 64-tap-per-branch Kaiser-windowed sinc cut at Nyquist), and by ffmpeg's
//! `ebur128=peak=true`; both must read at or under the -1 dBTP ceiling.
//!
//! The signals are 2 s long and the matrix pairs each signal with a rate, a layout and a path
//! rather than crossing them all: every signal, every rate, both layouts and every path are
//! covered, in about 30 masters.

mod common;

use std::path::{Path, PathBuf};

use common::{ffmpeg_ebur128, in_dir, run_refmaster, temp_dir, write_wav_f32, Rng};

/// The ceiling every master here is held to, dBTP (refmaster's default).
const CEILING_DBTP: f64 = -1.0;
const SECONDS: f64 = 2.0;

/// Oversampling of the test's meter.
const METER_FACTOR: usize = 16;
/// Taps per branch of the test's meter.
const METER_TAPS: usize = 64;

/// The test's own true-peak meter: the waveform interpolated at 16 points per sample by a
/// Kaiser-windowed (β = 9) sinc cut at Nyquist, 64 taps per branch, each branch normalised to
/// unity gain at DC; silence before and after the file. Returns the largest |value|, dBTP.
fn true_peak_16x_dbtp(channels: &[Vec<f32>]) -> f64 {
    let half = METER_TAPS / 2;
    let bessel = |x: f64| {
        let (mut sum, mut term) = (1.0f64, 1.0f64);
        for k in 1..60 {
            term *= (x / (2.0 * k as f64)).powi(2);
            sum += term;
        }
        sum
    };
    let beta = 9.0;
    let branches: Vec<Vec<f64>> = (1..METER_FACTOR)
        .map(|p| {
            let frac = p as f64 / METER_FACTOR as f64;
            let taps: Vec<f64> = (0..METER_TAPS)
                .map(|k| {
                    // Tap k weighs sample n − (half − 1) + k; its distance from the point n + frac.
                    let x = k as f64 - (half as f64 - 1.0) - frac;
                    let sinc = (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x);
                    let r = x / half as f64;
                    sinc * bessel(beta * (1.0 - r * r).max(0.0).sqrt()) / bessel(beta)
                })
                .collect();
            let sum: f64 = taps.iter().sum();
            taps.iter().map(|t| t / sum).collect()
        })
        .collect();
    let mut peak = 0f64;
    for ch in channels {
        let mut padded = vec![0f64; ch.len() + 2 * METER_TAPS];
        for (p, &v) in padded[METER_TAPS..].iter_mut().zip(ch) {
            *p = f64::from(v);
        }
        // Every interval from the one before the first sample to the one after the last.
        for n in METER_TAPS - 1..METER_TAPS + ch.len() {
            peak = peak.max(padded[n].abs());
            let window = &padded[n + 1 - half..n + 1 + half];
            for b in &branches {
                let v: f64 = window.iter().zip(b).map(|(x, t)| x * t).sum();
                peak = peak.max(v.abs());
            }
        }
    }
    20.0 * peak.log10()
}

/// The kinds of signal the suite masters.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A full-scale 50 Hz square.
    Square,
    /// A train of 1 ms full-scale pulses, 100 a second.
    Pulses,
    /// A sine at a quarter of the sample rate, 45° phase, samples at 0 dBFS: true peak +3 dBTP.
    QuarterRateSine,
    /// A full-scale logarithmic sweep from 20 Hz to Nyquist.
    SweepToNyquist,
    /// Full-scale doublets (+1, −1), four a second, over quiet noise.
    Impulses,
    /// White noise at +12 dBFS RMS (a float file far over full scale).
    NoisePlus12,
    /// A master hard-clipped at full scale: loud noise bursts cut flat at ±1.
    HardClipped,
    /// DC steps between ±0.9 every quarter second, over quiet noise.
    DcSteps,
}

const KINDS: [Kind; 8] = [
    Kind::Square,
    Kind::Pulses,
    Kind::QuarterRateSine,
    Kind::SweepToNyquist,
    Kind::Impulses,
    Kind::NoisePlus12,
    Kind::HardClipped,
    Kind::DcSteps,
];

/// `kind` at `rate`, one channel (seeded by `seed`).
fn signal(kind: Kind, rate: u32, seed: u64) -> Vec<f32> {
    let n = (SECONDS * f64::from(rate)) as usize;
    let fs = f64::from(rate);
    let mut rng = Rng::new(seed);
    let tau = 2.0 * std::f64::consts::PI;
    (0..n)
        .map(|i| {
            let t = i as f64 / fs;
            let v = match kind {
                Kind::Square => {
                    if (t * 50.0).fract() < 0.5 {
                        1.0
                    } else {
                        -1.0
                    }
                }
                Kind::Pulses => {
                    if (t * 100.0).fract() < 0.1 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Kind::QuarterRateSine => {
                    std::f64::consts::SQRT_2
                        * (std::f64::consts::FRAC_PI_2 * i as f64 + std::f64::consts::FRAC_PI_4).sin()
                }
                Kind::SweepToNyquist => {
                    let (f0, f1) = (20.0, fs / 2.0);
                    let k = (f1 / f0).ln() / SECONDS;
                    (tau * f0 * ((k * t).exp() - 1.0) / k).sin()
                }
                Kind::Impulses => {
                    let p = i % (rate as usize / 4);
                    0.01 * rng.gaussian()
                        + match p {
                            0 => 1.0,
                            1 => -1.0,
                            _ => 0.0,
                        }
                }
                Kind::NoisePlus12 => 4.0 * rng.gaussian(),
                Kind::HardClipped => {
                    let burst = (tau * 3.0 * t).sin().powi(2);
                    (2.0 * burst * rng.gaussian()).clamp(-1.0, 1.0)
                }
                Kind::DcSteps => (if (t * 2.0).fract() < 0.5 { 0.9 } else { -0.9 }) + 0.03 * rng.gaussian(),
            };
            v.clamp(-16.0, 16.0) as f32
        })
        .collect()
}

/// `kind` at `rate` as a WAV (32-bit float, `channels` channels; the right channel of stereo
/// noise is its own noise) in `dir`.
fn mix_file(dir: &Path, kind: Kind, rate: u32, channels: usize) -> PathBuf {
    let left = signal(kind, rate, 1);
    let planes = if channels == 2 {
        let right = match kind {
            Kind::NoisePlus12 | Kind::HardClipped => signal(kind, rate, 2),
            _ => left.clone(),
        };
        vec![left, right]
    } else {
        vec![left]
    };
    let path = dir.join(format!("{kind:?}_{rate}_{channels}ch.wav"));
    write_wav_f32(&path, rate, &planes);
    path
}

/// The issue's reference: uniform white noise at 192 kHz, stereo (a loud, bright target).
fn noise_reference(dir: &Path) -> PathBuf {
    let path = dir.join("noise_ref_192k.wav");
    let mut rng = Rng::new(9);
    let n = (SECONDS * 192_000.0) as usize;
    let planes: Vec<Vec<f32>> = (0..2).map(|_| (0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect()).collect();
    write_wav_f32(&path, 192_000, &planes);
    path
}

fn demo_reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join("demo_ref.ogg")
}

/// Reads a WAV refmaster wrote (16/24-bit integer or 32-bit float) as planar floats.
fn read_wav(path: &Path) -> Vec<Vec<f32>> {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    let k = usize::from(spec.channels);
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(|s| s.expect("sample")).collect(),
        hound::SampleFormat::Int => {
            let scale = (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>().map(|s| s.expect("sample") as f32 / scale).collect()
        }
    };
    (0..k).map(|c| samples.iter().skip(c).step_by(k).copied().collect()).collect()
}

/// Measures a written master by both meters; returns a line describing any breach.
fn breach(label: &str, path: &Path, frames: usize) -> Option<String> {
    let audio = read_wav(path);
    assert_eq!(audio[0].len(), frames, "{label}: the master has as many frames as the mix");
    assert!(audio.iter().flatten().all(|v| v.is_finite()), "{label}: non-finite samples written");
    let ours = true_peak_16x_dbtp(&audio);
    let ff = ffmpeg_ebur128(path).true_peak_dbtp;
    eprintln!("{label}: 16x meter {ours:+.3} dBTP, ffmpeg {ff:+.1} dBTP");
    (ours > CEILING_DBTP || ff > CEILING_DBTP)
        .then(|| format!("{label}: 16x meter {ours:+.3} dBTP, ffmpeg {ff:+.1} dBTP (ceiling {CEILING_DBTP})"))
}

fn frames_of(rate: u32) -> usize {
    (SECONDS * f64::from(rate)) as usize
}

/// Masters `mix` against `reference` with `extra` options; returns the output path.
fn master(dir: &Path, mix: &Path, reference: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args: Vec<std::ffi::OsString> =
        vec![mix.into(), "--ref".into(), reference.into(), "-o".into(), out.clone().into(), "--quiet".into()];
    args.extend(extra.iter().map(|e| (*e).into()));
    let o = run_refmaster(&args);
    assert!(o.status.success(), "{} {extra:?} failed:\n{}", mix.display(), String::from_utf8_lossy(&o.stderr));
    out
}

fn assert_none(breaches: Vec<String>) {
    assert!(breaches.is_empty(), "over the ceiling:\n{}", breaches.join("\n"));
}

#[test]
fn the_issues_square_against_192_khz_noise_masters_under_the_ceiling_at_every_bit_depth() {
    let dir = temp_dir();
    let reference = noise_reference(dir.path());
    let mix = mix_file(dir.path(), Kind::Square, 44_100, 2);
    let mut breaches = Vec::new();
    for bits in ["16", "24", "32f"] {
        let out = master(dir.path(), &mix, &reference, &format!("square_{bits}.wav"), &["--bits", bits]);
        breaches.extend(breach(&format!("square vs noise, --bits {bits}"), &out, frames_of(44_100)));
    }
    assert_none(breaches);
}

#[test]
fn every_adversarial_signal_masters_under_the_ceiling_at_every_rate_by_default() {
    let dir = temp_dir();
    let references = [demo_reference(), noise_reference(dir.path())];
    let rates = [8_000, 22_050, 44_100, 48_000, 96_000, 192_000];
    let bits = ["24", "16", "32f"];
    let mut breaches = Vec::new();
    for (i, kind) in KINDS.iter().enumerate() {
        let rate = rates[i % rates.len()];
        let channels = 1 + i % 2;
        let mix = mix_file(dir.path(), *kind, rate, channels);
        let depth = bits[i % bits.len()];
        let reference = &references[i % 2];
        let out = master(dir.path(), &mix, reference, &format!("{kind:?}_default.wav"), &["--bits", depth]);
        let label = format!("{kind:?} {rate} Hz {channels} ch, default, --bits {depth}");
        breaches.extend(breach(&label, &out, frames_of(rate)));
    }
    assert_none(breaches);
}

#[test]
fn every_adversarial_signal_masters_under_the_ceiling_without_saturation_and_crushed() {
    let dir = temp_dir();
    let reference = demo_reference();
    let rates = [192_000, 96_000, 48_000, 44_100, 22_050, 8_000];
    let mut breaches = Vec::new();
    for (i, kind) in KINDS.iter().enumerate() {
        let rate = rates[i % rates.len()];
        let channels = 2 - i % 2;
        let mix = mix_file(dir.path(), *kind, rate, channels);
        let (option, depth) = if i % 2 == 0 { ("--no-saturation", "16") } else { ("--allow-crush", "24") };
        let out = master(dir.path(), &mix, &reference, &format!("{kind:?}{option}.wav"), &[option, "--bits", depth]);
        let label = format!("{kind:?} {rate} Hz {channels} ch, {option}, --bits {depth}");
        breaches.extend(breach(&label, &out, frames_of(rate)));
    }
    assert_none(breaches);
}

#[test]
fn apply_renders_adversarial_settings_under_the_ceiling() {
    let dir = temp_dir();
    let reference = demo_reference();
    let mut breaches = Vec::new();
    for (kind, rate, depth) in
        [(Kind::QuarterRateSine, 44_100, "16"), (Kind::HardClipped, 96_000, "32f"), (Kind::SweepToNyquist, 8_000, "24")]
    {
        let mix = mix_file(dir.path(), kind, rate, 2);
        let settings = in_dir(&dir, &format!("{kind:?}.settings.json"));
        let settings_arg = settings.to_string_lossy().into_owned();
        master(
            dir.path(),
            &mix,
            &reference,
            &format!("{kind:?}_first.wav"),
            &["--allow-crush", "--settings", &settings_arg],
        );
        let out = in_dir(&dir, &format!("{kind:?}_apply.wav"));
        let o = run_refmaster([
            std::ffi::OsString::from("apply"),
            mix.clone().into(),
            "--settings".into(),
            settings.clone().into(),
            "-o".into(),
            out.clone().into(),
            "--bits".into(),
            depth.into(),
            "--quiet".into(),
        ]);
        assert!(o.status.success(), "apply failed:\n{}", String::from_utf8_lossy(&o.stderr));
        breaches.extend(breach(&format!("{kind:?} {rate} Hz, apply, --bits {depth}"), &out, frames_of(rate)));
    }
    assert_none(breaches);
}

#[test]
fn album_and_batch_write_adversarial_songs_under_the_ceiling() {
    let dir = temp_dir();
    let songs = [
        (mix_file(dir.path(), Kind::Pulses, 48_000, 2), 48_000),
        (mix_file(dir.path(), Kind::NoisePlus12, 22_050, 1), 22_050),
        (mix_file(dir.path(), Kind::Impulses, 192_000, 2), 192_000),
    ];
    let mut breaches = Vec::new();
    for (sub, depth) in [("album", "16"), ("batch", "32f")] {
        let out_dir = in_dir(&dir, sub);
        std::fs::create_dir_all(&out_dir).expect("out dir");
        let mut args: Vec<std::ffi::OsString> = vec![sub.into()];
        args.extend(songs.iter().map(|(s, _)| s.clone().into_os_string()));
        args.extend([
            "--ref".into(),
            demo_reference().into_os_string(),
            "--out-dir".into(),
            out_dir.clone().into_os_string(),
            "--bits".into(),
            depth.into(),
        ]);
        let o = run_refmaster(&args);
        assert!(o.status.success(), "{sub} failed:\n{}", String::from_utf8_lossy(&o.stderr));
        for (song, rate) in &songs {
            let out = refmaster::album::output_path(song, &out_dir);
            let label = format!("{}, {sub}, --bits {depth}", song.file_name().unwrap_or_default().to_string_lossy());
            breaches.extend(breach(&label, &out, frames_of(*rate)));
        }
    }
    assert_none(breaches);
}

#[test]
fn the_test_meter_reads_a_quarter_rate_sine_at_45_degrees_3_db_over_its_samples() {
    // The meter is what the suite trusts: it must see the inter-sample peak the signal is
    // built around (samples at 0 dBFS, waveform at +3.01 dBTP), away from the file's edges.
    let x = signal(Kind::QuarterRateSine, 48_000, 1);
    let faded: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let edge = (i.min(x.len() - 1 - i) as f32 / 2000.0).min(1.0);
            v * (0.5 - 0.5 * (std::f32::consts::PI * edge).cos())
        })
        .collect();
    let tp = true_peak_16x_dbtp(&[faded]);
    assert!((tp - 3.01).abs() < 0.02, "{tp}");
}
