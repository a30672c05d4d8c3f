//! The studio page in a real browser: Debian's headless Chromium, driven by puppeteer-core
//! (pinned in tests/web/package.json + package-lock.json), chooses the demo mix and reference,
//! waits for the master, plays and switches A/B, changes the amount, downloads, and takes
//! desktop and phone screenshots (target/web-screenshots/).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn the_studio_page_masters_plays_level_matched_ab_remasters_and_downloads_in_headless_chromium() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(node_ok, "node is missing: install it (apt-get install nodejs npm; .ci/run does)");
    assert!(Path::new("/usr/bin/chromium").exists(), "chromium is missing: apt-get install chromium");
    if !web.join("node_modules/puppeteer-core").exists() {
        let npm = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&web)
            .env("PUPPETEER_SKIP_DOWNLOAD", "1")
            .status()
            .expect("run npm (apt-get install npm)");
        assert!(npm.success(), "npm ci failed in tests/web");
    }
    let tmp = common::temp_dir();
    let mut server = common::refmaster()
        .args(["serve", "--port", "0", "--jobs", "2"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start refmaster serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("address line");
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("URL").to_string();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(web.join("studio.mjs"))
        .arg(&url)
        .arg(root.join("references/demo_mix.flac"))
        .arg(root.join("references/demo_ref.ogg"))
        .arg(&shots)
        .output()
        .expect("run node");
    let pid = libc::pid_t::try_from(server.id()).unwrap_or(0);
    // SAFETY: kill(2) on the child this test started and has not yet reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("PASS"), "the browser test failed (see above)");
    for shot in ["desktop.png", "phone.png"] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
}
