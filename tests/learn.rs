//! Specifications of learned targets (issue 6): `refmaster learn`, `refmaster targets`, mastering
//! without `--ref`, and saved profiles as references.

mod common;

use std::path::{Path, PathBuf};

use common::{ffmpeg_ebur128, run_refmaster, temp_dir, write_wav_f32, Rng};
use refmaster::learn::{kmeans_labels, parse_target_spec, silhouette, TargetModel};

const RATE: u32 = 44_100;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed:\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Noise with a spectral tilt (dB per octave of amplitude density, re 1 kHz) between 20 Hz and
/// `top_hz`, synthesised in the frequency domain with seeded phases; RMS 1.
fn tilted_noise(seed: u64, frames: usize, tilt_db_per_octave: f64, top_hz: f64) -> Vec<f64> {
    use realfft::RealFftPlanner;
    let n = frames + frames % 2;
    let ifft = RealFftPlanner::<f64>::new().plan_fft_inverse(n);
    let mut spec = ifft.make_input_vec();
    let mut rng = Rng::new(seed);
    let df = f64::from(RATE) / n as f64;
    let exponent = tilt_db_per_octave / (20.0 * 2f64.log10());
    for (k, slot) in spec.iter_mut().enumerate() {
        let phase = 2.0 * std::f64::consts::PI * rng.unit();
        let f = k as f64 * df;
        if (20.0..=top_hz).contains(&f) && k < n / 2 {
            let a = (f / 1000.0).powf(exponent);
            *slot = realfft::num_complex::Complex::new(a * phase.cos(), a * phase.sin());
        }
    }
    let mut out = ifft.make_output_vec();
    ifft.process(&mut spec, &mut out).expect("inverse FFT");
    out.truncate(frames);
    let rms = (out.iter().map(|v| v * v).sum::<f64>() / frames as f64).sqrt();
    out.iter().map(|v| v / rms).collect()
}

/// What a synthetic "track" is made of.
#[derive(Clone, Copy)]
struct Style {
    tilt: f64,
    side_db: f64,
    rms_dbfs: f64,
    /// 0 = steady, 1 = strongly pulsing (high crest and spread).
    pulse: f64,
    top_hz: f64,
    seconds: f64,
}

/// Renders a stereo track: mid noise plus independent side noise `side_db` below it, a slow
/// level pulse, scaled to `rms_dbfs` per channel.
fn render(seed: u64, s: Style) -> Vec<Vec<f32>> {
    let frames = (s.seconds * f64::from(RATE)) as usize;
    let mid = tilted_noise(seed, frames, s.tilt, s.top_hz);
    let side = tilted_noise(seed ^ 0xABCD, frames, s.tilt, s.top_hz);
    let g_side = 10f64.powf(s.side_db / 20.0);
    let g = 10f64.powf(s.rms_dbfs / 20.0);
    let env = |i: usize| {
        let t = i as f64 / f64::from(RATE);
        let beat = (std::f64::consts::PI * 2.0 * t).sin().abs().powi(4);
        let phrase = 0.6 + 0.4 * (std::f64::consts::PI * t / 4.0).sin();
        (1.0 - s.pulse) + s.pulse * 2.5 * beat * phrase
    };
    let l: Vec<f32> = (0..frames).map(|i| (g * env(i) * (mid[i] + g_side * side[i])) as f32).collect();
    let r: Vec<f32> = (0..frames).map(|i| (g * env(i) * (mid[i] - g_side * side[i])) as f32).collect();
    vec![l, r]
}

/// Two families of four tracks each (bright, wide, loud and steady; dark, narrow, quiet and
/// pulsing), each track varied by a seeded random amount; one of them in a subfolder.
fn write_good_tracks(dir: &Path) -> Vec<String> {
    let mut rng = Rng::new(20_240_601);
    let mut names = Vec::new();
    for i in 0..8u64 {
        let a = i < 4;
        let j = |rng: &mut Rng, w: f64| (rng.unit() - 0.5) * w;
        let style = Style {
            tilt: if a { 0.0 } else { -6.0 } + j(&mut rng, 1.5),
            side_db: if a { -6.0 } else { -20.0 } + j(&mut rng, 3.0),
            rms_dbfs: if a { -14.0 } else { -26.0 } + j(&mut rng, 2.0),
            pulse: if a { 0.05 } else { 0.8 } + j(&mut rng, 0.1),
            top_hz: 19_000.0,
            seconds: 12.0,
        };
        let name = if i == 5 { format!("more/track{i}.wav") } else { format!("track{i}.wav") };
        let path = dir.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_wav_f32(&path, RATE, &render(100 + i, style));
        names.push(name);
    }
    names
}

fn run_learn(inputs: &[&Path], out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<std::ffi::OsString> = vec!["learn".into()];
    args.extend(inputs.iter().map(|p| p.as_os_str().to_owned()));
    args.extend(["-o".into(), out.as_os_str().to_owned()]);
    args.extend(extra.iter().map(Into::into));
    run_refmaster(args)
}

#[test]
fn junk_files_are_skipped_with_their_reasons() {
    let dir = temp_dir();
    let music = dir.path().join("music");
    let good = write_good_tracks(&music);
    let steady = Style { tilt: -3.0, side_db: -10.0, rms_dbfs: -16.0, pulse: 0.1, top_hz: 19_000.0, seconds: 12.0 };
    let frames = (12.0 * f64::from(RATE)) as usize;
    write_wav_f32(&music.join("silent.wav"), RATE, &[vec![0.0; frames], vec![0.0; frames]]);
    write_wav_f32(&music.join("quiet.wav"), RATE, &render(1, Style { rms_dbfs: -60.0, ..steady }));
    write_wav_f32(&music.join("short.wav"), RATE, &render(2, Style { seconds: 5.0, ..steady }));
    let one = render(3, steady).swap_remove(0);
    write_wav_f32(&music.join("mono.wav"), RATE, std::slice::from_ref(&one));
    write_wav_f32(&music.join("dualmono.wav"), RATE, &[one.clone(), one]);
    write_wav_f32(&music.join("muffled.wav"), RATE, &render(4, Style { top_hz: 6000.0, ..steady }));
    std::fs::write(music.join("broken.flac"), b"fLaC but not really a FLAC file at all").unwrap();
    std::fs::write(music.join("notes.txt"), b"not audio: never looked at").unwrap();
    let out = dir.path().join("model.json");

    let o = run_learn(&[&music], &out, &["--seed", "3"]);
    assert_ok(&o, "refmaster learn");
    let text = stdout(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let expected = [
        ("silent.wav", "silent"),
        ("quiet.wav", "too quiet"),
        ("short.wav", "too short"),
        ("mono.wav", "mono"),
        ("dualmono.wav", "dual mono"),
        ("muffled.wav", "band-limited"),
        ("broken.flac", "cannot decode"),
    ];
    let model: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let skipped = model["skipped"].as_array().expect("skipped list");
    assert_eq!(skipped.len(), expected.len(), "skipped: {skipped:?}");
    for (file, why) in expected {
        let line = format!("skipped {file}: {why}");
        assert!(text.contains(&line), "stdout lacks `{line}`:\n{text}");
        assert!(stderr.contains(&format!("{file}: skipped: {why}")), "no progress line for {file}:\n{stderr}");
        let entry = skipped.iter().find(|s| s["file"] == file).unwrap_or_else(|| panic!("{file} not in skipped"));
        assert!(entry["reason"].as_str().unwrap().starts_with(why), "{entry}");
    }
    assert!(!text.contains("notes.txt") && !stderr.contains("notes.txt"), "a .txt file was looked at");
    // The good tracks, the one in the subfolder too, are all members of some target.
    assert_eq!(model["trained_on"], good.len());
    let members: Vec<&str> = model["targets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()))
        .collect();
    let mut sorted = members.clone();
    sorted.sort_unstable();
    let mut want: Vec<&str> = good.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(sorted, want);
}

#[test]
fn learning_is_deterministic() {
    let dir = temp_dir();
    let music = dir.path().join("music");
    write_good_tracks(&music);
    // The same files elsewhere: nothing of the folder's location may reach the model.
    let copy = dir.path().join("elsewhere/music-copy");
    for entry in walk(&music) {
        let rel = entry.strip_prefix(&music).unwrap();
        std::fs::create_dir_all(copy.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&entry, copy.join(rel)).unwrap();
    }
    let (a, b, c) = (dir.path().join("a.json"), dir.path().join("b.json"), dir.path().join("c.json"));
    assert_ok(&run_learn(&[&music], &a, &["--seed", "7", "--quiet"]), "learn a");
    assert_ok(&run_learn(&[&music], &b, &["--seed", "7", "--quiet", "--jobs", "1"]), "learn b");
    assert_ok(&run_learn(&[&copy], &c, &["--seed", "7", "--quiet"]), "learn c");
    let (ta, tb, tc) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), std::fs::read(&c).unwrap());
    assert!(ta == tb, "two runs of learn on the same files and seed differ");
    assert!(ta == tc, "learn on a copy of the folder elsewhere differs");

    // What the model says: the two families found, features and standardisation stated.
    let text = std::fs::read_to_string(&a).unwrap();
    let model = TargetModel::from_json(&text, &a).expect("learn writes a model refmaster reads");
    assert_eq!(model.distance, "euclidean on standardised features");
    assert_eq!(model.feature_names.len(), model.feature_means.len());
    assert_eq!(model.feature_names.len(), model.feature_stds.len());
    assert!(model.k_selection.criterion.contains("silhouette"), "{}", model.k_selection.criterion);
    assert_eq!(model.k_selection.silhouette_by_k.iter().map(|s| s.k).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6, 7]);
    assert_eq!(model.targets.len(), 2, "the two synthetic families: {}", refmaster::learn::targets_text(&model, "m"));
    for t in &model.targets {
        assert_eq!(t.size, 4);
        assert_eq!(t.members.len(), t.size);
        let family_a =
            t.members.iter().filter(|m| ["track0", "track1", "track2", "track3"].iter().any(|p| m.contains(p)));
        assert!(matches!(family_a.count(), 0 | 4), "families mixed: {:?}", t.members);
    }
    let names: Vec<&str> = model.targets.iter().map(|t| t.name.as_str()).collect();
    // Named from opposite ends of the measured axes (loud/quiet, bright/dark, dynamic/dense, ...).
    assert_ne!(names[0], names[1]);
    assert!(!names.contains(&"balanced"), "{names:?}");
    for word in names[0].split('-') {
        assert!(!names[1].split('-').any(|w| w == word), "{names:?}");
    }

    // `targets FILE` lists it with numbers.
    let o = run_refmaster([Path::new("targets"), a.as_path()]);
    assert_ok(&o, "refmaster targets FILE");
    for n in &names {
        assert!(stdout(&o).contains(n), "{}", stdout(&o));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn saved_profile_reference_gives_a_bit_identical_master() {
    let dir = temp_dir();
    let mix = repo("references/demo_mix.flac");
    let reference = repo("references/demo_ref.ogg");
    let profile = dir.path().join("demo_ref.profile.json");
    let o = run_refmaster([
        Path::new("analyze"),
        reference.as_path(),
        Path::new("--json"),
        Path::new("-o"),
        profile.as_path(),
        Path::new("--quiet"),
    ]);
    assert_ok(&o, "refmaster analyze --json -o");
    let master = |r: &Path, name: &str| {
        let out = dir.path().join(format!("{name}.wav"));
        let settings = dir.path().join(format!("{name}.settings.json"));
        let o = run_refmaster([
            mix.as_path(),
            Path::new("--ref"),
            r,
            Path::new("-o"),
            out.as_path(),
            Path::new("--settings"),
            settings.as_path(),
            Path::new("--quiet"),
        ]);
        assert_ok(&o, &format!("refmaster --ref {}", r.display()));
        (std::fs::read(out).unwrap(), std::fs::read(settings).unwrap())
    };
    let (audio_a, settings_a) = master(&reference, "from_audio");
    let (audio_b, settings_b) = master(&profile, "from_profile");
    assert!(settings_a == settings_b, "the saved profile solves other settings than the audio");
    assert_eq!(audio_a.len(), audio_b.len());
    assert!(audio_a == audio_b, "the saved-profile reference gives a different master");
}

/// The integrated loudness of target `name` in the built-in model.
fn built_in_target_lufs(name: &str) -> f64 {
    let text = std::fs::read_to_string(repo("models/default.targets.json")).unwrap();
    let model = TargetModel::from_json(&text, Path::new("models/default.targets.json")).unwrap();
    let t = model.find(name).unwrap_or_else(|| panic!("no target {name} in the built-in model"));
    t.profile.loudness.integrated_lufs
}

/// The target name in refmaster's `target: NAME from ...` line.
fn chosen_target(stdout: &str) -> String {
    let line =
        stdout.lines().find(|l| l.starts_with("target: ")).unwrap_or_else(|| panic!("no target line:\n{stdout}"));
    line["target: ".len()..].split_whitespace().next().unwrap().to_string()
}

#[test]
fn no_ref_master_of_the_demo_mix_picks_a_target_and_lands_within_0_3_lu_of_it() {
    let dir = temp_dir();
    let out = dir.path().join("demo.master.wav");
    let mix = repo("references/demo_mix.flac");
    // Run from another folder: the built-in model is compiled in, not read from models/.
    let o = common::refmaster().current_dir(dir.path()).arg(&mix).arg("-o").arg(&out).output().unwrap();
    assert_ok(&o, "refmaster MIX without --ref");
    let text = stdout(&o);
    assert!(text.contains("from the built-in model (nearest of"), "{text}");
    let name = chosen_target(&text);
    let want = built_in_target_lufs(&name);
    let got = ffmpeg_ebur128(&out);
    assert!(
        (got.integrated_lufs - want).abs() <= 0.3,
        "master at {:.1} LUFS by ffmpeg, target {name} at {want:.2} LUFS",
        got.integrated_lufs
    );
    assert!(got.true_peak_dbtp <= -1.0, "true peak {:.1} dBTP by ffmpeg", got.true_peak_dbtp);
}

#[test]
fn target_option_names_a_target_of_the_built_in_model_or_of_a_model_file() {
    let dir = temp_dir();
    let mix = repo("references/demo_mix.flac");
    let text = std::fs::read_to_string(repo("models/default.targets.json")).unwrap();
    let model = TargetModel::from_json(&text, Path::new("default")).unwrap();
    let last = model.targets.last().unwrap().name.clone();
    let dry =
        |target: &str| run_refmaster([mix.as_os_str(), "--dry-run".as_ref(), "--target".as_ref(), target.as_ref()]);
    // By name (any case, spaces for hyphens).
    let o = dry(&last.to_uppercase().replace('-', " "));
    assert_ok(&o, "--target NAME");
    assert_eq!(chosen_target(&stdout(&o)), last);
    assert!(stdout(&o).contains("chosen by name"), "{}", stdout(&o));
    // From a model file: nearest, or named.
    let file = dir.path().join("my.targets.json");
    std::fs::write(&file, &text).unwrap();
    let o = dry(file.to_str().unwrap());
    assert_ok(&o, "--target FILE");
    assert!(stdout(&o).contains(&format!("from {}", file.display())), "{}", stdout(&o));
    let o = dry(&format!("{}:{last}", file.display()));
    assert_ok(&o, "--target FILE:NAME");
    assert_eq!(chosen_target(&stdout(&o)), last);
    // A name that is not there is an error that lists the names.
    let o = dry("no-such-target");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no target `no-such-target`") && err.contains(&last), "{err}");
    // --target and --ref do not mix.
    let o = run_refmaster([mix.as_os_str(), "--ref".as_ref(), mix.as_os_str(), "--target".as_ref(), last.as_ref()]);
    assert!(!o.status.success());
}

#[test]
fn targets_lists_the_built_in_model_with_its_character_in_numbers() {
    let o = run_refmaster(["targets"]);
    assert_ok(&o, "refmaster targets");
    let text = stdout(&o);
    let model = refmaster::learn::default_model().unwrap();
    assert!(text.contains("the built-in model"), "{text}");
    assert!(text.contains("silhouette") && text.contains("euclidean on standardised features"), "{text}");
    for t in &model.targets {
        let row = text.lines().find(|l| l.starts_with(&t.name)).unwrap_or_else(|| panic!("no row for {}", t.name));
        assert!(row.contains(&format!("{:.1}", t.character.lufs)), "{row}");
    }
}

#[test]
fn target_specs_parse_as_name_file_or_file_and_name() {
    assert_eq!(parse_target_spec("loud-dense"), (None, Some("loud-dense".into())));
    assert_eq!(parse_target_spec("my.targets.json"), (Some("my.targets.json".into()), None));
    assert_eq!(
        parse_target_spec("dir/my.targets.JSON:loud"),
        (Some("dir/my.targets.JSON".into()), Some("loud".into()))
    );
    assert_eq!(parse_target_spec("my.json:"), (Some("my.json".into()), None));
}

#[test]
fn kmeans_finds_separated_blobs_and_the_silhouette_scores_them_high() {
    let mut rng = Rng::new(5);
    let centres = [[0.0, 0.0, 0.0], [8.0, 0.0, 1.0], [0.0, 9.0, -2.0]];
    let x: Vec<Vec<f64>> = (0..30).map(|i| centres[i % 3].iter().map(|c| c + 0.5 * rng.gaussian()).collect()).collect();
    let labels = kmeans_labels(&x, 3, 1).unwrap();
    for i in 0..30 {
        assert_eq!(labels[i], labels[i % 3], "point {i} not with its blob");
    }
    assert_eq!(labels, kmeans_labels(&x, 3, 1).unwrap(), "same seed, same labels");
    assert!(silhouette(&x, &labels) > 0.8);
    let bad: Vec<usize> = (0..30).map(|i| (i / 3) % 3).collect();
    assert!(silhouette(&x, &bad) < 0.1);
    // A point alone in its cluster scores 0 (Rousseeuw), not 1.
    let two = vec![vec![0.0], vec![0.1], vec![5.0]];
    let s = silhouette(&two, &[0, 0, 1]);
    let a = 1.0 - 0.1 / 5.0;
    let b = 1.0 - 0.1 / 4.9;
    assert!((s - (a + b) / 3.0).abs() < 1e-12, "{s}");
}
