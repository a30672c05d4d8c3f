//! The server's jobs: where their files live, their state, and the queue that runs them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::export::ExportFormat;
use crate::job::{JobFiles, JobOptions, JobResult, OutputKind};

use super::AppState;

/// A job's id: 128 bits from the operating system's RNG, as 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    /// A fresh id from the OS RNG.
    pub fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// An id as a client sent it, if it has the form of one (nothing else reaches the store).
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An uploaded file: where the server saved it, and the name it had on the user's machine
/// (shown in messages instead of the server's path).
#[derive(Debug, Clone)]
pub struct Upload {
    pub path: PathBuf,
    pub original_name: String,
}

/// What a job reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub mix: Upload,
    pub references: Vec<Upload>,
}

/// A job's state as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// queued, running, done or failed.
    pub state: &'static str,
    /// Fraction of the job's stages started, 0..1.
    pub progress: f64,
    /// What it is doing, in words.
    pub stage: String,
    /// Why it failed, as the command line words it.
    pub error: Option<String>,
    /// Seconds the job ran (from leaving the queue to its end).
    pub seconds: Option<f64>,
    pub result: Option<serde_json::Value>,
}

/// One job.
pub struct Job {
    pub id: JobId,
    /// Its private folder (inputs in `in/`, outputs in `out/`).
    pub dir: PathBuf,
    pub inputs: Inputs,
    pub options: JobOptions,
    pub status: watch::Sender<Status>,
    /// Output files by API name, once done.
    pub files: Mutex<Vec<(String, PathBuf)>>,
    /// When it finished (for the retention sweep).
    pub finished: Mutex<Option<Instant>>,
}

/// Every job, and the server's private folder.
pub struct JobStore {
    /// The private temporary folder (0700), removed on exit.
    root: Mutex<Option<tempfile::TempDir>>,
    root_path: PathBuf,
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    queue: Arc<Semaphore>,
}

impl JobStore {
    pub fn new(concurrent: usize) -> std::io::Result<Self> {
        let root = tempfile::Builder::new().prefix("refmaster-serve-").tempdir()?;
        std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Self {
            root_path: root.path().to_path_buf(),
            root: Mutex::new(Some(root)),
            jobs: Mutex::new(HashMap::new()),
            queue: Arc::new(Semaphore::new(concurrent.max(1))),
        })
    }

    /// A new private folder for a job (0700), with `in/` and `out/`.
    pub fn new_job_dir(&self, id: &JobId) -> std::io::Result<PathBuf> {
        let dir = self.root_path.join(id.as_str());
        std::fs::DirBuilder::new().mode_0700().create(&dir)?;
        std::fs::DirBuilder::new().mode_0700().create(dir.join("in"))?;
        std::fs::DirBuilder::new().mode_0700().create(dir.join("out"))?;
        Ok(dir)
    }

    pub fn get(&self, id: &JobId) -> Option<Arc<Job>> {
        self.jobs.lock().ok()?.get(id).cloned()
    }

    fn insert(&self, job: Arc<Job>) {
        if let Ok(mut m) = self.jobs.lock() {
            m.insert(job.id.clone(), job);
        }
    }

    /// Forgets a job and removes its folder (a running job's folder goes when it ends).
    pub fn remove(&self, id: &JobId) -> bool {
        let job = self.jobs.lock().ok().and_then(|mut m| m.remove(id));
        match job {
            Some(job) => {
                if job.finished.lock().is_ok_and(|f| f.is_some()) {
                    let _ = std::fs::remove_dir_all(&job.dir);
                }
                true
            }
            None => false,
        }
    }

    /// Removes every job and the temporary folder (at exit).
    pub fn remove_all(&self) {
        if let Ok(mut m) = self.jobs.lock() {
            m.clear();
        }
        if let Ok(mut r) = self.root.lock() {
            if let Some(root) = r.take() {
                let _ = root.close();
            }
        }
    }

    fn expired(&self, retention: Duration) -> Vec<JobId> {
        let Ok(m) = self.jobs.lock() else {
            return Vec::new();
        };
        m.values()
            .filter(|j| j.finished.lock().ok().and_then(|f| *f).is_some_and(|t| t.elapsed() >= retention))
            .map(|j| j.id.clone())
            .collect()
    }
}

trait DirMode {
    fn mode_0700(&mut self) -> &mut Self;
}

impl DirMode for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

/// Removes finished jobs older than the retention time, once a minute.
pub async fn sweep_expired(state: Arc<AppState>) {
    let every = state.config.retention.min(Duration::from_secs(60)).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        for id in state.jobs.expired(state.config.retention) {
            state.jobs.remove(&id);
        }
    }
}

/// The files a job writes, under names the server chooses in its `out/` folder: the master,
/// settings, the HTML report and every export format.
fn job_files(dir: &Path, inputs: &Inputs) -> JobFiles {
    let out = dir.join("out");
    JobFiles {
        mix: inputs.mix.path.clone(),
        references: inputs.references.iter().map(|r| r.path.clone()).collect(),
        output: Some(out.join("master.wav")),
        settings: Some(out.join("settings.json")),
        report: Some(out.join("report.html")),
        plot: None,
        preview: false,
        exports: ExportFormat::ALL.to_vec(),
        export_dir: Some(out),
        dry_run: false,
    }
}

/// Queues a job: it waits for a free slot, then runs on a blocking thread.
pub fn start(state: &Arc<AppState>, id: JobId, dir: PathBuf, inputs: Inputs, options: JobOptions) -> Arc<Job> {
    let (status, _) = watch::channel(Status {
        state: "queued",
        progress: 0.0,
        stage: "waiting for a free slot".into(),
        error: None,
        seconds: None,
        result: None,
    });
    let job =
        Arc::new(Job { id, dir, inputs, options, status, files: Mutex::new(Vec::new()), finished: Mutex::new(None) });
    state.jobs.insert(job.clone());
    let queue = state.jobs.queue.clone();
    let runner = job.clone();
    let store_state = state.clone();
    tokio::spawn(async move {
        let Ok(_permit) = queue.acquire_owned().await else {
            return;
        };
        let started = Instant::now();
        runner.status.send_modify(|s| {
            s.state = "running";
            s.stage = "starting".into();
        });
        let job = runner.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let files = job_files(&job.dir, &job.inputs);
            let progress = |p: crate::job::Progress<'_>| {
                let stage = shown_paths(p.stage, &job.inputs);
                let fraction = (p.step.saturating_sub(1)) as f64 / p.steps.max(1) as f64;
                job.status.send_modify(|s| {
                    s.stage = stage;
                    s.progress = fraction;
                });
            };
            let result = crate::job::run(&files, &job.options, &progress)?;
            for (kind, path) in &result.written {
                if *kind == OutputKind::Report {
                    show_names_in_report(path, &job.inputs)?;
                }
            }
            Ok::<_, crate::Error>(result)
        })
        .await;
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(result)) => {
                let files: Vec<(String, PathBuf)> =
                    result.written.iter().map(|(k, p)| (k.name().to_string(), p.clone())).collect();
                let json = result_json(&runner, &result, &files);
                if let Ok(mut f) = runner.files.lock() {
                    *f = files;
                }
                runner.status.send_modify(|s| {
                    s.state = "done";
                    s.progress = 1.0;
                    s.stage = "done".into();
                    s.seconds = Some(seconds);
                    s.result = Some(json);
                });
            }
            Ok(Err(e)) => fail(&runner, shown_paths(&e.to_string(), &runner.inputs), seconds),
            Err(_) => fail(&runner, "internal error: the job stopped unexpectedly".into(), seconds),
        }
        if let Ok(mut f) = runner.finished.lock() {
            *f = Some(Instant::now());
        }
        // Deleted while it ran: its folder goes now.
        if store_state.jobs.get(&runner.id).is_none() {
            let _ = std::fs::remove_dir_all(&runner.dir);
        }
    });
    job
}

/// The report names the inputs by path; the user knows them by the names they uploaded.
fn show_names_in_report(path: &Path, inputs: &Inputs) -> crate::Result<()> {
    let html = std::fs::read_to_string(path).map_err(|e| crate::Error::output(path, e.to_string()))?;
    let mut shown = html;
    for u in std::iter::once(&inputs.mix).chain(&inputs.references) {
        let server_path = crate::report_html::escape(&u.path.display().to_string());
        shown = shown.replace(&server_path, &crate::report_html::escape(&u.original_name));
    }
    crate::encode::write_text_atomically(path, &shown)
}

fn fail(job: &Job, error: String, seconds: f64) {
    job.status.send_modify(|s| {
        s.state = "failed";
        s.stage = "failed".into();
        s.error = Some(error);
        s.seconds = Some(seconds);
    });
}

/// A message with the server's upload paths replaced by the names the files had on the user's
/// machine, so errors read as the command line's would for the user's own files.
pub fn shown_paths(msg: &str, inputs: &Inputs) -> String {
    let mut out = msg.to_string();
    for u in std::iter::once(&inputs.mix).chain(&inputs.references) {
        out = out.replace(&u.path.display().to_string(), &u.original_name);
    }
    out
}

/// The result as the API shows it.
fn result_json(job: &Job, r: &JobResult, files: &[(String, PathBuf)]) -> serde_json::Value {
    let m = &r.mastered;
    let base = format!("/api/jobs/{}/files/", job.id.as_str());
    let file_urls: serde_json::Map<String, serde_json::Value> =
        files.iter().map(|(name, _)| (name.clone(), format!("{base}{name}").into())).collect();
    let lines: Vec<String> = r.report_lines().iter().map(|l| shown_paths(l, &job.inputs)).collect();
    serde_json::json!({
        "integrated_lufs": finite(m.profile.loudness.integrated_lufs),
        "true_peak_dbtp": finite(m.profile.loudness.true_peak_dbtp),
        "mix_lufs": finite(r.mix_profile.loudness.integrated_lufs),
        "reference_lufs": finite(r.target.loudness.integrated_lufs),
        "target_lufs": finite(m.settings.limiter.target_lufs),
        "ceiling_dbtp": finite(m.settings.limiter.ceiling_dbtp),
        "duration_s": finite(m.profile.duration_s),
        "sample_rate_hz": m.profile.sample_rate_hz,
        "chain": shown_paths(&crate::report::settings_text(&m.settings), &job.inputs),
        "notes": m.notes,
        "warnings": r.warnings(),
        "playback": r.playback(),
        "target_note": r.target_note,
        "report_lines": lines,
        "options": job.options,
        "mix_name": job.inputs.mix.original_name,
        "reference_names": job.inputs.references.iter().map(|u| u.original_name.clone()).collect::<Vec<_>>(),
        "files": file_urls,
    })
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The download name of a job's output: the mix's name, then what the file is.
pub fn download_name(job: &Job, kind: &str, path: &Path) -> String {
    let stem = Path::new(&job.inputs.mix.original_name)
        .file_stem()
        .map_or_else(|| "mix".to_string(), |s| s.to_string_lossy().into_owned());
    let file = path.file_name().map_or_else(|| kind.to_string(), |f| f.to_string_lossy().into_owned());
    let name = match file.strip_prefix("master") {
        Some(rest) => format!("{stem}.master{rest}"),
        None => format!("{stem}.{file}"),
    };
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

/// Whether an output name is one a job writes (the only names a client may ask for).
pub fn is_output_name(name: &str) -> bool {
    let known = [OutputKind::Master, OutputKind::Settings, OutputKind::Report, OutputKind::ExportNote];
    known.iter().any(|k| k.name() == name) || ExportFormat::ALL.iter().any(|f| OutputKind::Export(*f).name() == name)
}
