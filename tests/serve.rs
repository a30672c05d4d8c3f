//! `refmaster serve`: the web app's JSON API, driven over real HTTP against the binary started
//! on an ephemeral port. Same inputs and options give the command line's master bit for bit;
//! bad uploads get the command line's message; foreign hosts and other sites are refused; a
//! burst of jobs is queued within the memory budget; an oversized upload leaves nothing behind.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{refmaster, run_refmaster, temp_dir};

const DEMO_MIX: &str = "references/demo_mix.flac";
const DEMO_REF: &str = "references/demo_ref.ogg";

/// A running server, stopped with SIGTERM (its clean exit) when dropped.
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    /// The TMPDIR it was given (its private folder is made in here).
    tmp: tempfile::TempDir,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let tmp = temp_dir();
        let mut child = refmaster()
            .arg("serve")
            .args(["--port", "0"])
            .args(args)
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start refmaster serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the address line");
        let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("the server prints its URL");
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        Server { child, addr, tmp }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The job folders in the server's private temporary folder.
    fn job_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for root in std::fs::read_dir(self.tmp.path()).expect("tmp").flatten() {
            if let Ok(entries) = std::fs::read_dir(root.path()) {
                out.extend(entries.flatten().map(|e| e.path()));
            }
        }
        out
    }
}

impl Server {
    /// SIGTERM: the server's own shutdown, which removes its temporary folder.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
            if pid > 0 {
                // SAFETY: kill(2) on the child this test started and has not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection. `headers` may override Host.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head += &format!("Host: {addr}\r\n");
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding")) {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).expect("send head");
    // The server may answer (413) before reading the whole body: a failed write is not an error.
    let _ = s.write_all(body);
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).expect("status");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

const BOUNDARY: &str = "refmaster-test-boundary-7f3a9c";

/// A multipart body: (field, Some(file name) or None, bytes).
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn post_job(addr: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Response {
    request(addr, "POST", "/api/jobs", &[("Content-Type", &content_type())], &multipart(parts))
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Polls a job until it is done or failed.
fn wait_for(addr: &str, id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let r = request(addr, "GET", &format!("/api/jobs/{id}"), &[], b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let s = r.json();
        if s["state"] == "done" || s["state"] == "failed" {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(900), "job {id} never finished: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn peak_memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM value")
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

#[test]
fn a_job_through_the_api_writes_the_command_lines_master_bit_for_bit_with_settings_and_report() {
    let server = Server::start(&[]);
    let options = r#"{"amount": 80, "bits": 16, "no_width": true}"#;
    let r = post_job(
        &server.addr,
        &[
            ("mix", Some("demo_mix.flac"), &read(DEMO_MIX)),
            ("reference", Some("demo_ref.ogg"), &read(DEMO_REF)),
            ("options", None, options.as_bytes()),
        ],
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let created = r.json();
    let id = created["id"].as_str().expect("id");
    assert_eq!(id.len(), 32, "128 bits as hex");
    assert_eq!(created["url"], format!("/api/jobs/{id}"));
    let status = wait_for(&server.addr, id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["progress"], 1.0);
    let result = &status["result"];

    let dir = temp_dir();
    let (out, settings) = (dir.path().join("cli.wav"), dir.path().join("cli.json"));
    let cli = run_refmaster([
        DEMO_MIX.as_ref(),
        "--ref".as_ref(),
        DEMO_REF.as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--settings".as_ref(),
        settings.as_os_str(),
        "--amount".as_ref(),
        "80".as_ref(),
        "--bits".as_ref(),
        "16".as_ref(),
        "--no-width".as_ref(),
        "-q".as_ref(),
    ]);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));

    let file = |name: &str| {
        let url = result["files"][name].as_str().unwrap_or_else(|| panic!("no {name} in {result}"));
        let r = request(&server.addr, "GET", url, &[], b"");
        assert_eq!(r.status, 200, "{name}: {}", String::from_utf8_lossy(&r.body));
        r
    };
    let master = file("master");
    assert_eq!(master.header("content-type"), Some("audio/wav"));
    assert!(master.header("content-disposition").is_some_and(|d| d.contains("demo_mix.master.wav")));
    let cli_master = std::fs::read(&out).expect("cli master");
    assert!(master.body == cli_master, "the API's master differs from the command line's");
    assert_eq!(file("settings").body, std::fs::read(&settings).expect("cli settings"));
    let report = String::from_utf8(file("report").body).expect("report is text");
    assert!(report.contains("<svg") && report.contains("refmaster report"), "the report has its plots");
    for format in ["apo", "ffmpeg"] {
        assert!(!file(format).body.is_empty(), "{format} export");
    }

    // The numbers are the master's, as the command line measures it.
    let analyzed = common::analyze_json(&out);
    let lufs = result["integrated_lufs"].as_f64().expect("lufs");
    // 16-bit TPDF dither lies some 90 dB under the programme: it moves the integrated loudness by far
    // less than 0.01 LU.
    assert!((lufs - analyzed["loudness"]["integrated_lufs"].as_f64().expect("cli lufs")).abs() < 0.01);
    assert!(result["notes"].is_array() && result["chain"].as_str().is_some_and(|c| c.contains("EQ")));

    // Deleting the job removes its files.
    let before = server.job_dirs().len();
    let r = request(&server.addr, "DELETE", &format!("/api/jobs/{id}"), &[], b"");
    assert_eq!(r.status, 204);
    assert_eq!(server.job_dirs().len(), before - 1, "the job's folder is removed");
    assert_eq!(request(&server.addr, "GET", &format!("/api/jobs/{id}"), &[], b"").status, 404);
}

#[test]
fn a_corrupt_upload_fails_with_the_command_lines_message_naming_the_uploaded_file() {
    let dir = temp_dir();
    let corrupt = dir.path().join("my song.flac");
    let mut bytes = b"fLaC".to_vec();
    let mut rng = common::Rng::new(19);
    bytes.extend((0..4000).map(|_| (rng.next_u64() >> 56) as u8));
    std::fs::write(&corrupt, &bytes).expect("write");
    let cli = run_refmaster([
        corrupt.as_os_str(),
        "--ref".as_ref(),
        DEMO_REF.as_ref(),
        "-o".as_ref(),
        dir.path().join("o.wav").as_os_str(),
    ]);
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    let cli_message = stderr.trim().strip_prefix("refmaster: error: ").expect("the CLI's error line").to_string();
    let expected = cli_message.replace(&corrupt.display().to_string(), "my song.flac");
    assert!(expected.starts_with("my song.flac: "), "{expected}");

    let server = Server::start(&[]);
    let r = post_job(
        &server.addr,
        &[("mix", Some("my song.flac"), &bytes), ("reference", Some("ref.ogg"), &read(DEMO_REF))],
    );
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().expect("id").to_string();
    let status = wait_for(&server.addr, &id);
    assert_eq!(status["state"], "failed");
    assert_eq!(status["error"], expected.as_str());
    let r = request(&server.addr, "GET", &format!("/api/jobs/{id}/files/master"), &[], b"");
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"], expected.as_str());

    // Options are checked before anything runs, in the command line's words.
    let r =
        post_job(&server.addr, &[("mix", Some("m.flac"), &read(DEMO_MIX)), ("options", None, br#"{"amount": 150}"#)]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "--amount: 150 is outside 0..100 %");
    let r =
        post_job(&server.addr, &[("mix", Some("m.flac"), &read(DEMO_MIX)), ("options", None, br#"{"max_eq_dB": 6}"#)]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("did you mean `max_eq_db`")));
    // A target is a built-in name, never a path on the server.
    let r = post_job(
        &server.addr,
        &[("mix", Some("m.flac"), &read(DEMO_MIX)), ("options", None, br#"{"target": "/etc/passwd"}"#)],
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.starts_with("--target: ")));
}

#[test]
fn a_foreign_host_and_a_cross_site_origin_are_refused() {
    let server = Server::start(&[]);
    let port = server.addr.rsplit(':').next().expect("port");
    // DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1.
    let rebound = format!("evil.example:{port}");
    let r = request(&server.addr, "GET", "/api/info", &[("Host", &rebound)], b"");
    assert_eq!(r.status, 421);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("evil.example")));
    assert_eq!(request(&server.addr, "GET", "/", &[("Host", &rebound)], b"").status, 421);
    let localhost = format!("localhost:{port}");
    assert_eq!(request(&server.addr, "GET", "/api/info", &[("Host", &localhost)], b"").status, 200);

    // A cross-site page posting a job or deleting one.
    let body = multipart(&[("mix", Some("m.flac"), &read(DEMO_MIX))]);
    let ct = content_type();
    let evil = [("Content-Type", ct.as_str()), ("Origin", "http://evil.example")];
    let r = request(&server.addr, "POST", "/api/jobs", &evil, &body);
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("another site")));
    assert!(server.job_dirs().is_empty(), "nothing was saved");
    let cross = [("Content-Type", ct.as_str()), ("Sec-Fetch-Site", "cross-site")];
    assert_eq!(request(&server.addr, "POST", "/api/jobs", &cross, &body).status, 403);

    // The page itself (same origin) may; and a cross-site DELETE of its job is refused.
    let own = format!("http://{}", server.addr);
    let same = [("Content-Type", ct.as_str()), ("Origin", own.as_str())];
    let r = request(&server.addr, "POST", "/api/jobs", &same, &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = request(&server.addr, "DELETE", &format!("/api/jobs/{id}"), &[("Origin", "http://evil.example")], b"");
    assert_eq!(r.status, 403);
    assert_eq!(request(&server.addr, "GET", &format!("/api/jobs/{id}"), &[], b"").status, 200);
    wait_for(&server.addr, &id);
    // An id that is not one of the server's is not found, whatever its form.
    for bad in ["0123456789abcdef0123456789abcdef", "../../etc", "%2e%2e%2fetc"] {
        assert_eq!(request(&server.addr, "GET", &format!("/api/jobs/{bad}"), &[], b"").status, 404, "{bad}");
    }
}

#[test]
fn four_jobs_posted_at_once_all_finish_and_the_server_stays_within_its_memory_budget() {
    // One job's peak as the command line measures it (its whole process).
    let dir = temp_dir();
    // The same job the server runs: master, settings, report and every export.
    let cli = refmaster()
        .args([DEMO_MIX, "--ref", DEMO_REF, "-q", "--export", "all", "--settings"])
        .arg(dir.path().join("one.json"))
        .arg("--report")
        .arg(dir.path().join("one.html"))
        .arg("-o")
        .arg(dir.path().join("one.wav"))
        .env("REFMASTER_TIMING", "1")
        .output()
        .expect("run");
    assert!(cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    let one_job_kib: u64 = stderr
        .lines()
        .find_map(|l| l.split("peak memory ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory line in {stderr}"));

    let jobs = 2u64;
    let server = Server::start(&["--jobs", "2"]);
    let idle_kib = resident_kib(server.pid());
    let (mix, reference) = (read(DEMO_MIX), read(DEMO_REF));
    let ids: Vec<String> = std::thread::scope(|s| {
        let posts: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let r = post_job(
                        &server.addr,
                        &[("mix", Some("mix.flac"), &mix), ("reference", Some("ref.ogg"), &reference)],
                    );
                    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
                    r.json()["id"].as_str().expect("id").to_string()
                })
            })
            .collect();
        posts.into_iter().map(|p| p.join().expect("post")).collect()
    });
    let mut masters = Vec::new();
    for id in &ids {
        let s = wait_for(&server.addr, id);
        assert_eq!(s["state"], "done", "{s}");
        let r = request(&server.addr, "GET", &format!("/api/jobs/{id}/files/master"), &[], b"");
        masters.push(r.body);
    }
    assert!(masters.windows(2).all(|w| w[0] == w[1]), "the same job gives the same master every time");
    assert!(masters[0] == std::fs::read(dir.path().join("one.wav")).expect("cli master"));
    // The budget: the idle server plus --jobs whole command-line runs of this job, plus one more
    // job's worth for the allocator's per-thread arenas (each blocking thread keeps the memory
    // its job freed; measured 98-113 MiB against 2 x 40-44 MiB of command-line runs). Four
    // jobs run at once, as without the queue, would need four jobs' memory: over this bound.
    let budget_kib = idle_kib + (jobs + 1) * one_job_kib;
    let peak_kib = peak_memory_kib(server.pid());
    eprintln!(
        "server peak {peak_kib} KiB; idle {idle_kib} KiB; one CLI job {one_job_kib} KiB; budget {budget_kib} KiB"
    );
    assert!(peak_kib <= budget_kib, "server peak {peak_kib} KiB over its budget {budget_kib} KiB");
}

#[test]
fn an_upload_over_the_limit_gets_413_and_leaves_nothing_on_disk() {
    let server = Server::start(&["--max-upload-mb", "1"]);
    let mix = read(DEMO_MIX);
    assert!(mix.len() > 1 << 20, "the demo mix is larger than the 1 MiB limit");
    // Declared too large: refused before the body is read.
    let r = post_job(&server.addr, &[("mix", Some("mix.flac"), &mix)]);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("--max-upload-mb")));
    assert!(server.job_dirs().is_empty(), "nothing on disk: {:?}", server.job_dirs());

    // Streamed without a declared length: refused when the limit is passed, partial file removed.
    let body = multipart(&[("mix", Some("mix.flac"), &mix)]);
    let mut chunked = Vec::new();
    for c in body.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let ct = content_type();
    let r = request(
        &server.addr,
        "POST",
        "/api/jobs",
        &[("Content-Type", &ct), ("Transfer-Encoding", "chunked")],
        &chunked,
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(server.job_dirs().is_empty(), "nothing on disk: {:?}", server.job_dirs());

    // Under the limit is taken.
    let small = read(DEMO_REF);
    let r = post_job(&server.addr, &[("mix", Some("ref.ogg"), &small)]);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary_with_a_strict_content_policy() {
    let server = Server::start(&[]);
    let page = request(&server.addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("refmaster") && html.contains("/app.js"));
    assert!(!html.contains("https://"), "nothing from the network");
    assert!(page.header("content-security-policy").is_some_and(|c| c.contains("default-src 'self'")));
    for asset in ["/app.js", "/app.css"] {
        assert_eq!(request(&server.addr, "GET", asset, &[], b"").status, 200, "{asset}");
    }
    let info = request(&server.addr, "GET", "/api/info", &[], b"").json();
    assert!(info["platforms"].as_array().is_some_and(|p| p.iter().any(|x| x["name"] == "spotify")));
}

/// The server's private folder goes when it stops.
#[test]
fn the_servers_temporary_folder_is_removed_when_it_stops() {
    let mut server = Server::start(&[]);
    let r = post_job(
        &server.addr,
        &[("mix", Some("m.flac"), &read(DEMO_MIX)), ("reference", Some("r.ogg"), &read(DEMO_REF))],
    );
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().expect("id").to_string();
    wait_for(&server.addr, &id);
    let tmp: PathBuf = server.tmp.path().to_path_buf();
    let roots: Vec<PathBuf> = std::fs::read_dir(&tmp).expect("tmp").flatten().map(|e| e.path()).collect();
    assert_eq!(roots.len(), 1);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&roots[0]).expect("meta").permissions());
    assert_eq!(mode & 0o777, 0o700, "private to the user");
    server.stop();
    assert!(!roots[0].exists(), "removed on exit");
}
