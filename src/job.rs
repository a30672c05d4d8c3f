//! One mastering job, from files to files: what the command line, the web app and the Python
//! package all run, so the same inputs and options give the same master bit for bit.
//!
//! A job is [`JobFiles`] (where to read and write) and [`JobOptions`] (how to master, named as the
//! command line names them: `--max-eq-db` is `max_eq_db` in JSON). [`run`] checks both before
//! any audio is read (every option in range, every output writable, no two outputs the same
//! file, no output an input), then decodes, analyses, solves, masters and writes, and returns a
//! [`JobResult`] that says what was done in the same words the command line prints.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::Profile;
use crate::encode::{check_output_path, refuse_overwriting_inputs, write_text_atomically, write_wav, BitDepth};
use crate::error::{Error, Result};
use crate::export::ExportFormat;
use crate::master::{master_stream, MasterOptions, MasterSink, Mastered, WavSink, WriteInfo};
use crate::platform::Platform;
use crate::report_html::WaveformMeter;
use crate::solve::{average_profiles, SolveOptions};
use crate::source::{open_mix, profile_file, read_range, FrameSource, Mix};
use crate::AudioBuffer;

/// How to master: every option of `refmaster MIX --ref REF`, with the command line's long names
/// (`_` for `-`). Deserialised with unknown keys refused, so `{"lufs": -14, "no_dynamics": true}`
/// from the web app or Python means exactly what `--lufs -14 --no-dynamics` means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct JobOptions {
    /// Without --ref: the learned target to master toward: NAME (of the built-in model),
    /// MODEL.json (its target nearest the mix) or MODEL.json:NAME.
    #[arg(long, value_name = "NAME|MODEL.json[:NAME]", conflicts_with = "references")]
    pub target: Option<String>,
    /// How much of the tonal and width match to apply, percent (0-100).
    #[arg(long, default_value_t = 100.0, allow_hyphen_values = true)]
    pub amount: f64,
    /// EQ smoothing width in octaves (0.02-3).
    #[arg(long, default_value_t = 1.0 / 3.0, allow_hyphen_values = true)]
    pub smoothing: f64,
    /// EQ bound, ± dB (0-24); gaps past it become mix notes.
    #[arg(long, default_value_t = crate::solve::DEFAULT_MAX_EQ_DB, allow_hyphen_values = true)]
    pub max_eq_db: f64,
    /// Width bound, ± dB (0-12).
    #[arg(long, default_value_t = 6.0, allow_hyphen_values = true)]
    pub max_width_db: f64,
    /// True-peak ceiling, dBTP, -20 to 0 (default: the platform's, else -1.0).
    #[arg(long, allow_hyphen_values = true)]
    pub ceiling: Option<f64>,
    /// Loudness target, LUFS, -70 to 0 (default: the platform's, else the reference's).
    #[arg(long, allow_hyphen_values = true)]
    pub lufs: Option<f64>,
    /// Deliver for a platform: spotify, apple, youtube, tidal, amazon, deezer, soundcloud (their
    /// loudness target, -1 dBTP), cd or club (the reference's loudness, -0.3 dBTP). --lufs and
    /// --ceiling override it.
    #[arg(long, value_name = "NAME")]
    #[serde(deserialize_with = "de_opt_from_str", serialize_with = "ser_opt_display")]
    pub platform: Option<Platform>,
    /// Output format: 16, 24 (TPDF dither) or 32f.
    #[arg(long, default_value = "24")]
    #[serde(deserialize_with = "de_from_str")]
    pub bits: BitDepth,
    /// Skip the matching EQ.
    #[arg(long)]
    pub no_eq: bool,
    /// Skip multiband compression.
    #[arg(long)]
    pub no_dynamics: bool,
    /// Skip the width stage.
    #[arg(long)]
    pub no_width: bool,
    /// Skip the limiter: the master is only turned up as far as its true peak stays under the
    /// ceiling (the loudness target may be given up, and a note says so).
    #[arg(long)]
    pub no_limiter: bool,
    /// Never use the soft-clipping saturator (by default it takes over peak reduction the
    /// limiter would do beyond 3 dB).
    #[arg(long)]
    pub no_saturation: bool,
    /// Loudness-war guard: the smallest peak-to-loudness ratio (true peak minus integrated
    /// loudness) a master may be pressed down to when that takes more than 6 dB of peak
    /// reduction, dB (0-30); a louder target is mastered to the guard instead.
    #[arg(long, default_value_t = crate::master::MIN_PLR_DB, value_name = "DB", allow_hyphen_values = true)]
    pub min_plr: f64,
    /// Lift the loudness-war guard and allow limiting up to 30 dB deep: reach a loud target even
    /// if the master comes out flattened.
    #[arg(long)]
    pub allow_crush: bool,
    /// Most decoded and rendered audio refmaster keeps in memory, MiB (0 to 1048576, 0 keeps nothing): a mix
    /// that does not fit half of it is decoded again for every pass, and a rendered signal that
    /// does not fit the rest is rendered again for every read (slower, same master).
    #[arg(long = "memory-budget", default_value_t = DEFAULT_MEMORY_BUDGET_MIB, value_name = "MIB")]
    pub memory_budget: u64,
    /// Deepest limiting allowed, dB of gain reduction at the 99.9th percentile (0-40); a louder
    /// target is reported unreachable instead of crushed.
    #[arg(long, default_value_t = crate::master::MAX_LIMITING_DB, allow_hyphen_values = true)]
    pub max_limiting_db: f64,
    /// Closed-loop EQ correction passes after the first render (0 = open loop, at most 6).
    #[arg(long, default_value_t = 2)]
    pub passes: u8,
    /// Run every closed-loop pass on the whole song instead of the intermediate ones on a short
    /// proxy of its excerpts (slower; for checking what the proxy gives).
    #[arg(long)]
    pub full_loop: bool,
}

/// The default `--memory-budget`, MiB.
pub const DEFAULT_MEMORY_BUDGET_MIB: u64 = (crate::master::DEFAULT_MEMORY_BUDGET_BYTES >> 20) as u64;
/// Largest `--memory-budget`, MiB (1 TiB).
pub const MAX_MEMORY_BUDGET_MIB: u64 = 1 << 20;

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            target: None,
            amount: 100.0,
            smoothing: 1.0 / 3.0,
            max_eq_db: crate::solve::DEFAULT_MAX_EQ_DB,
            max_width_db: 6.0,
            ceiling: None,
            lufs: None,
            platform: None,
            bits: BitDepth::Int24,
            no_eq: false,
            no_dynamics: false,
            no_width: false,
            no_limiter: false,
            no_saturation: false,
            min_plr: crate::master::MIN_PLR_DB,
            allow_crush: false,
            memory_budget: DEFAULT_MEMORY_BUDGET_MIB,
            max_limiting_db: crate::master::MAX_LIMITING_DB,
            passes: 2,
            full_loop: false,
        }
    }
}

/// Checks that `value` is a finite number in `lo..=hi`; the error names the option as the
/// command line spells it.
pub fn check_option(name: &str, value: f64, (lo, hi): (f64, f64), unit: &str) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::option(name, format!("{value} is not a finite number")));
    }
    if value < lo || value > hi {
        return Err(Error::option(name, format!("{value} is outside {lo}..{hi}{unit}")));
    }
    Ok(())
}

/// Ranges of the options, shared by every command that takes them.
pub mod ranges {
    /// `--amount`, percent.
    pub const AMOUNT: (f64, f64) = (0.0, 100.0);
    /// `--smoothing`, octaves.
    pub const SMOOTHING: (f64, f64) = (0.02, 3.0);
    /// `--ceiling`, dBTP.
    pub const CEILING: (f64, f64) = crate::settings::limits::CEILING_DBTP;
    /// `--lufs`, LUFS.
    pub const LUFS: (f64, f64) = (-70.0, 0.0);
    /// `--min-plr`, dB.
    pub const MIN_PLR: (f64, f64) = (0.0, 30.0);
    /// `--max-limiting-db`, dB.
    pub const MAX_LIMITING: (f64, f64) = (0.0, 40.0);
}

impl JobOptions {
    /// Checks every option (finite, in range, consistent) before any work.
    pub fn validate(&self) -> Result<()> {
        check_option("amount", self.amount, ranges::AMOUNT, " %")?;
        check_option("smoothing", self.smoothing, ranges::SMOOTHING, " octaves")?;
        check_option("max-eq-db", self.max_eq_db, (0.0, crate::settings::limits::EQ_GAIN_DB), " dB")?;
        check_option("max-width-db", self.max_width_db, (0.0, crate::settings::limits::WIDTH_GAIN_DB), " dB")?;
        if let Some(c) = self.ceiling {
            check_option("ceiling", c, ranges::CEILING, " dBTP")?;
        }
        if let Some(l) = self.lufs {
            check_option("lufs", l, ranges::LUFS, " LUFS")?;
        }
        check_option("min-plr", self.min_plr, ranges::MIN_PLR, " dB")?;
        check_option("max-limiting-db", self.max_limiting_db, ranges::MAX_LIMITING, " dB")?;
        if self.memory_budget > MAX_MEMORY_BUDGET_MIB {
            return Err(Error::option(
                "memory-budget",
                format!("{} MiB is outside 0..{MAX_MEMORY_BUDGET_MIB} MiB", self.memory_budget),
            ));
        }
        if self.passes > 6 {
            return Err(Error::option("passes", format!("{} is outside 0..6", self.passes)));
        }
        if let Some(t) = &self.target {
            if t.trim().is_empty() {
                return Err(Error::option("target", "is empty"));
            }
        }
        Ok(())
    }

    /// The ceiling in force: `--ceiling`, else the platform's, else -1 dBTP.
    pub fn ceiling_dbtp(&self) -> f64 {
        self.ceiling.or(self.platform.map(Platform::ceiling_dbtp)).unwrap_or(-1.0)
    }

    /// The loudness target in force: `--lufs`, else the platform's, else the reference's (None).
    pub fn target_lufs(&self) -> Option<f64> {
        self.lufs.or(self.platform.and_then(Platform::target_lufs))
    }

    /// The memory budget, bytes.
    pub fn memory_budget_bytes(&self) -> usize {
        usize::try_from(self.memory_budget.min(MAX_MEMORY_BUDGET_MIB) << 20).unwrap_or(usize::MAX)
    }

    /// The mastering loop's options (call [`JobOptions::validate`] first).
    pub fn master_options(&self) -> MasterOptions {
        MasterOptions {
            solve: SolveOptions {
                amount: self.amount / 100.0,
                smoothing_octaves: self.smoothing,
                max_eq_db: self.max_eq_db,
                max_width_db: self.max_width_db,
                ceiling_dbtp: self.ceiling_dbtp(),
                target_lufs: self.target_lufs(),
                eq: !self.no_eq,
                dynamics: !self.no_dynamics,
                width: !self.no_width,
                limiter: !self.no_limiter,
            },
            closed_loop_passes: usize::from(self.passes),
            max_limiting_db: self.max_limiting_db,
            saturation: !self.no_saturation,
            min_plr_db: self.min_plr,
            allow_crush: self.allow_crush,
            memory_budget_bytes: self.memory_budget_bytes(),
            proxy: !self.full_loop,
            spool: true,
            spool_dir: None,
        }
    }

    /// Reads options from a JSON object (the web API's and Python's form), refusing unknown keys
    /// with a "did you mean", then validates them. `src` names where the JSON came from.
    pub fn from_json_value(value: serde_json::Value, src: &str) -> Result<Self> {
        let opts: JobOptions = serde_path_to_error::deserialize(value).map_err(|e| {
            let msg = e.inner().to_string();
            Error::settings(src, crate::settings::field_of_error(&e.path().to_string(), &msg), with_did_you_mean(&msg))
        })?;
        opts.validate()?;
        Ok(opts)
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" with the nearest expected name offered.
pub fn with_did_you_mean(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return msg.to_string();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match crate::settings::nearest_name(unknown, &candidates) {
        Some(best) => format!("unknown key `{unknown}` (did you mean `{best}`?)"),
        None => format!("unknown key `{unknown}` (known keys: {})", candidates.join(", ")),
    }
}

fn de_from_str<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    // Accepts "24" and 24 alike: JSON writers disagree on whether a bit depth is a number.
    let v = serde_json::Value::deserialize(d)?;
    let s = match &v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(serde::de::Error::custom(format!("expected a string or number, got {other}"))),
    };
    s.parse().map_err(serde::de::Error::custom)
}

fn de_opt_from_str<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!("expected a name, got {other}"))),
    }
}

fn ser_opt_display<S: serde::Serializer>(v: &Option<Platform>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(p) => s.serialize_str(p.name()),
        None => s.serialize_none(),
    }
}

/// Where a job reads and writes.
#[derive(Debug, Clone, Default)]
pub struct JobFiles {
    /// The mix to master.
    pub mix: PathBuf,
    /// References (audio, or profile JSON); empty: a learned target.
    pub references: Vec<PathBuf>,
    /// The master WAV (default: MIX.master.wav beside the mix). Not written with `dry_run`.
    pub output: Option<PathBuf>,
    /// The settings JSON.
    pub settings: Option<PathBuf>,
    /// The HTML report.
    pub report: Option<PathBuf>,
    /// The spectrum plot PNG.
    pub plot: Option<PathBuf>,
    /// Write OUT.preview-mix.wav and OUT.preview-master.wav.
    pub preview: bool,
    /// Export formats.
    pub exports: Vec<ExportFormat>,
    /// Folder of the exports (default: the output's folder).
    pub export_dir: Option<PathBuf>,
    /// Solve (and run the whole loop, so the settings are the ones a real run writes) without
    /// writing the master.
    pub dry_run: bool,
}

/// What one output of a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The master WAV.
    Master,
    /// The settings JSON.
    Settings,
    /// The HTML report.
    Report,
    /// The spectrum PNG.
    Plot,
    /// The loudness-matched excerpt of the mix.
    PreviewMix,
    /// The loudness-matched excerpt of the master.
    PreviewMaster,
    /// An export for another tool.
    Export(ExportFormat),
    /// The note beside the EasyEffects preset.
    ExportNote,
}

impl OutputKind {
    /// A short name for APIs and listings: `master`, `settings`, `report`, `plot`, `preview_mix`,
    /// `preview_master`, the export format's name (`apo`, `ffmpeg`, ...), `easyeffects_note`.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Master => "master",
            OutputKind::Settings => "settings",
            OutputKind::Report => "report",
            OutputKind::Plot => "plot",
            OutputKind::PreviewMix => "preview_mix",
            OutputKind::PreviewMaster => "preview_master",
            OutputKind::Export(f) => f.name(),
            OutputKind::ExportNote => "easyeffects_note",
        }
    }
}

impl OutputKind {
    /// What the output is, in words, as the command line names it.
    pub fn description(self) -> String {
        match self {
            OutputKind::Master => "the master (-o)".into(),
            OutputKind::Settings => "--settings".into(),
            OutputKind::Report => "--report".into(),
            OutputKind::Plot => "--plot".into(),
            OutputKind::PreviewMix | OutputKind::PreviewMaster => "a --preview file".into(),
            OutputKind::Export(f) => format!("the {} export", f.name()),
            OutputKind::ExportNote => "the easyeffects export's note".into(),
        }
    }
}

/// The default master path: MIX.master.wav beside the mix.
pub fn default_output(mix: &Path) -> PathBuf {
    let stem = mix.file_stem().map_or_else(|| "master".into(), |s| s.to_string_lossy().into_owned());
    mix.with_file_name(format!("{stem}.master.wav"))
}

impl JobFiles {
    /// The master path in force.
    pub fn master_path(&self) -> PathBuf {
        self.output.clone().unwrap_or_else(|| default_output(&self.mix))
    }

    /// Every file this job will write, with what it is, in the order they are written.
    pub fn planned_outputs(&self) -> Vec<(OutputKind, PathBuf)> {
        let out = self.master_path();
        let mut v = Vec::new();
        if !self.dry_run {
            v.push((OutputKind::Master, out.clone()));
        }
        if let Some(s) = &self.settings {
            v.push((OutputKind::Settings, s.clone()));
        }
        if self.preview {
            let (pm, pw) = crate::preview::preview_paths(&out);
            v.push((OutputKind::PreviewMix, pm));
            v.push((OutputKind::PreviewMaster, pw));
        }
        if let Some(p) = &self.plot {
            v.push((OutputKind::Plot, p.clone()));
        }
        if let Some(r) = &self.report {
            v.push((OutputKind::Report, r.clone()));
        }
        let dir = self.export_dir.clone().unwrap_or_else(|| match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
        let stem = export_stem(&out);
        for &f in &self.exports {
            v.push((OutputKind::Export(f), dir.join(f.file_name(&stem))));
            if f == ExportFormat::EasyEffects {
                v.push((OutputKind::ExportNote, dir.join(format!("{stem}.easyeffects.txt"))));
            }
        }
        v
    }

    /// Checks the files before any work: the inputs exist, every output can be written where it
    /// is named (its folder exists, it is not a device or folder, WAV outputs are named `.wav`),
    /// no output is an input and no two outputs are the same file.
    pub fn check(&self) -> Result<()> {
        for input in std::iter::once(&self.mix).chain(&self.references) {
            let meta = std::fs::metadata(input).map_err(|e| Error::input(input, crate::decode::io_reason(&e)))?;
            if meta.is_dir() {
                return Err(Error::input(input, "is a folder, not an audio file"));
            }
        }
        if self.dry_run && (self.report.is_some() || self.plot.is_some() || self.preview) {
            return Err(Error::Unsupported(
                "--report, --plot and --preview need a rendered master: drop --dry-run".into(),
            ));
        }
        let mut inputs: Vec<&Path> = vec![&self.mix];
        inputs.extend(self.references.iter().map(PathBuf::as_path));
        check_outputs(&self.planned_outputs(), &inputs)
    }
}

/// The stem of export files: the master's file name without its extension.
fn export_stem(out: &Path) -> String {
    out.file_stem().map_or_else(|| "master".into(), |s| s.to_string_lossy().into_owned())
}

/// Checks a set of planned outputs against the inputs and each other (see [`JobFiles::check`]).
pub fn check_outputs(outputs: &[(OutputKind, PathBuf)], inputs: &[&Path]) -> Result<()> {
    let mut seen: Vec<(PathBuf, OutputKind)> = Vec::new();
    for (kind, path) in outputs {
        if matches!(kind, OutputKind::Master | OutputKind::PreviewMix | OutputKind::PreviewMaster) {
            crate::encode::check_wav_name(path)?;
        }
        check_output_path(path)?;
        refuse_overwriting_inputs(path, inputs)?;
        let resolved = crate::encode::canonical_target(path);
        if let Some((_, other)) = seen.iter().find(|(r, _)| *r == resolved) {
            return Err(Error::output(
                path,
                format!(
                    "is named as two outputs ({} and {}); each output needs its own file",
                    other.description(),
                    kind.description()
                ),
            ));
        }
        seen.push((resolved, *kind));
    }
    Ok(())
}

/// A job's progress: the stage it is in (in words), and how many of its stages are done.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// What is happening now ("decoding and analysing mix.wav", "pass 2: rendering", ...).
    pub stage: &'a str,
    /// Stages started so far, counting this one.
    pub step: usize,
    /// Stages in all.
    pub steps: usize,
}

/// What a job did.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The mix's profile.
    pub mix_profile: Profile,
    /// The target it was mastered toward (the reference's, several references' average, or a
    /// learned target's).
    pub target: Profile,
    /// With no reference: which learned target was chosen and why.
    pub target_note: Option<String>,
    /// The outcome of the mastering loop (settings, the master's profile, notes).
    pub mastered: Mastered,
    /// Files written, in order.
    pub written: Vec<(OutputKind, PathBuf)>,
    /// With previews: a line saying where they were cut and at what level.
    pub preview_note: Option<String>,
}

impl JobResult {
    /// The text the command line prints: target choice, comparison table, settings in words,
    /// warnings, notes, playback levels, and a line per file written.
    pub fn report_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.target_note.iter().cloned().collect();
        if let Some(master) = self.written.iter().find(|(k, _)| *k == OutputKind::Master) {
            lines.push(crate::report::comparison_text(&self.mix_profile, &self.target, &self.mastered.profile));
            lines.push(crate::report::settings_text(&self.mastered.settings));
            lines.extend(self.warnings().into_iter().map(|w| format!("warning: {w}")));
            lines.extend(self.mastered.notes.iter().map(|n| format!("note: {n}")));
            lines.extend(self.playback().into_iter().map(|p| format!("playback: {p}")));
            lines.push(format!("wrote {}", master.1.display()));
        } else {
            lines.push(crate::report::settings_text(&self.mastered.settings));
            lines.extend(self.mastered.notes.iter().map(|n| format!("note: {n}")));
        }
        if let Some(p) = &self.preview_note {
            lines.push(p.clone());
        }
        for (kind, path) in &self.written {
            if *kind != OutputKind::Master {
                lines.push(format!("wrote {}", path.display()));
            }
        }
        lines
    }

    /// Warnings about the mix, the reference and the master.
    pub fn warnings(&self) -> Vec<String> {
        crate::report::warnings(&self.mix_profile, &self.target, &self.mastered)
    }

    /// What each streaming service's normalisation does to the master.
    pub fn playback(&self) -> Vec<String> {
        crate::platform::playback_report(&self.mastered.profile).iter().map(ToString::to_string).collect()
    }
}

/// Reads a reference: a saved profile (`.json`) or audio, analysed as it decodes.
pub fn load_reference(path: &Path) -> Result<Profile> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, crate::decode::io_reason(&e)))?;
        return crate::analysis::profile_from_json(&text, path);
    }
    profile_file(path)
}

/// Renders saved `settings` onto the mix at `mix` into the WAV file `output` (what `refmaster
/// apply` does, for every host): the settings' dither seed, and the ceiling guard when the
/// limiter is on, so the file is the one the run that wrote the settings produced. `progress` is
/// told when decoding and rendering start.
pub fn apply(
    mix: &Path,
    settings: &crate::settings::Settings,
    output: &Path,
    bits: BitDepth,
    memory_budget_bytes: usize,
    progress: &dyn Fn(&str),
) -> Result<()> {
    progress("decoding");
    let (source, _, _) = open_mix(mix, memory_budget_bytes / 2)?;
    crate::render::check_channel_count(source.channel_count()).map_err(|e| match e {
        Error::Unsupported(reason) => Error::input(mix, reason),
        other => other,
    })?;
    progress("rendering");
    crate::encode::write_wav_stream(output, source.sample_rate_hz(), source.channel_count(), bits, |w| {
        w.set_dither_seed(settings.dither_seed);
        if settings.limiter.enabled {
            w.set_ceiling(settings.limiter.ceiling_dbtp);
        }
        crate::render::stream::render_stream(&source, settings, &mut |_, chunk| w.write(chunk)).map(|_| ())
    })
}

/// Runs one mastering job (see the module doc). `progress` is called as each stage starts.
pub fn run(files: &JobFiles, opts: &JobOptions, progress: &(dyn Fn(Progress<'_>) + Sync)) -> Result<JobResult> {
    opts.validate()?;
    if opts.target.is_some() && !files.references.is_empty() {
        return Err(Error::option("target", "cannot be used with --ref: choose a reference or a learned target"));
    }
    files.check()?;
    let mut mopts = opts.master_options();
    // decode + analyse per file, the target choice (no reference), solve, one render per pass,
    // verify, write
    let steps =
        1 + files.references.len() + usize::from(files.references.is_empty()) + 1 + (mopts.closed_loop_passes + 1) + 2;
    let step = std::sync::atomic::AtomicUsize::new(0);
    let say = |stage: &str| {
        let n = step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(Progress { stage, step: n.min(steps), steps });
    };
    // The references are decoded and analysed on a second thread while the mix is (the two are
    // independent; on two cores this nearly halves the time before solving).
    let keep_bytes = mopts.memory_budget_bytes / 2;
    let (loaded_mix, loaded_refs) = std::thread::scope(|scope| {
        let refs = scope.spawn(|| {
            files
                .references
                .iter()
                .map(|r| {
                    say(&format!("decoding and analysing {}", r.display()));
                    load_reference(r)
                })
                .collect::<Result<Vec<_>>>()
        });
        say(&format!("decoding and analysing {}", files.mix.display()));
        let mix = open_mix(&files.mix, keep_bytes);
        (mix, refs.join())
    });
    let (mix, mix_profile, _) = loaded_mix?;
    crate::render::check_channel_count(mix.channel_count()).map_err(|e| match e {
        Error::Unsupported(reason) => Error::input(&files.mix, reason),
        other => other,
    })?;
    let (target, target_note) = if files.references.is_empty() {
        say("choosing a target");
        let choice = crate::learn::choose_target(opts.target.as_deref(), &mix_profile)?;
        let note = choice.describe();
        (choice.target.profile, Some(note))
    } else {
        let refs = loaded_refs.map_err(|_| Error::Unsupported("internal: the reference loader panicked".into()))??;
        // One reference is its own target, envelopes included (the same-music dynamics fit
        // reads them); several are averaged.
        let target = match <[Profile; 1]>::try_from(refs) {
            Ok([one]) => one,
            Err(refs) => average_profiles(&refs).ok_or_else(|| Error::Unsupported("no reference profile".into()))?,
        };
        (target, None)
    };
    let out = files.master_path();
    // The last pass's render waits for the writer on the output's disk.
    mopts.spool_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf);
    let mut written = Vec::new();
    let mut extras = Extras::new(files, mix.frames());
    let stage = |m: &str| say(m);
    let mastered = if files.dry_run {
        // The whole loop runs (guard, saturator plan, closed loop) so the settings are exactly
        // the ones a real run writes and `apply` reproduces its master; only the audio is not
        // written.
        master_stream(&mix, &mix_profile, &target, &mopts, &stage, &mut NullSink)?
    } else {
        let mut done = None;
        crate::encode::write_wav_stream(&out, mix.sample_rate_hz(), mix.channel_count(), opts.bits, |w| {
            let mut sink = ExtrasSink { wav: WavSink(w), extras: &mut extras };
            done = Some(master_stream(&mix, &mix_profile, &target, &mopts, &stage, &mut sink)?);
            Ok(())
        })?;
        written.push((OutputKind::Master, out.clone()));
        done.ok_or_else(|| Error::output(&out, "internal: the master was not produced"))?
    };
    if let Some(s) = &files.settings {
        write_text_atomically(s, &(mastered.settings.to_json() + "\n"))?;
        written.push((OutputKind::Settings, s.clone()));
    }
    let mut result = JobResult { mix_profile, target, target_note, mastered, written, preview_note: None };
    write_extras(files, opts.bits, &out, &mix, extras, &mut result)?;
    if !files.exports.is_empty() {
        let planned = files.planned_outputs();
        let dir = planned
            .iter()
            .find_map(|(k, p)| matches!(k, OutputKind::Export(_)).then(|| p.parent().map(Path::to_path_buf)))
            .flatten()
            .unwrap_or_else(|| PathBuf::from("."));
        let paths = crate::export::write_exports(&result.mastered.settings, &files.exports, &dir, &export_stem(&out))?;
        for p in paths {
            let kind = planned.iter().find(|(_, q)| *q == p).map_or(OutputKind::ExportNote, |(k, _)| *k);
            result.written.push((kind, p));
        }
    }
    Ok(result)
}

/// Slices in the report's waveform overviews.
const WAVEFORM_COLUMNS: usize = 900;

/// What the report and the previews need of the master, gathered as it is written.
struct Extras {
    /// Overview of the master (with a report).
    waveform: Option<WaveformMeter>,
    /// Whether to keep the previews' excerpt.
    keep_preview: bool,
    /// The excerpt of the master the previews are cut from.
    preview: Vec<Vec<f32>>,
    /// Where it lies (first frame, frames).
    window: (usize, usize),
    frames: usize,
}

impl Extras {
    fn new(files: &JobFiles, frames: usize) -> Self {
        Self {
            waveform: files.report.as_ref().map(|_| WaveformMeter::new(frames, 1, WAVEFORM_COLUMNS)),
            keep_preview: files.preview,
            preview: Vec::new(),
            window: (0, 0),
            frames,
        }
    }
}

/// A sink that discards the master (`--dry-run`).
struct NullSink;

impl MasterSink for NullSink {
    fn rewindable(&self) -> bool {
        true
    }
    fn begin(&mut self, _info: &WriteInfo) -> Result<()> {
        Ok(())
    }
    fn write(&mut self, _first_frame: usize, _chunk: &[&[f32]]) -> Result<()> {
        Ok(())
    }
}

/// The master's way out: the WAV file, and on the side what the report and previews need.
struct ExtrasSink<'a, 'b, 'c> {
    wav: WavSink<'a, 'b>,
    extras: &'c mut Extras,
}

impl MasterSink for ExtrasSink<'_, '_, '_> {
    /// Not while previews are kept: they are cut from the loudest window, known only once the
    /// master has been measured.
    fn rewindable(&self) -> bool {
        !self.extras.keep_preview && self.wav.rewindable()
    }

    fn begin(&mut self, info: &WriteInfo) -> Result<()> {
        let e = &mut *self.extras;
        if e.waveform.is_some() {
            e.waveform = Some(WaveformMeter::new(e.frames, info.sample_rate_hz, WAVEFORM_COLUMNS));
        }
        e.window = info.loudest_window;
        e.preview =
            vec![Vec::with_capacity(if e.keep_preview { info.loudest_window.1 } else { 0 }); info.channel_count];
        self.wav.begin(info)
    }

    fn write(&mut self, first_frame: usize, chunk: &[&[f32]]) -> Result<()> {
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

    fn end(&mut self) -> Result<Option<crate::ceiling::NetStats>> {
        self.wav.end()
    }
}

/// The previews, the plot and the report, written after the master.
fn write_extras(
    files: &JobFiles,
    bits: BitDepth,
    out: &Path,
    mix: &Mix,
    extras: Extras,
    result: &mut JobResult,
) -> Result<()> {
    let mastered = &result.mastered;
    let mut preview_range = None;
    if files.preview {
        let (start, len) = extras.window;
        let master_ex = AudioBuffer { sample_rate_hz: mix.sample_rate_hz(), channels: extras.preview };
        let mix_ex = read_range(mix, start, len)?;
        let pv = crate::preview::previews_of(mix_ex, master_ex, start, mastered.settings.limiter.ceiling_dbtp);
        let (pm, pw) = crate::preview::preview_paths(out);
        write_wav(&pm, &pv.mix, bits, mastered.settings.dither_seed)?;
        write_wav(&pw, &pv.master, bits, mastered.settings.dither_seed)?;
        result.preview_note = Some(format!(
            "previews: {:.1}-{:.1} s, both at {} LUFS (mix {:+.1} dB, master {:+.1} dB)",
            pv.start_s,
            pv.start_s + pv.duration_s,
            crate::report::fmt_db(pv.loudness_lufs),
            pv.mix_gain_db,
            pv.master_gain_db
        ));
        result.written.push((OutputKind::PreviewMix, pm));
        result.written.push((OutputKind::PreviewMaster, pw));
        preview_range = Some((pv.start_s, pv.duration_s));
    }
    if let Some(path) = &files.plot {
        crate::report_html::write_spectrum_png(path, &result.mix_profile, &result.target, &mastered.profile)?;
        result.written.push((OutputKind::Plot, path.clone()));
    }
    if let Some(path) = &files.report {
        let warnings = result.warnings();
        let playback = crate::platform::playback_report(&mastered.profile);
        let name = out.file_name().map_or_else(|| out.display().to_string(), |n| n.to_string_lossy().into_owned());
        let mut meter = WaveformMeter::new(mix.frames(), mix.sample_rate_hz(), WAVEFORM_COLUMNS);
        mix.stream(&mut |chunk| {
            meter.push(chunk);
            Ok(())
        })?;
        let mix_wave = meter.finish();
        let master_wave = extras.waveform.map_or_else(|| mix_wave.clone(), WaveformMeter::finish);
        let input = crate::report_html::ReportInput {
            mix: &result.mix_profile,
            reference: &result.target,
            mastered,
            master_name: &name,
            warnings: &warnings,
            playback: &playback,
            preview: preview_range,
            waveforms: Some((&mix_wave, &master_wave)),
        };
        crate::report_html::write_report(path, &input)?;
        result.written.push((OutputKind::Report, path.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_json_uses_the_command_lines_names_and_refuses_unknown_keys() {
        let o = JobOptions::from_json_value(serde_json::json!({"lufs": -14, "no_dynamics": true, "bits": 16}), "o")
            .expect("valid options");
        assert_eq!(o.lufs, Some(-14.0));
        assert!(o.no_dynamics);
        assert_eq!(o.bits, BitDepth::Int16);
        let e = JobOptions::from_json_value(serde_json::json!({"max_eq_dB": 6}), "o").expect_err("unknown key");
        assert!(e.to_string().contains("did you mean `max_eq_db`"), "{e}");
    }

    #[test]
    fn every_numeric_option_refuses_nan_infinity_and_out_of_range_values() {
        type Setter = fn(&mut JobOptions, f64);
        let setters: [(&str, Setter); 8] = [
            ("amount", |o, v| o.amount = v),
            ("smoothing", |o, v| o.smoothing = v),
            ("max-eq-db", |o, v| o.max_eq_db = v),
            ("max-width-db", |o, v| o.max_width_db = v),
            ("ceiling", |o, v| o.ceiling = Some(v)),
            ("lufs", |o, v| o.lufs = Some(v)),
            ("min-plr", |o, v| o.min_plr = v),
            ("max-limiting-db", |o, v| o.max_limiting_db = v),
        ];
        for (name, set) in setters {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e300, 100.5] {
                if name == "amount" && bad == 100.5 {
                    continue;
                }
                let mut o = JobOptions::default();
                set(&mut o, bad);
                let e = o.validate().expect_err(&format!("--{name} {bad} must be refused"));
                assert!(e.to_string().starts_with(&format!("--{name}: ")), "{e}");
            }
        }
        let o = JobOptions { amount: 100.5, ..JobOptions::default() };
        assert!(o.validate().is_err());
        let o = JobOptions { memory_budget: 17_592_186_044_416, ..JobOptions::default() };
        assert!(o.validate().expect_err("huge budget").to_string().starts_with("--memory-budget: "));
        assert!(JobOptions::default().validate().is_ok());
    }
}
