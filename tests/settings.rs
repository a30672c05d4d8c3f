//! Specifications of settings files: they round-trip exactly, and every corrupt, truncated,
//! out-of-range or wrong-version file is refused with one line naming the file and the field.

mod common;

use std::path::{Path, PathBuf};

use common::{in_dir, run_refmaster, temp_dir};
use refmaster::settings::Settings;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(name)
}

/// Solved settings for the demo pair, as JSON text (dry run: no audio rendered).
fn demo_settings_json(dir: &tempfile::TempDir) -> String {
    let path = in_dir(dir, "s.json");
    let o = run_refmaster([
        shipped("demo_mix.flac").as_os_str(),
        "--ref".as_ref(),
        shipped("demo_ref.ogg").as_os_str(),
        "--dry-run".as_ref(),
        "--settings".as_ref(),
        path.as_os_str(),
        "--quiet".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(path).expect("settings written")
}

/// Runs `apply` with `json` as the settings file; returns (success, stderr).
fn apply_with(dir: &tempfile::TempDir, json: &str) -> (bool, String, PathBuf) {
    let settings = in_dir(dir, "edited.json");
    std::fs::write(&settings, json).expect("write settings");
    let out = in_dir(dir, "out.wav");
    let o = run_refmaster([
        "apply".as_ref(),
        shipped("demo_mix.flac").as_os_str(),
        "--settings".as_ref(),
        settings.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned(), out)
}

fn assert_refused(dir: &tempfile::TempDir, json: &str, must_mention: &[&str]) {
    let (ok, stderr, out) = apply_with(dir, json);
    assert!(!ok, "accepted bad settings: {json:.200}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].contains("edited.json"), "error does not name the file: {stderr}");
    for m in must_mention {
        assert!(lines[0].contains(m), "error does not mention `{m}`: {stderr}");
    }
    assert!(!out.exists(), "an output was written despite the error");
}

fn edit(json: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    f(&mut v);
    serde_json::to_string_pretty(&v).expect("serialise")
}

#[test]
fn settings_json_round_trips_exactly() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    let s = Settings::from_json(&text, "s.json").expect("parses");
    let again = Settings::from_json(&s.to_json(), "again").expect("parses again");
    assert_eq!(s, again);
}

#[test]
fn corrupt_settings_file_is_refused() {
    let dir = temp_dir();
    assert_refused(&dir, "{ this is not json", &["not valid JSON"]);
}

#[test]
fn truncated_settings_file_is_refused() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    assert_refused(&dir, &text[..text.len() / 2], &["not valid JSON"]);
}

#[test]
fn unknown_settings_version_is_refused_naming_the_version() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    assert_refused(&dir, &edit(&text, |v| v["version"] = 99.into()), &["version", "99"]);
}

#[test]
fn missing_field_is_refused_naming_it() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    let json = edit(&text, |v| {
        v["limiter"].as_object_mut().expect("limiter object").remove("ceiling_dbtp");
    });
    assert_refused(&dir, &json, &["ceiling_dbtp"]);
}

#[test]
fn out_of_range_values_are_refused_naming_the_field() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    let cases: Vec<(String, &str)> = vec![
        (edit(&text, |v| v["limiter"]["ceiling_dbtp"] = 3.0.into()), "limiter.ceiling_dbtp"),
        (edit(&text, |v| v["limiter"]["drive_db"] = 80.0.into()), "limiter.drive_db"),
        // A trim after the limiter, never a boost past its ceiling.
        (edit(&text, |v| v["limiter"]["output_trim_db"] = 3.0.into()), "limiter.output_trim_db"),
        (edit(&text, |v| v["eq"]["mid_gain_db"][10] = 40.0.into()), "eq.mid_gain_db[10]"),
        (edit(&text, |v| v["dynamics"]["bands"][2]["ratio"] = 0.5.into()), "dynamics.bands[2].ratio"),
        (edit(&text, |v| v["dynamics"]["bands"][1]["attack_ms"] = (-5.0).into()), "dynamics.bands[1].attack_ms"),
        (edit(&text, |v| v["dynamics"]["crossovers_hz"][0] = 3000.0.into()), "dynamics.crossovers_hz"),
    ];
    for (json, field) in cases {
        assert_refused(&dir, &json, &[field]);
    }
}

#[test]
fn nan_and_infinite_values_are_refused() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    // JSON has no NaN; hand edits produce `NaN` or `1e999` (which parses to infinity).
    let nan = text.replacen("\"drive_db\": ", "\"drive_db\": NaN, \"x\": ", 1);
    assert_refused(&dir, &nan, &["not valid JSON"]);
    let inf = edit(&text, |v| v["limiter"]["release_ms"] = serde_json::Value::Null);
    assert_refused(&dir, &inf, &["release_ms"]);
    let huge = text.replacen("\"lookahead_ms\": ", "\"lookahead_ms\": 1e999, \"y\": ", 1);
    let (ok, stderr, _) = apply_with(&dir, &huge);
    assert!(!ok, "accepted an infinite look-ahead");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn hand_edited_valid_settings_are_accepted_and_applied() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    let json = edit(&text, |v| {
        v["limiter"]["ceiling_dbtp"] = (-2.0).into();
        v["eq"]["enabled"] = false.into();
    });
    let (ok, stderr, out) = apply_with(&dir, &json);
    assert!(ok, "{stderr}");
    let m = common::ffmpeg_ebur128(&out);
    assert!(m.true_peak_dbtp <= -2.0, "edited ceiling not honoured: {:.2} dBTP", m.true_peak_dbtp);
}

#[test]
fn a_misspelt_stage_key_is_refused_with_the_key_and_a_suggestion_not_applied_with_the_stage_off() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    let json = edit(&text, |v| {
        let o = v.as_object_mut().expect("settings object");
        let sat = o.remove("saturation").expect("saturation present");
        o.insert("saturatoin".into(), sat);
    });
    assert_refused(&dir, &json, &["saturatoin", "did you mean `saturation`"]);
}

#[test]
fn an_unknown_key_inside_a_stage_is_refused_naming_its_path() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    let json = edit(&text, |v| v["limiter"]["celing_dbtp_extra"] = 1.0.into());
    assert_refused(&dir, &json, &["limiter", "celing_dbtp_extra"]);
}

#[test]
fn width_bands_out_of_order_are_refused_naming_the_band() {
    let dir = temp_dir();
    let text = demo_settings_json(&dir);
    let json = edit(&text, |v| {
        let bands = v["width"]["bands"].as_array_mut().expect("width bands");
        assert!(bands.len() >= 2, "the demo's width stage has several bands");
        bands.swap(0, 1);
    });
    assert_refused(&dir, &json, &["width.bands[1]", "ascend"]);
}
