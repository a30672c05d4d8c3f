//! The refmaster command line: parse, call the library, print.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use refmaster::analysis::Profile;
use refmaster::encode::{check_output_path, refuse_overwriting_inputs, write_text_atomically, BitDepth};
use refmaster::job::{JobFiles, JobOptions, OutputKind, Progress};
use refmaster::report;
use refmaster::settings::Settings;
use refmaster::solve::average_profiles;
use refmaster::source::profile_file;

/// Automatic reference-matching mastering: `refmaster mix.wav --ref favourite.flac`.
#[derive(Parser, Debug)]
#[command(name = "refmaster", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    master: MasterArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure files and print their profiles (loudness, spectrum, dynamics, width).
    Analyze(AnalyzeArgs),
    /// Render a mix with saved settings (bit-identical to the run that wrote them).
    Apply(ApplyArgs),
    /// Master an album against one reference, keeping the songs' relative loudness.
    Album(AlbumArgs),
    /// Master unrelated files against one reference, each to the full target loudness.
    Batch(AlbumArgs),
    /// Learn mastering targets from music you like: measure it, cluster it (k-means), save a model.
    Learn(LearnArgs),
    /// List a model's targets with their character in numbers (default: the built-in model).
    Targets(TargetsArgs),
    /// The mastering studio in a browser tab: a web server on this machine (127.0.0.1 by default).
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8440)]
    port: u16,
    /// Address to listen on; anything but a loopback address lets other machines in.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Open the page in the default browser.
    #[arg(long)]
    open: bool,
    /// Largest upload (a job's files together), MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    max_upload_mb: u64,
    /// Jobs mastered at once (each within --memory-budget); more wait in a queue.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Memory budget of each job, MiB (see the mastering command's --memory-budget).
    #[arg(long = "memory-budget", default_value_t = refmaster::job::DEFAULT_MEMORY_BUDGET_MIB, value_name = "MIB")]
    memory_budget_mb: u64,
    /// Minutes a finished job's files are kept.
    #[arg(long, default_value_t = 120)]
    keep_minutes: u64,
}

#[derive(Args, Debug)]
struct LearnArgs {
    /// Audio files, or folders searched recursively for wav flac mp3 ogg m4a aac aiff aif alac.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where to write the model (a targets JSON).
    #[arg(short, long)]
    output: PathBuf,
    /// Number of targets (default: the k in 2..=8 with the highest mean silhouette score).
    #[arg(long)]
    k: Option<usize>,
    /// Seed of the k-means starts: the same files and seed rebuild the same model.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Files analysed at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// No progress lines and no summary.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct TargetsArgs {
    /// A model written by `refmaster learn` (default: the built-in model).
    file: Option<PathBuf>,
    /// Check the model on these tracks (files or folders): each one's nearest target, and how close
    /// its tonal balance is to that target's and to the average target's.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    evaluate: Vec<PathBuf>,
    /// Files analysed at once (--evaluate).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// No progress lines (--evaluate).
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct AlbumArgs {
    /// The mixes, one per song.
    #[arg(required = true)]
    tracks: Vec<PathBuf>,
    /// Reference track (audio) or saved profile (.json); repeat to match the average of several.
    #[arg(long = "ref", value_name = "FILE", required = true)]
    references: Vec<PathBuf>,
    /// Folder for the masters (STEM.master.wav each).
    #[arg(long)]
    out_dir: PathBuf,
    /// Every song to the full target loudness (what `batch` does).
    #[arg(long)]
    independent: bool,
    /// Redo songs whose master already exists.
    #[arg(long)]
    force: bool,
    /// Loudness target for the loudest song, LUFS (default: the reference's).
    #[arg(long, allow_hyphen_values = true)]
    lufs: Option<f64>,
    /// True-peak ceiling, dBTP.
    #[arg(long, default_value_t = -1.0, allow_hyphen_values = true)]
    ceiling: f64,
    /// Output format: 16, 24 (TPDF dither) or 32f.
    #[arg(long, default_value = "24")]
    bits: BitDepth,
    /// Most decoded and rendered audio refmaster keeps in memory, MiB: a mix that does not fit
    /// half of it is decoded again for every pass, and a rendered signal that does not fit the
    /// rest is rendered again for every read (slower, same master).
    #[arg(long = "memory-budget", default_value_t = refmaster::job::DEFAULT_MEMORY_BUDGET_MIB, value_name = "MIB")]
    memory_budget_mb: u64,
    /// Songs mastered at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct AnalyzeArgs {
    /// Audio files to analyse.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print the profiles as JSON (one object for one file, an array for several).
    #[arg(long)]
    json: bool,
    /// Write the JSON to this file instead of standard output (implies --json).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print nothing but errors (and the JSON).
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// The mix to render.
    mix: PathBuf,
    /// Settings JSON written by `refmaster ... --settings`.
    #[arg(long)]
    settings: PathBuf,
    /// Output WAV file.
    #[arg(short, long)]
    output: PathBuf,
    /// Output format: 16, 24 (TPDF dither) or 32f.
    #[arg(long, default_value = "24")]
    bits: BitDepth,
    /// Most decoded and rendered audio refmaster keeps in memory, MiB: a mix that does not fit
    /// half of it is decoded again for every pass, and a rendered signal that does not fit the
    /// rest is rendered again for every read (slower, same master).
    #[arg(long = "memory-budget", default_value_t = refmaster::job::DEFAULT_MEMORY_BUDGET_MIB, value_name = "MIB")]
    memory_budget_mb: u64,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct MasterArgs {
    /// The mix to master.
    mix: Option<PathBuf>,
    /// Reference track (audio) or saved profile (.json); repeat to match the average of several.
    /// Without one, the mix goes toward the nearest learned target (see `refmaster targets`).
    #[arg(long = "ref", value_name = "FILE")]
    references: Vec<PathBuf>,
    /// Output WAV (default: MIX.master.wav beside the mix).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write a self-contained HTML report (plots, numbers, settings, warnings) here.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Write the spectrum plot (mid and side of mix, reference, master) as PNG here.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Also write OUT.preview-mix.wav and OUT.preview-master.wav: the loudest 30 s of both,
    /// matched in loudness, for an honest before/after.
    #[arg(long)]
    preview: bool,
    /// Write the solved settings as JSON here.
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Run the whole solve (closed loop included) and write the settings and exports, but no
    /// audio.
    #[arg(long)]
    dry_run: bool,
    /// Also export the settings for other tools: apo, graphiceq, ffmpeg, easyeffects, json (or all).
    #[arg(long, value_name = "FORMAT[,FORMAT...]")]
    export: Option<String>,
    /// Folder for the exported files (default: the output file's folder).
    #[arg(long, value_name = "DIR")]
    export_dir: Option<PathBuf>,
    #[command(flatten)]
    options: JobOptions,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    START.get_or_init(std::time::Instant::now);
    // `refmaster analyze x | head`: when the reader goes away, stop quietly as other command-line
    // tools do (Rust ignores SIGPIPE, and println! would then panic on the broken pipe).
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal runs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The render hands chunk buffers from thread to thread, and glibc gives each new thread an
    // arena of its own (up to eight per core): a buffer freed on another thread than the one that
    // made it stays in that arena, and the peak memory then depends on which thread ran where.
    // One arena: the peak of a 4-minute master under `--memory-budget 0` held at 72-75 MB over
    // ten runs, against 78-94 MB with glibc's default and 74-88 MB with two (tests/streaming.rs);
    // wall time unchanged on the corpus runs measured.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Analyze(a)) => run_analyze(&a),
        Some(Command::Apply(a)) => run_apply(&a),
        Some(Command::Album(a)) => run_album(&a, false),
        Some(Command::Batch(a)) => run_album(&a, true),
        Some(Command::Learn(a)) => run_learn(&a),
        Some(Command::Targets(a)) => run_targets(&a),
        Some(Command::Serve(a)) => run_serve(&a),
        None => run_master(&cli.master),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refmaster: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A spinner on stderr when it is a terminal and the user did not ask for quiet.
/// A progress bar on stderr, when it is a terminal and the user did not ask for quiet: one step
/// per stage (decode, analyse, solve, each render pass, verify, write), with the stage's name.
fn spinner(quiet: bool) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(1);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len} {elapsed:>3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(pb)
}

/// Sets how many stages the bar counts.
fn stages(pb: &Option<ProgressBar>, n: u64) {
    if let Some(pb) = pb {
        pb.set_length(n);
    }
}

/// Starts a stage: the bar advances past the previous one and shows this one's name.
fn say(pb: &Option<ProgressBar>, msg: &str) {
    if std::env::var_os("REFMASTER_TIMING").is_some() {
        let wall_s = START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64();
        eprintln!("[{wall_s:>8.3} s, cpu {:>7.3} s] {msg}", process_cpu_s());
    }
    if let Some(pb) = pb {
        if !pb.message().is_empty() {
            pb.inc(1);
        }
        pb.set_message(msg.to_string());
    }
}

/// The profile of a file, measured as it decodes (the samples are not kept).
fn load_profile(path: &Path, pb: &Option<ProgressBar>) -> Result<Profile> {
    say(pb, &format!("decoding and analysing {}", path.display()));
    Ok(profile_file(path)?)
}

fn run_analyze(a: &AnalyzeArgs) -> Result<()> {
    if let Some(out) = &a.output {
        let inputs: Vec<&Path> = a.files.iter().map(PathBuf::as_path).collect();
        check_output_path(out)?;
        refuse_overwriting_inputs(out, &inputs)?;
    }
    let pb = spinner(a.quiet);
    stages(&pb, a.files.len() as u64);
    let mut profiles = Vec::new();
    for f in &a.files {
        profiles.push(load_profile(f, &pb)?);
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if a.json || a.output.is_some() {
        let json = if profiles.len() == 1 {
            serde_json::to_string_pretty(&profiles[0])?
        } else {
            serde_json::to_string_pretty(&profiles)?
        };
        match &a.output {
            Some(out) => write_text_atomically(out, &(json + "\n"))?,
            None => println!("{json}"),
        }
    } else {
        for p in &profiles {
            println!("{}", report::profile_text(p));
        }
    }
    Ok(())
}

fn run_apply(a: &ApplyArgs) -> Result<()> {
    refmaster::job::JobOptions { memory_budget: a.memory_budget_mb, ..Default::default() }.validate()?;
    let text =
        std::fs::read_to_string(&a.settings).with_context(|| format!("{}: cannot read", a.settings.display()))?;
    let settings = Settings::from_json(&text, &a.settings.display().to_string())?;
    refmaster::job::check_outputs(&[(OutputKind::Master, a.output.clone())], &[&a.mix, &a.settings])?;
    let pb = spinner(a.quiet);
    stages(&pb, 2);
    let budget = usize::try_from(a.memory_budget_mb << 20).unwrap_or(usize::MAX);
    refmaster::job::apply(&a.mix, &settings, &a.output, a.bits, budget, &|stage| say(&pb, stage))?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if !a.quiet {
        println!("wrote {}", a.output.display());
    }
    Ok(())
}

fn run_master(a: &MasterArgs) -> Result<()> {
    let Some(mix_path) = a.mix.as_deref() else {
        bail!("no mix given: usage `refmaster MIX [--ref REFERENCE] [-o OUT.wav]` (see --help)");
    };
    let exports = a.export.as_deref().map(refmaster::export::parse_list).transpose()?.unwrap_or_default();
    let files = JobFiles {
        mix: mix_path.to_path_buf(),
        references: a.references.clone(),
        output: a.output.clone(),
        settings: a.settings.clone(),
        report: a.report.clone(),
        plot: a.plot.clone(),
        preview: a.preview,
        exports,
        export_dir: a.export_dir.clone(),
        dry_run: a.dry_run,
    };
    let pb = spinner(a.quiet);
    let progress = |p: Progress<'_>| {
        stages(&pb, p.steps as u64);
        say(&pb, p.stage);
    };
    let result = refmaster::job::run(&files, &a.options, &progress)?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if !a.quiet {
        for line in result.report_lines() {
            println!("{line}");
        }
    }
    if std::env::var_os("REFMASTER_TIMING").is_some() {
        if let Some(kib) = peak_memory_kib() {
            say(&None, &format!("done; peak memory {kib} KiB"));
        }
    }
    Ok(())
}

/// CPU time (user + system, all threads) this process has used so far, s: `REFMASTER_TIMING`
/// prints it beside the wall time, which on a shared machine follows the load more than the work.
fn process_cpu_s() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given; it is zeroed
    // (a valid `rusage`) beforehand, so it is initialised even if the call fails.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// This process's peak resident memory, KiB (Linux: `VmHWM` in /proc/self/status), for
/// `REFMASTER_TIMING` and the memory tests.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn run_album(a: &AlbumArgs, batch: bool) -> Result<()> {
    use refmaster::album::{master_album, summary_table, AlbumJob, LoudnessPolicy, TrackStatus};
    let job_options = JobOptions {
        ceiling: Some(a.ceiling),
        lufs: a.lufs,
        memory_budget: a.memory_budget_mb,
        ..JobOptions::default()
    };
    job_options.validate()?;
    if !a.out_dir.is_dir() {
        bail!("{}: --out-dir is not an existing folder", a.out_dir.display());
    }
    for input in a.tracks.iter().chain(&a.references) {
        std::fs::metadata(input).with_context(|| format!("{}: no such file", input.display()))?;
    }
    let mut refs = Vec::new();
    for r in &a.references {
        refs.push(refmaster::job::load_reference(r)?);
    }
    let reference = average_profiles(&refs).context("no reference profile")?;
    let options = job_options.master_options();
    let policy = if batch || a.independent { LoudnessPolicy::Independent } else { LoudnessPolicy::Album };
    let job = AlbumJob { reference: &reference, options, policy, bits: a.bits, force: a.force, threads: a.jobs.max(1) };
    let quiet = a.quiet;
    let progress = move |line: &str| {
        if line.contains(": FAILED: ") {
            eprintln!("refmaster: error: {line}");
        } else if !quiet {
            println!("{line}");
        }
    };
    let results = master_album(&a.tracks, &a.out_dir, &job, &progress)?;
    if !a.quiet {
        println!("\n{}", summary_table(&results));
    }
    let failed = results.iter().filter(|r| matches!(r.status, TrackStatus::Failed(_))).count();
    if failed > 0 {
        bail!("{failed} of {} songs failed (see above)", results.len());
    }
    Ok(())
}

fn run_learn(a: &LearnArgs) -> Result<()> {
    use refmaster::learn::{learn_files, learn_summary_text, LearnOptions};
    // The output must not be any file the model is learned from, including those found inside
    // the folders given.
    let found = refmaster::learn::find_audio_files(&a.inputs)?;
    let mut inputs: Vec<&Path> = a.inputs.iter().map(PathBuf::as_path).collect();
    inputs.extend(found.iter().map(|(p, _)| p.as_path()));
    check_output_path(&a.output)?;
    refuse_overwriting_inputs(&a.output, &inputs)?;
    let quiet = a.quiet;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let model = learn_files(&a.inputs, &LearnOptions { k: a.k, seed: a.seed }, a.jobs.max(1), &progress)?;
    write_text_atomically(&a.output, &(model.to_json() + "\n"))?;
    if !a.quiet {
        print!("{}", learn_summary_text(&model, &a.output));
        println!("wrote {}", a.output.display());
    }
    Ok(())
}

fn run_serve(a: &ServeArgs) -> Result<()> {
    if a.jobs == 0 {
        bail!("--jobs: must be at least 1");
    }
    if a.max_upload_mb == 0 {
        bail!("--max-upload-mb: must be at least 1");
    }
    refmaster::job::JobOptions { memory_budget: a.memory_budget_mb, ..Default::default() }.validate()?;
    if !a.host.is_loopback() {
        eprintln!(
            "warning: --host {} lets other machines reach this server: anyone who can connect can upload and master audio",
            a.host
        );
    }
    let config = refmaster::serve::ServeConfig {
        host: a.host,
        port: a.port,
        max_upload_bytes: a.max_upload_mb.saturating_mul(1 << 20),
        jobs: a.jobs,
        job_memory_mib: a.memory_budget_mb,
        retention: std::time::Duration::from_secs(a.keep_minutes.saturating_mul(60)),
    };
    let open = a.open;
    refmaster::serve::serve(config, |url| {
        println!("refmaster serve: open {url} in your browser (Ctrl-C stops it)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if open {
            let _ = std::process::Command::new("xdg-open")
                .arg(url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
    })
    .context("refmaster serve")?;
    Ok(())
}

fn run_targets(a: &TargetsArgs) -> Result<()> {
    let (model, label) = refmaster::learn::load_model(a.file.as_deref())?;
    if a.evaluate.is_empty() {
        print!("{}", refmaster::learn::targets_text(&model, &label));
        return Ok(());
    }
    let quiet = a.quiet;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    print!("{}", refmaster::learn::evaluate_files(&model, &a.evaluate, a.jobs.max(1), &progress)?);
    Ok(())
}
