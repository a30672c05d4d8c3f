//! Specifications of what refmaster shows and hands the user besides the master: the HTML report
//! (`--report`), the spectrum PNG (`--plot`), the loudness-matched previews (`--preview`), the
//! delivery targets (`--platform`) and the terminal output (piped and `--quiet`). Loudness claims
//! about written files are checked with ffmpeg's ebur128 filter, the report's rendering with
//! headless Chromium (Debian's `chromium`); both tests fail, never skip, without those tools.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{analyze_json, ffmpeg_ebur128, in_dir, kellet_pink, run_refmaster, temp_dir, write_wav_f32};
use refmaster::analysis::Profile;
use refmaster::report::{tonal_balance, TONAL_BANDS};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(name)
}

/// Masters the shipped demo pair with `extra` options into `dir/master.wav`; panics on failure.
fn master_demo(dir: &tempfile::TempDir, extra: &[&str]) -> (PathBuf, Output) {
    let out = in_dir(dir, "master.wav");
    let mut cmd = common::refmaster();
    cmd.arg(shipped("demo_mix.flac")).arg("--ref").arg(shipped("demo_ref.ogg")).arg("-o").arg(&out);
    cmd.args(extra).env_remove("REFMASTER_TIMING");
    let o = cmd.output().expect("run refmaster");
    assert!(o.status.success(), "refmaster failed:\n{}", String::from_utf8_lossy(&o.stderr));
    (out, o)
}

fn profile_of(path: &Path) -> Profile {
    serde_json::from_value(analyze_json(path)).expect("analyze --json is a profile")
}

fn db1(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-inf".into()
    }
}

/// The three cells (mix, reference, master) of the report table's row `key`.
fn table_row(html: &str, key: &str) -> Vec<String> {
    let start = html.find(&format!("<tr data-row=\"{key}\">")).unwrap_or_else(|| panic!("no table row {key}"));
    let row = &html[start..start + html[start..].find("</tr>").expect("row end")];
    row.split("<td")
        .skip(1)
        .map(|c| c[c.find('>').expect("td") + 1..c.find("</td>").expect("td end")].to_string())
        .collect()
}

#[test]
fn html_report_is_self_contained_has_four_plots_and_its_numbers_equal_the_json_profiles() {
    let dir = temp_dir();
    let report = in_dir(&dir, "report.html");
    let plot = in_dir(&dir, "spectrum.png");
    // 32-bit float output: the file holds exactly the samples the report measured.
    let (master, o) = master_demo(
        &dir,
        &["--bits", "32f", "--report", report.to_str().expect("utf-8"), "--plot", plot.to_str().expect("utf-8")],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("wrote {}", report.display())), "{stdout}");
    assert!(stdout.contains(&format!("wrote {}", plot.display())), "{stdout}");
    let html = std::fs::read_to_string(&report).expect("report written");
    let lower = html.to_ascii_lowercase();
    for banned in ["http://", "https://", "<script", "<link", "<img", "@import", "url(http", "src="] {
        assert!(!lower.contains(banned), "report is not self-contained: it contains `{banned}`");
    }
    assert!(html.matches("<svg").count() >= 4, "fewer than 4 inline SVG plots");
    for section in
        ["Spectrum", "EQ applied", "Loudness and limiting over time", "Numbers", "Settings", "Warnings and notes"]
    {
        assert!(html.contains(&format!("<h2>{section}</h2>")), "no {section} section");
    }
    assert!(html.contains("limiter: drive"), "settings in words missing");
    assert!(html.contains("warning: the reference is lossy"), "warnings missing");

    let columns = [profile_of(&shipped("demo_mix.flac")), profile_of(&shipped("demo_ref.ogg")), profile_of(&master)];
    type Row = (&'static str, fn(&Profile) -> String);
    let rows: [Row; 5] = [
        ("integrated_lufs", |p| db1(p.loudness.integrated_lufs)),
        ("true_peak_dbtp", |p| db1(p.loudness.true_peak_dbtp)),
        ("range_lu", |p| format!("{:.1}", p.loudness.range_lu)),
        ("plr_db", |p| format!("{:.1}", p.loudness.plr_db)),
        ("width_db", |p| db1(p.stereo.width_db)),
    ];
    for (key, f) in rows {
        let want: Vec<String> = columns.iter().map(f).collect();
        assert_eq!(table_row(&html, key), want, "row {key} (mix, reference, master)");
    }
    for (i, (band, _, _)) in TONAL_BANDS.iter().enumerate() {
        let want: Vec<String> = columns.iter().map(|p| format!("{:+.1}", tonal_balance(p)[i])).collect();
        assert_eq!(table_row(&html, &format!("tone_{i}")), want, "tonal balance {band}");
    }
    // The same numbers as the text report printed.
    let integrated_line = stdout.lines().find(|l| l.starts_with("integrated (LUFS)")).expect("text table");
    let text_cells: Vec<&str> = integrated_line.split_whitespace().skip(2).collect();
    assert_eq!(text_cells, table_row(&html, "integrated_lufs"));

    let png = decode_png(&plot);
    assert!(png.width >= 1000 && png.height >= 600, "plot is {}x{}", png.width, png.height);
    let inked = png.fraction(0, 0, png.width, png.height, |[r, g, b]| r < 200 || g < 200 || b < 200);
    assert!(inked > 0.01, "spectrum PNG is nearly blank ({:.3} inked)", inked);
    for (name, rgb) in [("mix", [0, 114, 178]), ("reference", [230, 159, 0]), ("master", [0, 158, 115])] {
        assert!(png.count_near(rgb) > 200, "the {name} line is missing from the PNG");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

#[test]
fn previews_cut_the_loudest_30_seconds_and_measure_within_half_a_lu_of_each_other_by_ffmpeg() {
    // The shipped demo (20 s: taken whole).
    let dir = temp_dir();
    let (_, o) = master_demo(&dir, &["--preview"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let (pm, pw) = (in_dir(&dir, "master.preview-mix.wav"), in_dir(&dir, "master.preview-master.wav"));
    for p in [&pm, &pw] {
        assert!(stdout.contains(&format!("wrote {}", p.display())), "{} not announced:\n{stdout}", p.display());
    }
    let (a, b) = (ffmpeg_ebur128(&pm), ffmpeg_ebur128(&pw));
    assert!(
        (a.integrated_lufs - b.integrated_lufs).abs() <= 0.5,
        "ffmpeg: mix preview {:.1} LUFS, master preview {:.1} LUFS",
        a.integrated_lufs,
        b.integrated_lufs
    );
    assert!(b.true_peak_dbtp <= -1.0, "master preview peaks at {:.1} dBTP", b.true_peak_dbtp);

    // A 50 s mix, quiet for 25 s then loud: the excerpt is 30 s inside the loud part's reach.
    let rate = 44_100;
    let n = 50 * rate as usize;
    let mut l = kellet_pink(7, n, -20.0);
    let mut r = kellet_pink(8, n, -20.0);
    for ch in [&mut l, &mut r] {
        for x in &mut ch[..25 * rate as usize] {
            *x *= 0.1;
        }
    }
    let mix = in_dir(&dir, "long_mix.wav");
    write_wav_f32(&mix, rate, &[l, r]);
    let out = in_dir(&dir, "long.wav");
    let o = run_refmaster([
        mix.as_os_str(),
        "--ref".as_ref(),
        shipped("demo_ref.ogg").as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--preview".as_ref(),
        "--quiet".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for name in ["long.preview-mix.wav", "long.preview-master.wav"] {
        let reader = hound::WavReader::open(in_dir(&dir, name)).expect("preview is a WAV");
        let seconds = f64::from(reader.duration()) / f64::from(reader.spec().sample_rate);
        assert!((seconds - 30.0).abs() < 0.01, "{name} lasts {seconds:.3} s");
    }
    let (a, b) = (
        ffmpeg_ebur128(&in_dir(&dir, "long.preview-mix.wav")),
        ffmpeg_ebur128(&in_dir(&dir, "long.preview-master.wav")),
    );
    assert!(
        (a.integrated_lufs - b.integrated_lufs).abs() <= 0.5,
        "{:.1} vs {:.1}",
        a.integrated_lufs,
        b.integrated_lufs
    );
    // The loud part is the last 25 s, so the loudest 30 s window is 20-50 s: the excerpt is
    // loud but for its first seconds.
    let series = analyze_json(&in_dir(&dir, "long.preview-mix.wav"))["loudness"]["short_term_series_lufs"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect::<Vec<_>>();
    let top = series.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let loud = series.iter().filter(|&&v| v > top - 6.0).count();
    assert!(loud * 10 >= series.len() * 7, "only {loud} of {} seconds of the excerpt are the loud part", series.len());
    assert!(series.last().is_some_and(|&v| v > top - 6.0), "the excerpt should end in the loud part");
}

#[test]
fn platform_apple_masters_the_demo_to_minus_16_lufs_under_minus_1_dbtp_by_ffmpeg() {
    let dir = temp_dir();
    let (out, o) = master_demo(&dir, &["--platform", "apple"]);
    let m = ffmpeg_ebur128(&out);
    assert!((m.integrated_lufs + 16.0).abs() <= 0.3, "ffmpeg reads {:.2} LUFS", m.integrated_lufs);
    assert!(m.true_peak_dbtp <= -1.0, "ffmpeg reads {:.2} dBTP", m.true_peak_dbtp);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("playback: Apple Music: 0.0 dB (at its -16 LUFS target)"), "{stdout}");
    assert!(stdout.contains("playback: Spotify:"), "{stdout}");
}

/// The target and ceiling a dry run solves (read from `--settings`).
fn solved_target(extra: &[&str]) -> (f64, f64) {
    let dir = temp_dir();
    let s = in_dir(&dir, "s.json");
    let mut args: Vec<std::ffi::OsString> = vec![
        shipped("demo_mix.flac").into(),
        "--ref".into(),
        shipped("demo_ref.ogg").into(),
        "--dry-run".into(),
        // The demo reference is louder than the loudness-war guard allows; lift the guard so the
        // target in the settings is the one the options chose, not the guard's.
        "--allow-crush".into(),
        "--quiet".into(),
        "--settings".into(),
        s.clone().into(),
    ];
    args.extend(extra.iter().map(std::ffi::OsString::from));
    let o = run_refmaster(args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&s).expect("settings")).expect("json");
    let l = &v["limiter"];
    (l["target_lufs"].as_f64().expect("target"), l["ceiling_dbtp"].as_f64().expect("ceiling"))
}

#[test]
fn explicit_lufs_and_ceiling_override_the_platform_which_overrides_the_defaults() {
    let reference = profile_of(&shipped("demo_ref.ogg")).loudness.integrated_lufs;
    let near = |(a, b): (f64, f64), (x, y): (f64, f64)| (a - x).abs() < 1e-9 && (b - y).abs() < 1e-9;
    let got = solved_target(&[]);
    assert!(near(got, (reference, -1.0)), "defaults: {got:?}");
    let got = solved_target(&["--platform", "deezer"]);
    assert!(near(got, (-15.0, -1.0)), "deezer: {got:?}");
    let got = solved_target(&["--platform", "club"]);
    assert!(near(got, (reference, -0.3)), "club: {got:?}");
    let got = solved_target(&["--platform", "spotify", "--lufs", "-12", "--ceiling", "-2"]);
    assert!(near(got, (-12.0, -2.0)), "explicit over platform: {got:?}");
    let o = run_refmaster(["x.wav", "--ref", "y.wav", "--platform", "napster"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("soundcloud"), "the error lists the platforms");
}

#[test]
fn piped_output_has_no_terminal_escape_codes() {
    let dir = temp_dir();
    let report = in_dir(&dir, "r.html");
    // `output()` pipes stdout and stderr, as `refmaster ... 2>&1 | cat` does.
    let (_, o) =
        master_demo(&dir, &["--report", report.to_str().expect("utf-8"), "--preview", "--platform", "spotify"]);
    for (name, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        assert!(!bytes.windows(2).any(|w| w == b"\x1b["), "{name} holds escape codes");
        assert!(!bytes.contains(&b'\r'), "{name} redraws lines (carriage returns)");
    }
    assert!(!o.stdout.is_empty(), "the normal run prints its report");
}

#[test]
fn quiet_prints_nothing_on_success() {
    let dir = temp_dir();
    let report = in_dir(&dir, "r.html");
    let plot = in_dir(&dir, "p.png");
    let (_, o) = master_demo(
        &dir,
        &[
            "--quiet",
            "--report",
            report.to_str().expect("utf-8"),
            "--plot",
            plot.to_str().expect("utf-8"),
            "--preview",
            "--platform",
            "youtube",
        ],
    );
    assert!(o.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&o.stdout));
    assert!(o.stderr.is_empty(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    assert!(report.is_file() && plot.is_file() && in_dir(&dir, "master.preview-master.wav").is_file());
}

#[test]
fn report_plot_and_preview_are_refused_with_dry_run() {
    let dir = temp_dir();
    let out = in_dir(&dir, "m.wav");
    let o = run_refmaster([
        shipped("demo_mix.flac").as_os_str(),
        "--ref".as_ref(),
        shipped("demo_ref.ogg").as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--dry-run".as_ref(),
        "--preview".as_ref(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--dry-run"));
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium
// ---------------------------------------------------------------------------------------------

/// Debian's Chromium, or a panic saying how to install it (this test fails, never skips).
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(o) = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output() {
            let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success() && !p.is_empty() {
                return PathBuf::from(p);
            }
        }
    }
    panic!(
        "headless Chromium is required by this test but was not found on PATH: install it \
         (`apt-get install chromium`; .ci/run does this)"
    );
}

/// Runs headless Chromium on `page`, screenshotting it to `shot` at 1200×2400, with the page's
/// console logged to stderr. Returns stderr. A hung browser is killed after two minutes (a guard
/// against hanging CI, not a timing assertion).
fn screenshot(page: &Path, shot: &Path) -> String {
    let profile = temp_dir();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1200,2400")
        .arg(format!("file://{}", page.canonicalize().expect("page path").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait chromium").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish rendering {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = reader.join().unwrap_or_default();
    assert!(shot.is_file(), "chromium wrote no screenshot:\n{log}");
    log
}

/// Console messages (errors, warnings, logs) Chromium reported for the page.
fn console_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

struct Rgb {
    width: u32,
    height: u32,
    data: Vec<[u8; 3]>,
}

impl Rgb {
    fn fraction(&self, x0: u32, y0: u32, x1: u32, y1: u32, f: impl Fn([u8; 3]) -> bool) -> f64 {
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        let mut hit = 0usize;
        let mut all = 0usize;
        for y in y0..y1 {
            for x in x0..x1 {
                all += 1;
                hit += usize::from(f(self.data[(y * self.width + x) as usize]));
            }
        }
        hit as f64 / all.max(1) as f64
    }
    fn count_near(&self, rgb: [i32; 3]) -> usize {
        self.data.iter().filter(|p| p.iter().zip(rgb).all(|(&c, w)| (i32::from(c) - w).abs() <= 24)).count()
    }
}

fn decode_png(path: &Path) -> Rgb {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("open PNG")));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "8-bit PNG expected");
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let data = buf[..info.buffer_size()].chunks(step).map(|c| [c[0], c[1], c[2]]).collect();
    Rgb { width: info.width, height: info.height, data }
}

#[test]
fn headless_chromium_renders_the_report_plots_without_console_errors() {
    let dir = temp_dir();
    let report = in_dir(&dir, "report.html");
    master_demo(&dir, &["--report", report.to_str().expect("utf-8"), "--preview", "--quiet"]);

    // The console check must be able to fail: a broken page is caught.
    let broken = in_dir(&dir, "broken.html");
    std::fs::write(&broken, "<!DOCTYPE html><html><body><script>console.error('x'); nope();</script></body></html>")
        .expect("write page");
    let log = screenshot(&broken, &in_dir(&dir, "broken.png"));
    assert!(
        !console_lines(&log).is_empty(),
        "chromium's console logging was not seen; the check below would be blind:\n{log}"
    );

    let shot = in_dir(&dir, "shot.png");
    let log = screenshot(&report, &shot);
    let console = console_lines(&log);
    assert!(console.is_empty(), "the report logged to the console:\n{}", console.join("\n"));

    let img = decode_png(&shot);
    assert_eq!((img.width, img.height), (1200, 2400), "screenshot size");
    // The plots fill the page from below the header (~200 px) to past 2000 px; in each 300 px
    // band of that stretch, lines, grid and labels ink a good share of the pixels.
    let inked = |p: [u8; 3]| p.iter().any(|&c| c < 235);
    for y in (200..2000).step_by(300) {
        let f = img.fraction(60, y, 1140, y + 300, inked);
        assert!(f > 0.02, "rows {y}..{} are blank ({:.3} inked): a plot did not render", y + 300, f);
    }
    // The data lines themselves: each series colour is on screen.
    for (name, rgb) in
        [("mix", [0, 114, 178]), ("reference", [230, 159, 0]), ("master", [0, 158, 115]), ("side EQ", [213, 94, 0])]
    {
        let n = img.count_near(rgb);
        assert!(n > 300, "too few {name}-coloured pixels ({n}): its lines are missing");
    }
}
