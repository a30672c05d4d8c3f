//! Round trips: a finished track (the shipped reference, `references/demo_ref.ogg`) is
//! un-mastered here, mastered back against itself, and the master is compared with the finished
//! track it came from: the one test where the truth is known.
//!
//! The distance is measured by ffmpeg, not by refmaster: the momentary loudness (400 ms, EBU
//! R128, every 100 ms) of the master against the finished track's, after matching their median
//! levels, mean |LU| over the frames within 20 LU of the finished track's loudest. A master
//! whose level moves as the finished track's did scores near 0.

mod common;

use std::path::{Path, PathBuf};

use common::{ffmpeg, in_dir, run_ffmpeg, run_refmaster, temp_dir, write_wav_f32};
use refmaster::decode::decode_file;

fn demo_ref() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("references/demo_ref.ogg")
}

/// How an un-mastered mix is made from the finished track.
struct Unmaster {
    /// Slope of the expansion around the median level: 0.3 makes every dB of level change 1.3 dB.
    expansion: f64,
    /// Time constant of the expander's level detector (mean square, one pole), ms.
    detector_ms: f64,
    /// Gain of the bass (first-order split at 150 Hz), dB.
    bass_db: f64,
    /// Gain of the side signal, dB.
    side_db: f64,
}

/// Level of `x` (mean square through a one-pole detector of `detector_ms`, dB) around its median,
/// sample by sample: what an expander around the median level reads.
fn level_around_median_db(x: &[f64], detector_ms: f64, rate_hz: f64) -> Vec<f64> {
    let a = (-1.0 / (detector_ms * 1e-3 * rate_hz)).exp();
    let mut env = 0f64;
    let mut level: Vec<f64> = x
        .iter()
        .map(|&v| {
            env = a * env + (1.0 - a) * v * v;
            10.0 * (env + 1e-12).log10()
        })
        .collect();
    let mut sorted = level.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    level.iter_mut().for_each(|l| *l -= median);
    level
}

/// Writes mid/side as an L/R float WAV whose peak is −10 dBFS.
fn write_mid_side(dst: &Path, rate_hz: u32, mid: &[f64], side: &[f64]) {
    let out_l: Vec<f64> = mid.iter().zip(side).map(|(m, s)| m + s).collect();
    let out_r: Vec<f64> = mid.iter().zip(side).map(|(m, s)| m - s).collect();
    let peak = out_l.iter().chain(&out_r).fold(0f64, |p, v| p.max(v.abs()));
    let scale = 10f64.powf(-10.0 / 20.0) / peak;
    let to_f32 = |v: &[f64]| v.iter().map(|x| (x * scale) as f32).collect::<Vec<f32>>();
    write_wav_f32(dst, rate_hz, &[to_f32(&out_l), to_f32(&out_r)]);
}

/// Un-masters `src` into `dst` (24-bit-free float WAV, peaks at −10 dBFS): bass and side gains,
/// then a broadband expander on the mid's level (the same gain on mid and side).
fn unmaster(src: &Path, dst: &Path, u: &Unmaster) {
    let (audio, _) = decode_file(src).expect("the shipped reference decodes");
    let rate = audio.sample_rate_hz;
    let (l, r) = (&audio.channels[0], &audio.channels[1]);
    let a_bass = (-2.0 * std::f64::consts::PI * 150.0 / f64::from(rate)).exp();
    let bass_gain = 10f64.powf(u.bass_db / 20.0) - 1.0;
    let side_gain = 10f64.powf(u.side_db / 20.0);
    let mut low = 0f64;
    let (mut mid, mut side) = (Vec::with_capacity(l.len()), Vec::with_capacity(l.len()));
    for (&a, &b) in l.iter().zip(r) {
        let m = (f64::from(a) + f64::from(b)) / 2.0;
        low = a_bass * low + (1.0 - a_bass) * m;
        mid.push(m + bass_gain * low);
        side.push((f64::from(a) - f64::from(b)) / 2.0 * side_gain);
    }
    let level = level_around_median_db(&mid, u.detector_ms, f64::from(rate));
    for ((m, s), l) in mid.iter_mut().zip(side.iter_mut()).zip(&level) {
        let g = 10f64.powf((l * u.expansion).clamp(-6.0, 6.0) / 20.0);
        *m *= g;
        *s *= g;
    }
    write_mid_side(dst, rate, &mid, &side);
}

/// Momentary loudness every 100 ms, as ffmpeg's ebur128 filter logs it.
fn momentary_lufs(path: &Path) -> Vec<f64> {
    let out = run_ffmpeg(ffmpeg().args(["-v", "verbose", "-i"]).arg(path).args([
        "-af",
        "ebur128=framelog=verbose",
        "-f",
        "null",
        "-",
    ]));
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(" t: "))
        .filter_map(|l| l.split("M:").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .collect()
}

/// Mean |LU| between the momentary loudness of `path` and of `truth` (frames within 20 LU of
/// the truth's loudest), after removing the median difference (the loudness offset).
fn motion_distance_lu(path: &Path, truth: &[f64]) -> f64 {
    let ours = momentary_lufs(path);
    let loudest = truth.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pairs: Vec<(f64, f64)> =
        ours.iter().zip(truth).filter(|(_, t)| **t > loudest - 20.0).map(|(a, b)| (*a, *b)).collect();
    assert!(pairs.len() > 50, "{}: too few loud frames ({})", path.display(), pairs.len());
    let mut diffs: Vec<f64> = pairs.iter().map(|(a, b)| a - b).collect();
    diffs.sort_by(f64::total_cmp);
    let offset = diffs[diffs.len() / 2];
    pairs.iter().map(|(a, b)| (a - b - offset).abs()).sum::<f64>() / pairs.len() as f64
}

fn master(mix: &Path, out: &Path, settings: &Path, extra: &[&str]) -> String {
    let mut args: Vec<std::ffi::OsString> = vec![
        mix.into(),
        "--ref".into(),
        demo_ref().into(),
        "-o".into(),
        out.into(),
        "--settings".into(),
        settings.into(),
    ];
    args.extend(extra.iter().map(std::ffi::OsString::from));
    let o = run_refmaster(args);
    assert!(o.status.success(), "refmaster failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn settings_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("settings written")).expect("settings are JSON")
}

/// Masters `mix` back against the finished track at -14 LUFS, with dynamics and with
/// `--no-dynamics`, and requires the master to come clearly closer to the finished track's level
/// motion (momentary loudness, measured by ffmpeg) than both the mix and the master without
/// dynamics. Returns the master, its settings file and what refmaster said.
fn master_closer_than_without_dynamics(dir: &tempfile::TempDir, mix: &Path) -> (PathBuf, PathBuf, String) {
    let (with, without) = (in_dir(dir, "dyn.wav"), in_dir(dir, "nodyn.wav"));
    let (s_with, s_without) = (in_dir(dir, "dyn.json"), in_dir(dir, "nodyn.json"));
    // At the finished track's own loudness (-6.6 LUFS) the loudness-war guard and the saturator
    // reshape every peak; at -14 LUFS nothing but the chain under test moves the level.
    let said = master(mix, &with, &s_with, &["--lufs", "-14"]);
    master(mix, &without, &s_without, &["--lufs", "-14", "--no-dynamics"]);

    let truth = momentary_lufs(&demo_ref());
    let (d_mix, d_with, d_without) =
        (motion_distance_lu(mix, &truth), motion_distance_lu(&with, &truth), motion_distance_lu(&without, &truth));
    assert!(
        d_with < 0.8 * d_without && d_with < 0.8 * d_mix,
        "momentary-loudness distance to the finished track: master {d_with:.3} LU, --no-dynamics {d_without:.3}, \
         mix {d_mix:.3}\n{said}"
    );
    (with, s_with, said)
}

#[test]
fn an_expanded_master_is_restored_closer_to_the_finished_track_than_without_dynamics() {
    let dir = temp_dir();
    let mix = in_dir(&dir, "mix.wav");
    let u = Unmaster { expansion: 0.3, detector_ms: 45.0, bass_db: -3.0, side_db: -4.0 };
    unmaster(&demo_ref(), &mix, &u);
    // The mix's level moves 1.3 times as far as the truth's: without compression nothing
    // undoes that, so the master must come clearly closer than both.
    let (_, s_with, said) = master_closer_than_without_dynamics(&dir, &mix);
    // A broadband expander is undone by one broadband compressor whose slope is the expander's
    // inverse (1 + 0.3 = 1.3:1), within a few of the solver's ratio steps on either side.
    // The reference is the finished track itself: the solver reads, moment by moment, the gain
    // that turns the mix into it, instead of matching statistics.
    assert!(said.contains("restoring from the same music"), "the same-music restoration was not used:\n{said}");
    let d = &settings_json(&s_with)["dynamics"];
    let ratio = d["bands"][0]["ratio"].as_f64().unwrap_or(0.0);
    assert!(d["enabled"] == true && d["linked"] == true, "expected broadband compression: {d}\n{said}");
    assert!((1.1..=1.5).contains(&ratio), "ratio {ratio}, the expander's inverse is 1.3\n{said}");
}

#[test]
fn a_round_trip_whose_dynamics_were_never_touched_keeps_the_dynamics_stage_off_and_says_why() {
    let dir = temp_dir();
    let mix = in_dir(&dir, "mix.wav");
    unmaster(&demo_ref(), &mix, &Unmaster { expansion: 0.0, detector_ms: 45.0, bass_db: 3.0, side_db: -4.0 });
    let (out, settings) = (in_dir(&dir, "m.wav"), in_dir(&dir, "m.json"));
    let said = master(&mix, &out, &settings, &["--lufs", "-14"]);
    assert!(settings_json(&settings)["dynamics"]["enabled"] == false, "compressed an untouched level:\n{said}");
    assert!(said.contains("dynamics: off:"), "no note on why dynamics stayed off:\n{said}");
}

/// Un-masters `src` into `dst` with expansion in three bands of its own (complementary
/// first-order splits at 200 Hz and 4 kHz, so the bands sum back to the signal): the lows
/// expanded slowly and far, the middle barely, the highs quickly; each band's detector follows
/// its mid, and its mid and side get the same gain. Not the compressor's crossovers (120 Hz,
/// 1 kHz, 5 kHz) nor its detector: the restoration must find its own way back.
fn unmaster_bands(src: &Path, dst: &Path) {
    let (audio, _) = decode_file(src).expect("the shipped reference decodes");
    let rate = f64::from(audio.sample_rate_hz);
    let (l, r) = (&audio.channels[0], &audio.channels[1]);
    let pole = |hz: f64| (-2.0 * std::f64::consts::PI * hz / rate).exp();
    let split = |x: &[f64]| -> [Vec<f64>; 3] {
        let (a_lo, a_hi) = (pole(200.0), pole(4000.0));
        let (mut lo, mut below_hi) = (0f64, 0f64);
        let mut bands = [Vec::with_capacity(x.len()), Vec::with_capacity(x.len()), Vec::with_capacity(x.len())];
        for &v in x {
            lo = a_lo * lo + (1.0 - a_lo) * v;
            below_hi = a_hi * below_hi + (1.0 - a_hi) * v;
            let hi = v - below_hi;
            bands[0].push(lo);
            bands[1].push(v - lo - hi);
            bands[2].push(hi);
        }
        bands
    };
    let mid: Vec<f64> = l.iter().zip(r).map(|(&a, &b)| (f64::from(a) + f64::from(b)) / 2.0).collect();
    let side: Vec<f64> = l.iter().zip(r).map(|(&a, &b)| (f64::from(a) - f64::from(b)) / 2.0).collect();
    let (mid_bands, side_bands) = (split(&mid), split(&side));
    let (mut out_m, mut out_s) = (vec![0f64; mid.len()], vec![0f64; mid.len()]);
    // (detector ms, expansion slope) per band.
    for ((bm, bs), (detector_ms, slope)) in
        mid_bands.iter().zip(&side_bands).zip([(300.0, 0.35), (80.0, 0.1), (20.0, 0.25)])
    {
        let level = level_around_median_db(bm, detector_ms, rate);
        for (k, l) in level.iter().enumerate() {
            let g = 10f64.powf((l * slope).clamp(-6.0, 6.0) / 20.0);
            out_m[k] += bm[k] * g;
            out_s[k] += bs[k] * g;
        }
    }
    write_mid_side(dst, audio.sample_rate_hz, &out_m, &out_s);
}

/// The mid signal of `path` through ffmpeg's `filter` (one frequency band), as samples.
fn band_of(path: &Path, filter: &str) -> Vec<f32> {
    let out = run_ffmpeg(ffmpeg().args(["-v", "error", "-i"]).arg(path).args([
        "-af",
        &format!("pan=mono|c0=0.5*c0+0.5*c1,{filter}"),
        "-f",
        "f32le",
        "-",
    ]));
    out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Correlation of two signals at lag zero (1: the same waveform up to a gain).
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt().max(1e-30)
}

#[test]
fn a_band_split_expansion_is_restored_per_band_without_turning_the_waveform() {
    let dir = temp_dir();
    let mix = in_dir(&dir, "mix.wav");
    unmaster_bands(&demo_ref(), &mix);
    let (with, s_with, said) = master_closer_than_without_dynamics(&dir, &mix);
    assert!(said.contains("restoring from the same music"), "the same-music restoration was not used:\n{said}");
    // Whatever chain restores the level, the master's waveform in every band must still be the
    // finished track's (the truth has no phase turned): a compressor whose output were rebuilt
    // from the crossover's LR4 bands would be an allpass of it around each crossover, and its
    // bands would correlate with the truth's far below 1 (0.03 to 0.7, or negative, on the
    // corpus's band-split round trips before the split became linear-phase).
    for filter in
        ["lowpass=f=150", "bandpass=f=500:width_type=o:w=1", "bandpass=f=2500:width_type=o:w=1", "highpass=f=7000"]
    {
        let r = correlation(&band_of(&with, filter), &band_of(&demo_ref(), filter));
        assert!(r > 0.9, "{filter}: the master's band correlates {r:.3} with the finished track's\n{said}");
    }
    // The restored chain is a settings file like any other: it reapplies to the same bits.
    let again = in_dir(&dir, "again.wav");
    let o = run_refmaster([
        "apply".into(),
        mix.clone().into_os_string(),
        "--settings".into(),
        s_with.clone().into_os_string(),
        "-o".into(),
        again.clone().into_os_string(),
    ]);
    assert!(o.status.success(), "the restored settings do not reapply: {}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&again).ok() == std::fs::read(&with).ok(), "the settings reapplied to different bits");
}
