//! The refmaster command line: parse, call the library, print.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use refmaster::analysis::Profile;
use refmaster::encode::{refuse_overwriting_inputs, write_text_atomically, write_wav, write_wav_stream, BitDepth};
use refmaster::master::{master_stream, MasterOptions, MasterSink, Mastered, WavSink, WriteInfo};
use refmaster::platform::Platform;
use refmaster::report_html::WaveformMeter;
use refmaster::settings::Settings;
use refmaster::solve::{average_profiles, SolveOptions};
use refmaster::source::{open_mix, profile_file, read_range, FrameSource, Mix};
use refmaster::{render, report, AudioBuffer};

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
    #[arg(long = "memory-budget", default_value_t = refmaster::master::DEFAULT_MEMORY_BUDGET_BYTES >> 20, value_name = "MIB")]
    memory_budget_mb: usize,
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
    #[arg(long = "memory-budget", default_value_t = refmaster::master::DEFAULT_MEMORY_BUDGET_BYTES >> 20, value_name = "MIB")]
    memory_budget_mb: usize,
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
    /// Without --ref: the learned target to master toward: NAME (of the built-in model),
    /// MODEL.json (its target nearest the mix) or MODEL.json:NAME.
    #[arg(long, value_name = "NAME|MODEL.json[:NAME]", conflicts_with = "references")]
    target: Option<String>,
    /// Output WAV (default: MIX.master.wav beside the mix).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// How much of the tonal and width match to apply, percent.
    #[arg(long, default_value_t = 100.0, value_parser = percent)]
    amount: f64,
    /// EQ smoothing width in octaves.
    #[arg(long, default_value_t = 1.0 / 3.0)]
    smoothing: f64,
    /// EQ bound, ± dB (gaps past it become mix notes).
    #[arg(long, default_value_t = refmaster::solve::DEFAULT_MAX_EQ_DB)]
    max_eq_db: f64,
    /// Width bound, ± dB.
    #[arg(long, default_value_t = 6.0)]
    max_width_db: f64,
    /// True-peak ceiling, dBTP (default: the platform's, else -1.0).
    #[arg(long, allow_hyphen_values = true)]
    ceiling: Option<f64>,
    /// Loudness target, LUFS (default: the platform's, else the reference's).
    #[arg(long, allow_hyphen_values = true)]
    lufs: Option<f64>,
    /// Deliver for a platform: spotify, apple, youtube, tidal, amazon, deezer, soundcloud (their
    /// loudness target, -1 dBTP), cd or club (the reference's loudness, -0.3 dBTP). --lufs and
    /// --ceiling override it.
    #[arg(long, value_name = "NAME")]
    platform: Option<Platform>,
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
    /// Output format: 16, 24 (TPDF dither) or 32f.
    #[arg(long, default_value = "24")]
    bits: BitDepth,
    /// Write the solved settings as JSON here.
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Solve and export settings without rendering audio.
    #[arg(long)]
    dry_run: bool,
    /// Also export the settings for other tools: apo, graphiceq, ffmpeg, easyeffects, json (or all).
    #[arg(long, value_name = "FORMAT[,FORMAT...]")]
    export: Option<String>,
    /// Folder for the exported files (default: the output file's folder).
    #[arg(long, value_name = "DIR")]
    export_dir: Option<PathBuf>,
    /// Skip the matching EQ.
    #[arg(long)]
    no_eq: bool,
    /// Skip multiband compression.
    #[arg(long)]
    no_dynamics: bool,
    /// Skip the width stage.
    #[arg(long)]
    no_width: bool,
    /// Skip the limiter (drive still applies; overs are possible).
    #[arg(long)]
    no_limiter: bool,
    /// Never use the soft-clipping saturator (by default it takes over peak reduction the
    /// limiter would do beyond 3 dB).
    #[arg(long)]
    no_saturation: bool,
    /// Loudness-war guard: the smallest peak-to-loudness ratio (true peak minus integrated
    /// loudness) a master may be pressed down to when that takes more than 6 dB of peak
    /// reduction, dB; a louder target is mastered to the guard instead.
    #[arg(long, default_value_t = refmaster::master::MIN_PLR_DB, value_name = "DB")]
    min_plr: f64,
    /// Lift the loudness-war guard and allow limiting up to 30 dB deep: reach a loud target even
    /// if the master comes out flattened.
    #[arg(long)]
    allow_crush: bool,
    /// Most decoded and rendered audio refmaster keeps in memory, MiB: a mix that does not fit
    /// half of it is decoded again for every pass, and a rendered signal that does not fit the
    /// rest is rendered again for every read (slower, same master).
    #[arg(long = "memory-budget", default_value_t = refmaster::master::DEFAULT_MEMORY_BUDGET_BYTES >> 20, value_name = "MIB")]
    memory_budget_mb: usize,
    /// Deepest limiting allowed, dB of gain reduction at the 99.9th percentile; a louder target
    /// is reported unreachable instead of crushed.
    #[arg(long, default_value_t = refmaster::master::MAX_LIMITING_DB)]
    max_limiting_db: f64,
    /// Closed-loop EQ correction passes after the first render (0 = open loop).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=6))]
    passes: u8,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

fn percent(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0..100"))
    }
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
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Analyze(a)) => run_analyze(&a),
        Some(Command::Apply(a)) => run_apply(&a),
        Some(Command::Album(a)) => run_album(&a, false),
        Some(Command::Batch(a)) => run_album(&a, true),
        Some(Command::Learn(a)) => run_learn(&a),
        Some(Command::Targets(a)) => run_targets(&a),
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
        eprintln!("[{:>8.3} s] {msg}", START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64());
    }
    if let Some(pb) = pb {
        if !pb.message().is_empty() {
            pb.inc(1);
        }
        pb.set_message(msg.to_string());
    }
}

/// Decodes and analyses a mix in one read, keeping its samples when they fit the memory budget.
fn load(path: &Path, keep_bytes: usize, pb: &Option<ProgressBar>) -> Result<(Mix, Profile)> {
    say(pb, &format!("decoding and analysing {}", path.display()));
    let (mix, profile, _) = open_mix(path, keep_bytes)?;
    Ok((mix, profile))
}

/// The profile of a file, measured as it decodes (the samples are not kept).
fn load_profile(path: &Path, pb: &Option<ProgressBar>) -> Result<Profile> {
    say(pb, &format!("decoding and analysing {}", path.display()));
    Ok(profile_file(path)?)
}

fn load_reference(path: &Path, pb: &Option<ProgressBar>) -> Result<Profile> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        return refmaster::analysis::profile_from_json(&text, path).map_err(Into::into);
    }
    load_profile(path, pb)
}

fn run_analyze(a: &AnalyzeArgs) -> Result<()> {
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
            Some(out) => {
                let inputs: Vec<&Path> = a.files.iter().map(PathBuf::as_path).collect();
                refuse_overwriting_inputs(out, &inputs)?;
                write_text_atomically(out, &(json + "\n"))?;
            }
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
    let text =
        std::fs::read_to_string(&a.settings).with_context(|| format!("{}: cannot read", a.settings.display()))?;
    let settings = Settings::from_json(&text, &a.settings.display().to_string())?;
    refuse_overwriting_inputs(&a.output, &[&a.mix, &a.settings])?;
    let pb = spinner(a.quiet);
    stages(&pb, 2);
    say(&pb, "decoding");
    let (mix, _, _) = open_mix(&a.mix, (a.memory_budget_mb << 20) / 2)?;
    render::check_channel_count(mix.channel_count()).with_context(|| a.mix.display().to_string())?;
    say(&pb, "rendering");
    write_wav_stream(&a.output, mix.sample_rate_hz(), mix.channel_count(), a.bits, |w| {
        w.set_dither_seed(settings.dither_seed);
        render::stream::render_stream(&mix, &settings, &mut |_, chunk| w.write(chunk)).map(|_| ())
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if !a.quiet {
        println!("wrote {}", a.output.display());
    }
    Ok(())
}

fn default_output(mix: &Path) -> PathBuf {
    let stem = mix.file_stem().map_or_else(|| "master".into(), |s| s.to_string_lossy().into_owned());
    mix.with_file_name(format!("{stem}.master.wav"))
}

fn run_master(a: &MasterArgs) -> Result<()> {
    let Some(mix_path) = a.mix.as_deref() else {
        bail!("no mix given: usage `refmaster MIX [--ref REFERENCE] [-o OUT.wav]` (see --help)");
    };
    let out = a.output.clone().unwrap_or_else(|| default_output(mix_path));
    let exports = a.export.as_deref().map(refmaster::export::parse_list).transpose()?;
    let mut inputs: Vec<&Path> = vec![mix_path];
    inputs.extend(a.references.iter().map(PathBuf::as_path));
    if !a.dry_run {
        refuse_overwriting_inputs(&out, &inputs)?;
    }
    if let Some(s) = &a.settings {
        refuse_overwriting_inputs(s, &inputs)?;
    }
    check_extra_outputs(a, &out, &inputs)?;
    // An explicit --lufs/--ceiling wins over --platform, which wins over the defaults.
    let ceiling = a.ceiling.or(a.platform.map(Platform::ceiling_dbtp)).unwrap_or(-1.0);
    let lufs = a.lufs.or(a.platform.and_then(Platform::target_lufs));
    let pb = spinner(a.quiet);
    // decode + analyse per file, solve, one render per pass, verify, write
    // (No --ref: one stage, choosing the target, instead of decoding and analysing references.)
    stages(
        &pb,
        (1 + a.references.len() as u64) + u64::from(a.references.is_empty()) + 1 + (u64::from(a.passes) + 1) + 2,
    );
    // The references are decoded and analysed on a second thread while the mix is (the two are
    // independent; on two cores this nearly halves the time before solving).
    let (loaded_mix, loaded_refs) = std::thread::scope(|scope| {
        let refs = scope.spawn(|| a.references.iter().map(|r| load_reference(r, &pb)).collect::<Result<Vec<_>>>());
        let mix = load(mix_path, (a.memory_budget_mb << 20) / 2, &pb);
        (mix, refs.join())
    });
    let (mix, mix_profile) = loaded_mix?;
    refmaster::render::check_channel_count(mix.channel_count()).with_context(|| mix_path.display().to_string())?;
    // No --ref: a learned target (the built-in model's nearest unless --target says otherwise).
    let (target, target_note) = if a.references.is_empty() {
        say(&pb, "choosing a target");
        let choice = refmaster::learn::choose_target(a.target.as_deref(), &mix_profile)?;
        let note = choice.describe();
        (choice.target.profile, Some(note))
    } else {
        let refs = loaded_refs.map_err(|_| anyhow::anyhow!("the reference loader panicked"))??;
        (average_profiles(&refs).context("no reference profile")?, None)
    };
    let opts = MasterOptions {
        solve: SolveOptions {
            amount: a.amount / 100.0,
            smoothing_octaves: a.smoothing.clamp(0.02, 3.0),
            max_eq_db: a.max_eq_db.clamp(0.0, refmaster::settings::limits::EQ_GAIN_DB),
            max_width_db: a.max_width_db.clamp(0.0, refmaster::settings::limits::WIDTH_GAIN_DB),
            ceiling_dbtp: ceiling,
            target_lufs: lufs,
            eq: !a.no_eq,
            dynamics: !a.no_dynamics,
            width: !a.no_width,
            limiter: !a.no_limiter,
        },
        closed_loop_passes: usize::from(a.passes),
        max_limiting_db: a.max_limiting_db.clamp(0.0, 40.0),
        saturation: !a.no_saturation,
        min_plr_db: a.min_plr.clamp(0.0, 30.0),
        allow_crush: a.allow_crush,
        memory_budget_bytes: a.memory_budget_mb << 20,
    };
    if !(-20.0..=0.0).contains(&ceiling) {
        bail!("--ceiling {ceiling} is outside -20..0 dBTP");
    }
    if let Some(l) = lufs {
        if !(-70.0..=0.0).contains(&l) {
            bail!("--lufs {l} is outside -70..0 LUFS");
        }
    }
    if a.dry_run {
        say(&pb, "solving");
        let (settings, notes) = refmaster::solve::solve(&mix_profile, &target, &opts.solve);
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        if let Some(s) = &a.settings {
            write_text_atomically(s, &(settings.to_json() + "\n"))?;
        }
        if !a.quiet {
            target_note.iter().for_each(|n| println!("{n}"));
            println!("{}", report::settings_text(&settings));
            for n in notes {
                println!("note: {n}");
            }
        }
        write_exports(a, exports.as_deref(), &settings, &out)?;
        return Ok(());
    }
    let progress = |m: &str| say(&pb, m);
    let mut extras = Extras::new(a, mix.frames());
    let mut mastered = None;
    write_wav_stream(&out, mix.sample_rate_hz(), mix.channel_count(), a.bits, |w| {
        let mut sink = MainSink { wav: WavSink(w), extras: &mut extras };
        mastered = Some(master_stream(&mix, &mix_profile, &target, &opts, &progress, &mut sink)?);
        Ok(())
    })?;
    let mastered = mastered.context("the master was not produced")?;
    if let Some(s) = &a.settings {
        write_text_atomically(s, &(mastered.settings.to_json() + "\n"))?;
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if !a.quiet {
        target_note.iter().for_each(|n| println!("{n}"));
        println!("{}", report::comparison_text(&mix_profile, &target, &mastered.profile));
        println!("{}", report::settings_text(&mastered.settings));
        for n in report::warnings(&mix_profile, &target, &mastered) {
            println!("warning: {n}");
        }
        for n in &mastered.notes {
            println!("note: {n}");
        }
        for p in refmaster::platform::playback_report(&mastered.profile) {
            println!("playback: {p}");
        }
        println!("wrote {}", out.display());
    }
    write_extra_outputs(a, &out, &mix, &mix_profile, &target, &mastered, extras)?;
    write_exports(a, exports.as_deref(), &mastered.settings, &out)?;
    if std::env::var_os("REFMASTER_TIMING").is_some() {
        if let Some(kib) = peak_memory_kib() {
            say(&None, &format!("done; peak memory {kib} KiB"));
        }
    }
    Ok(())
}

/// This process's peak resident memory, KiB (Linux: `VmHWM` in /proc/self/status), for
/// `REFMASTER_TIMING` and the memory tests.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Slices in the report's waveform overviews.
const WAVEFORM_COLUMNS: usize = 900;

/// What the report and the previews need of the master, gathered as it is written.
struct Extras {
    /// Overview of the master (with `--report`).
    waveform: Option<WaveformMeter>,
    /// Whether to keep the previews' excerpt (with `--preview`).
    keep_preview: bool,
    /// The excerpt of the master the previews are cut from.
    preview: Vec<Vec<f32>>,
    /// Where it lies (first frame, frames).
    window: (usize, usize),
    frames: usize,
}

impl Extras {
    fn new(a: &MasterArgs, frames: usize) -> Self {
        Self {
            waveform: a.report.as_ref().map(|_| WaveformMeter::new(frames, 1, WAVEFORM_COLUMNS)),
            keep_preview: a.preview,
            preview: Vec::new(),
            window: (0, 0),
            frames,
        }
    }
}

/// The master's way out: the WAV file, and on the side what the report and previews need.
struct MainSink<'a, 'b, 'c> {
    wav: WavSink<'a, 'b>,
    extras: &'c mut Extras,
}

impl MasterSink for MainSink<'_, '_, '_> {
    fn begin(&mut self, info: &WriteInfo) -> refmaster::Result<()> {
        let e = &mut *self.extras;
        if e.waveform.is_some() {
            e.waveform = Some(WaveformMeter::new(e.frames, info.sample_rate_hz, WAVEFORM_COLUMNS));
        }
        e.window = info.loudest_window;
        e.preview =
            vec![Vec::with_capacity(if e.keep_preview { info.loudest_window.1 } else { 0 }); info.channel_count];
        self.wav.begin(info)
    }

    fn write(&mut self, first_frame: usize, chunk: &[&[f32]]) -> refmaster::Result<()> {
        let e = &mut *self.extras;
        if let Some(w) = e.waveform.as_mut() {
            w.push(chunk);
        }
        let n = chunk.first().map_or(0, |c| c.len());
        let (start, len) = e.window;
        let (a, b) = (start.max(first_frame), (start + len).min(first_frame + n));
        if e.keep_preview && a < b {
            for (p, c) in e.preview.iter_mut().zip(chunk) {
                p.extend_from_slice(&c[a - first_frame..b - first_frame]);
            }
        }
        self.wav.write(first_frame, chunk)
    }
}

/// Refuses `--report`, `--plot` and `--preview` outputs that would overwrite an input, and all
/// three with `--dry-run` (they show a rendered master).
fn check_extra_outputs(a: &MasterArgs, out: &Path, inputs: &[&Path]) -> Result<()> {
    if a.dry_run && (a.report.is_some() || a.plot.is_some() || a.preview) {
        bail!("--report, --plot and --preview need a rendered master: drop --dry-run");
    }
    let (pm, pw) = refmaster::preview::preview_paths(out);
    let previews = [pm, pw];
    let paths = a.report.iter().chain(&a.plot).chain(previews.iter().filter(|_| a.preview));
    for p in paths {
        refuse_overwriting_inputs(p, inputs)?;
        if p == out {
            bail!("{}: is also the master output", p.display());
        }
    }
    Ok(())
}

/// `--report`, `--plot`, `--preview`: written after the master, each path printed unless
/// `--quiet`.
fn write_extra_outputs(
    a: &MasterArgs,
    out: &Path,
    mix: &Mix,
    mix_profile: &Profile,
    target: &Profile,
    mastered: &Mastered,
    extras: Extras,
) -> Result<()> {
    let wrote = |p: &Path| {
        if !a.quiet {
            println!("wrote {}", p.display());
        }
    };
    let mut preview_range = None;
    if a.preview {
        let (start, len) = extras.window;
        let master_ex = AudioBuffer { sample_rate_hz: mix.sample_rate_hz(), channels: extras.preview };
        let mix_ex = read_range(mix, start, len)?;
        let pv = refmaster::preview::previews_of(mix_ex, master_ex, start, mastered.settings.limiter.ceiling_dbtp);
        let (pm, pw) = refmaster::preview::preview_paths(out);
        write_wav(&pm, &pv.mix, a.bits, mastered.settings.dither_seed)?;
        write_wav(&pw, &pv.master, a.bits, mastered.settings.dither_seed)?;
        if !a.quiet {
            println!(
                "previews: {:.1}-{:.1} s, both at {} LUFS (mix {:+.1} dB, master {:+.1} dB)",
                pv.start_s,
                pv.start_s + pv.duration_s,
                report::fmt_db(pv.loudness_lufs),
                pv.mix_gain_db,
                pv.master_gain_db
            );
        }
        wrote(&pm);
        wrote(&pw);
        preview_range = Some((pv.start_s, pv.duration_s));
    }
    if let Some(path) = &a.plot {
        refmaster::report_html::write_spectrum_png(path, mix_profile, target, &mastered.profile)?;
        wrote(path);
    }
    if let Some(path) = &a.report {
        let warnings = report::warnings(mix_profile, target, mastered);
        let playback = refmaster::platform::playback_report(&mastered.profile);
        let name = out.file_name().map_or_else(|| out.display().to_string(), |n| n.to_string_lossy().into_owned());
        let mut meter = WaveformMeter::new(mix.frames(), mix.sample_rate_hz(), WAVEFORM_COLUMNS);
        mix.stream(&mut |chunk| {
            meter.push(chunk);
            Ok(())
        })?;
        let mix_wave = meter.finish();
        let master_wave = extras.waveform.map_or_else(|| mix_wave.clone(), WaveformMeter::finish);
        let input = refmaster::report_html::ReportInput {
            mix: mix_profile,
            reference: target,
            mastered,
            master_name: &name,
            warnings: &warnings,
            playback: &playback,
            preview: preview_range,
            waveforms: Some((&mix_wave, &master_wave)),
        };
        refmaster::report_html::write_report(path, &input)?;
        wrote(path);
    }
    Ok(())
}

/// `--export`: writes the requested formats as `STEM.*` (STEM: the output file's name without
/// its extension) into `--export-dir` (default: the output's folder) and prints each path unless
/// `--quiet`.
fn write_exports(
    a: &MasterArgs,
    formats: Option<&[refmaster::export::ExportFormat]>,
    settings: &Settings,
    out: &Path,
) -> Result<()> {
    let Some(formats) = formats else {
        return Ok(());
    };
    let dir = a.export_dir.clone().unwrap_or_else(|| match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    });
    let stem = out.file_stem().map_or_else(|| "master".into(), |s| s.to_string_lossy().into_owned());
    for path in refmaster::export::write_exports(settings, formats, &dir, &stem)? {
        if !a.quiet {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn run_album(a: &AlbumArgs, batch: bool) -> Result<()> {
    use refmaster::album::{master_album, summary_table, AlbumJob, LoudnessPolicy, TrackStatus};
    if !(-20.0..=0.0).contains(&a.ceiling) {
        bail!("--ceiling {} is outside -20..0 dBTP", a.ceiling);
    }
    let mut refs = Vec::new();
    for r in &a.references {
        refs.push(load_reference(r, &None)?);
    }
    let reference = average_profiles(&refs).context("no reference profile")?;
    let options = MasterOptions {
        solve: SolveOptions { ceiling_dbtp: a.ceiling, target_lufs: a.lufs, ..SolveOptions::default() },
        memory_budget_bytes: a.memory_budget_mb << 20,
        ..MasterOptions::default()
    };
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
    let inputs: Vec<&Path> = a.inputs.iter().map(PathBuf::as_path).collect();
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
