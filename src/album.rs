//! Albums and batches: one reference, many mixes.
//!
//! Album mode masters every song toward the reference's tone but keeps the album's relative
//! loudness, as an engineer would: the loudest mix (the single) gets the target loudness and
//! every other song keeps its distance from it, so a quiet ballad stays quieter. Batch mode
//! ([`LoudnessPolicy::Independent`]) masters unrelated files, each to the full target.
//!
//! Songs are analysed first (profiles only, audio dropped), then mastered on as many threads as
//! asked, each decoding its own mix again: memory stays at a few songs, not the whole album.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::analysis::Profile;
use crate::encode::{refuse_overwriting_inputs, BitDepth};
use crate::error::{Error, Result};
use crate::master::{master_to_file, MasterOptions};

/// How the songs' loudness targets relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoudnessPolicy {
    /// Keep the mixes' loudness differences; the loudest mix gets the target.
    Album,
    /// Every song to the target on its own.
    Independent,
}

/// What happened to one song.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackStatus {
    /// Mastered: (mix LUFS, target LUFS, master LUFS, master true peak dBTP).
    Done { mix_lufs: f64, target_lufs: f64, master_lufs: f64, true_peak_dbtp: f64, notes: Vec<String> },
    /// The output already existed and `force` was off.
    Skipped,
    /// The song failed; the message names the file and the problem.
    Failed(String),
}

/// One song's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackResult {
    /// The mix.
    pub mix: PathBuf,
    /// Its master.
    pub output: PathBuf,
    /// What happened.
    pub status: TrackStatus,
}

/// Per-song loudness targets, LUFS. Album: `target + (mix − loudest mix)`; independent: `target`.
/// Songs with no measurable loudness get the target (they will fail as silent anyway).
pub fn plan_targets(mix_lufs: &[f64], target_lufs: f64, policy: LoudnessPolicy) -> Vec<f64> {
    let loudest = mix_lufs.iter().copied().filter(|l| l.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    mix_lufs
        .iter()
        .map(|&l| match policy {
            LoudnessPolicy::Album if l.is_finite() && loudest.is_finite() => target_lufs + (l - loudest),
            _ => target_lufs,
        })
        .collect()
}

/// Output path of a mix in `out_dir`: `STEM.master.wav`.
pub fn output_path(mix: &Path, out_dir: &Path) -> PathBuf {
    let stem = mix.file_stem().map_or_else(|| "track".into(), |s| s.to_string_lossy().into_owned());
    out_dir.join(format!("{stem}.master.wav"))
}

/// Everything an album run needs besides the songs.
#[derive(Debug, Clone)]
pub struct AlbumJob<'a> {
    /// Target profile (one reference, or the average of several).
    pub reference: &'a Profile,
    /// Mastering options; `solve.target_lufs` (or the reference's loudness) is the album's target.
    pub options: MasterOptions,
    /// Loudness policy.
    pub policy: LoudnessPolicy,
    /// Output format.
    pub bits: BitDepth,
    /// Overwrite existing outputs.
    pub force: bool,
    /// Worker threads.
    pub threads: usize,
}

/// Masters `mixes` into `out_dir`. Never stops at a failed song: each result says what happened.
/// `progress` gets one line per song as it finishes.
pub fn master_album(
    mixes: &[PathBuf],
    out_dir: &Path,
    job: &AlbumJob<'_>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<TrackResult>> {
    if !out_dir.is_dir() {
        return Err(Error::output(out_dir, "output folder does not exist"));
    }
    let outputs: Vec<PathBuf> = mixes.iter().map(|m| output_path(m, out_dir)).collect();
    for (i, o) in outputs.iter().enumerate() {
        if outputs[..i].contains(o) {
            return Err(Error::output(o, "two songs would write the same output (same file name)"));
        }
        let inputs: Vec<&Path> = mixes.iter().map(PathBuf::as_path).collect();
        refuse_overwriting_inputs(o, &inputs)?;
    }
    let todo: Vec<bool> = outputs.iter().map(|o| job.force || !o.exists()).collect();
    // 1. Profiles of every song to master (in parallel; audio dropped at once).
    let profiles: Vec<Option<Result<Profile>>> =
        parallel_map(mixes.len(), job.threads, |i| todo[i].then(|| crate::source::profile_file(&mixes[i])));
    let target = job.options.solve.target_lufs.unwrap_or(job.reference.loudness.integrated_lufs);
    // Album loudness is planned over every song, including those already mastered (skipped):
    // a rerun that re-masters one song must give it the same target as the first run did.
    let mix_lufs: Vec<f64> = (0..mixes.len())
        .map(|i| match &profiles[i] {
            Some(Ok(p)) => p.loudness.integrated_lufs,
            _ if job.policy == LoudnessPolicy::Album => {
                crate::source::profile_file(&mixes[i]).map_or(f64::NAN, |p| p.loudness.integrated_lufs)
            }
            _ => f64::NAN,
        })
        .collect();
    let mut targets = plan_targets(&mix_lufs, target, job.policy);
    let run = |i: usize, target_lufs: f64| {
        let status = match &profiles[i] {
            None => TrackStatus::Skipped,
            Some(Err(e)) => TrackStatus::Failed(e.to_string()),
            Some(Ok(p)) => match master_one(&mixes[i], p, &outputs[i], target_lufs, job) {
                Ok(s) => s,
                Err(e) => TrackStatus::Failed(e.to_string()),
            },
        };
        progress(&progress_line(&mixes[i], &status));
        TrackResult { mix: mixes[i].clone(), output: outputs[i].clone(), status }
    };
    // 2. In album mode the loudest song goes first: if even it cannot reach the target under the
    //    ceiling, every song is lowered by the same shortfall, so the album's balance holds.
    let loudest = (job.policy == LoudnessPolicy::Album)
        .then(|| {
            (0..mixes.len())
                .filter(|&i| matches!(profiles[i], Some(Ok(_))))
                .max_by(|&a, &b| mix_lufs[a].total_cmp(&mix_lufs[b]))
        })
        .flatten();
    let mut first = None;
    if let Some(i) = loudest {
        let r = run(i, targets[i]);
        if let TrackStatus::Done { master_lufs, target_lufs, .. } = r.status {
            let shortfall = master_lufs - target_lufs;
            if shortfall < -0.1 {
                targets.iter_mut().for_each(|t| *t += shortfall);
            }
        }
        first = Some((i, r));
    }
    let mut results = parallel_map(mixes.len(), job.threads, |i| (Some(i) != loudest).then(|| run(i, targets[i])));
    if let Some((i, r)) = first {
        results[i] = Some(r);
    }
    let results: Vec<TrackResult> = results.into_iter().flatten().collect();
    Ok(results)
}

fn master_one(
    mix: &Path,
    profile: &Profile,
    output: &Path,
    target_lufs: f64,
    job: &AlbumJob<'_>,
) -> Result<TrackStatus> {
    // Songs master in parallel: each keeps its samples only within its share of the memory budget.
    let mut opts = job.options.clone();
    opts.memory_budget_bytes /= job.threads.max(1);
    let (source, _, _) = crate::source::open_mix(mix, opts.memory_budget_bytes / 2)?;
    opts.solve.target_lufs = Some(target_lufs);
    let m = master_to_file(&source, profile, job.reference, &opts, output, job.bits, &|_| {})?;
    Ok(TrackStatus::Done {
        mix_lufs: profile.loudness.integrated_lufs,
        target_lufs,
        master_lufs: m.profile.loudness.integrated_lufs,
        true_peak_dbtp: m.profile.loudness.true_peak_dbtp,
        notes: m.notes,
    })
}

fn progress_line(mix: &Path, status: &TrackStatus) -> String {
    let name = mix.file_name().map_or_else(|| mix.display().to_string(), |n| n.to_string_lossy().into_owned());
    match status {
        TrackStatus::Done { master_lufs, true_peak_dbtp, target_lufs, .. } => {
            format!("{name}: mastered to {master_lufs:.1} LUFS (target {target_lufs:.1}), {true_peak_dbtp:.1} dBTP")
        }
        TrackStatus::Skipped => format!("{name}: output exists, skipped (use --force to redo)"),
        TrackStatus::Failed(e) => format!("{name}: FAILED: {e}"),
    }
}

/// A summary table of an album run.
pub fn summary_table(results: &[TrackResult]) -> String {
    let mut s =
        format!("{:<36}{:>10}{:>10}{:>10}{:>9}  {}\n", "song", "mix LUFS", "target", "master", "dBTP", "status");
    for r in results {
        let name = r.mix.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let line = match &r.status {
            TrackStatus::Done { mix_lufs, target_lufs, master_lufs, true_peak_dbtp, notes } => format!(
                "{name:<36}{mix_lufs:>10.1}{target_lufs:>10.1}{master_lufs:>10.1}{true_peak_dbtp:>9.1}  {}",
                if notes.iter().any(|n| n.contains("not reachable")) { "done (target out of reach)" } else { "done" }
            ),
            TrackStatus::Skipped => format!("{name:<36}{:>10}{:>10}{:>10}{:>9}  skipped (exists)", "", "", "", ""),
            TrackStatus::Failed(e) => format!("{name:<36}{:>10}{:>10}{:>10}{:>9}  failed: {e}", "", "", "", ""),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// Runs `f(0..n)` on `threads` workers, results in index order.
fn parallel_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                if let Ok(mut v) = slots.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    slots.into_inner().unwrap_or_default().into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn album_targets_keep_the_mixes_loudness_differences() {
        let t = plan_targets(&[-14.0, -18.5, -16.0], -9.0, LoudnessPolicy::Album);
        assert_eq!(t, vec![-9.0, -13.5, -11.0]);
    }

    #[test]
    fn independent_targets_are_all_the_target() {
        let t = plan_targets(&[-14.0, -18.5], -9.0, LoudnessPolicy::Independent);
        assert_eq!(t, vec![-9.0, -9.0]);
    }

    #[test]
    fn a_silent_song_gets_the_plain_target() {
        let t = plan_targets(&[f64::NEG_INFINITY, -12.0], -10.0, LoudnessPolicy::Album);
        assert_eq!(t, vec![-10.0, -10.0]);
    }
}
