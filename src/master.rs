//! Stage 5, verify: the closed loop that turns solved settings into a master that itself sits on
//! the target. Each pass renders the chain, finds the limiter drive that lands the integrated
//! loudness within 0.05 LU of the target (re-measuring the limited output, never assuming), then
//! measures the master's spectrum and corrects the EQ for what compression and limiting changed.

use crate::analysis::loudness::{block_energies, gated_loudness, integrated_lufs_scaled, k_weighted_energy};
use crate::analysis::spectrum::{band_levels_db, welch};
use crate::analysis::{analyze, Profile};
use crate::audio::db_to_lin;
use crate::audio::AudioBuffer;
use crate::dsp::truepeak::peak_envelope;
use crate::error::{Error, Result};
use crate::render::limiter::{finish, gain_curve, limit, stats as limiter_stats, LimiterStats, CEILING_MARGIN_DB};
use crate::render::render_pre_limiter;
use crate::settings::Settings;
use crate::solve::{follow_limit_hz, match_curve, solve, SolveOptions};
use std::path::Path;

/// Loudness tolerance of the drive search, LU.
pub const LOUDNESS_TOLERANCE_LU: f64 = 0.05;
/// Deepest limiting refmaster applies by default, dB of gain reduction at the 99.9th percentile
/// (what more than 0.1 % of the music receives). Past this a loud target is reported
/// unreachable rather than crushed.
pub const MAX_LIMITING_DB: f64 = 12.0;

/// Options of a mastering run.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// Solver options (amount, bounds, ceiling, loudness target, stage switches).
    pub solve: SolveOptions,
    /// EQ correction passes after the first render.
    pub closed_loop_passes: usize,
    /// Deepest limiter gain reduction allowed, dB.
    pub max_limiting_db: f64,
}

impl Default for MasterOptions {
    fn default() -> Self {
        Self { solve: SolveOptions::default(), closed_loop_passes: 2, max_limiting_db: MAX_LIMITING_DB }
    }
}

/// The outcome of [`master`].
#[derive(Debug, Clone)]
pub struct Mastered {
    /// Final settings (rendering them onto the mix reproduces `audio` bit for bit).
    pub settings: Settings,
    /// The master, floating point, before dither.
    pub audio: AudioBuffer,
    /// Profile of the master.
    pub profile: Profile,
    /// Limiter gain reduction of the final render.
    pub limiter: LimiterStats,
    /// Things the user should know (unreachable targets, bounded EQ, mono mix...).
    pub notes: Vec<String>,
}

/// Masters `mix` (profiled as `mix_profile`) toward `target`.
pub fn master(
    mix: &AudioBuffer,
    mix_profile: &Profile,
    target: &Profile,
    opts: &MasterOptions,
    progress: &dyn Fn(&str),
) -> Result<Mastered> {
    crate::render::check_channels(mix)?;
    if !mix_profile.loudness.integrated_lufs.is_finite() {
        let reason = if mix_profile.loudness.sample_peak_dbfs.is_finite() {
            format!(
                "is too quiet to master: below the -70 LUFS loudness gate (sample peak {:.1} dBFS)",
                mix_profile.loudness.sample_peak_dbfs
            )
        } else {
            "is digital silence: nothing to master".to_string()
        };
        return Err(Error::input(Path::new(&mix_profile.source), reason));
    }
    if opts.solve.target_lufs.is_none() && !target.loudness.integrated_lufs.is_finite() {
        return Err(Error::input(Path::new(&target.source), "reference is digital silence: no loudness to match"));
    }
    progress("solving");
    let (mut settings, mut notes) = solve(mix_profile, target, &opts.solve);
    let grid = mix_profile.spectrum.frequencies_hz.clone();
    let amount = opts.solve.amount.clamp(0.0, 1.0);
    // The spectrum the master should have: the mix moved `amount` of the way to the target.
    let want = |m: &[f64], t: &[f64]| -> Vec<f64> { m.iter().zip(t).map(|(m, t)| m + amount * (t - m)).collect() };
    let want_mid = want(&mix_profile.spectrum.mid_db, &target.spectrum.mid_db);
    let want_side = want(&mix_profile.spectrum.side_db, &target.spectrum.side_db);
    let cutoff = follow_limit_hz(mix_profile, target);
    let mut loop_opts = opts.solve.clone();
    loop_opts.amount = 1.0;
    let mut unreachable;
    let mut bias = 0.0;
    let mut pass = 0;
    let (audio, stats) = loop {
        progress(&format!("rendering (pass {})", pass + 1));
        let pre = render_pre_limiter(mix, &settings)?;
        let planes: Vec<&[f32]> = pre.channels.iter().map(Vec::as_slice).collect();
        let env = peak_envelope(&planes);
        let last = pass >= opts.closed_loop_passes || !settings.eq.enabled;
        // Intermediate passes only need the loudness roughly right (for the spectral measurement);
        // the final pass verifies on the real output until it is within tolerance.
        let rounds = if last { 4 } else { 1 };
        let (out, stats, short) = loudness_loop(&pre, &env, &mut settings, opts.max_limiting_db, rounds, &mut bias);
        unreachable = short;
        if pass >= opts.closed_loop_passes || !settings.eq.enabled {
            break (out, stats);
        }
        let (m, s) = out.mid_side();
        let spectra = welch(&[&m, &s], out.sample_rate_hz);
        let out_mid = band_levels_db(&spectra[0], &grid);
        let out_side = band_levels_db(&spectra[1], &grid);
        let e_mid = match_curve(&grid, &crate::solve::difference(&want_mid, &out_mid), cutoff, &loop_opts);
        let max = opts.solve.max_eq_db;
        for (g, e) in settings.eq.mid_gain_db.iter_mut().zip(&e_mid) {
            *g = (*g + e).clamp(-max, max);
        }
        let mut e_side = vec![0.0; grid.len()];
        if out.channel_count() == 2 && settings.eq.side_gain_db.iter().any(|g| *g != 0.0) {
            e_side = match_curve(&grid, &crate::solve::difference(&want_side, &out_side), cutoff, &loop_opts);
            for (g, e) in settings.eq.side_gain_db.iter_mut().zip(&e_side) {
                *g = (*g + e).clamp(-max, max);
            }
        }
        if out.channel_count() == 2 && settings.width.enabled && settings.width.bands.len() == grid.len() {
            let sm = |side: &[f64], mid: &[f64]| crate::solve::difference(side, mid);
            let gap = crate::solve::difference(&sm(&want_side, &want_mid), &sm(&out_side, &out_mid));
            // What the EQ corrections above already do to side/mid is not the width stage's job.
            let wanted = crate::solve::difference(&gap, &sm(&e_side, &e_mid));
            let e_w = crate::solve::width_curve(&grid, &wanted, cutoff, &loop_opts);
            let bound = opts.solve.max_width_db;
            for ((b, e), f) in settings.width.bands.iter_mut().zip(&e_w).zip(&grid) {
                let mut g = (b.side_gain_db + e).clamp(-bound, bound);
                if *f <= crate::solve::NO_WIDENING_BELOW_HZ {
                    g = g.min(0.0);
                }
                b.side_gain_db = g;
            }
        }
        pass += 1;
    };
    let rate = f64::from(mix.sample_rate_hz);
    let fit_max = cutoff.min(20_000.0);
    settings.eq.parametric_mid = crate::solve::parametric::fit(&grid, &settings.eq.mid_gain_db, fit_max, 10, rate);
    let side_total: Vec<f64> =
        grid.iter().map(|&f| crate::render::eq::side_curve_db(&settings.eq, &settings.width, f)).collect();
    settings.eq.parametric_side = crate::solve::parametric::fit(&grid, &side_total, fit_max, 10, rate);
    if let Some((reached, wanted)) = unreachable {
        notes.push(format!(
            "target {wanted:.1} LUFS is not reachable under the {:.1} dBTP ceiling without more than {:.0} dB of limiting; mastered to {reached:.1} LUFS instead",
            settings.limiter.ceiling_dbtp, opts.max_limiting_db
        ));
    }
    progress("verifying");
    let profile = analyze(&audio, "master", false);
    Ok(Mastered { settings, audio, profile, limiter: stats, notes })
}

/// Finds the drive that puts the limited output's integrated loudness on the target, without
/// exceeding `max_limiting_db` of gain reduction. Returns the output, the limiter's statistics,
/// and `Some((reached, wanted))` if the target was out of reach.
///
/// The search measures the limited output's loudness from the pre-limiter K-weighted energy
/// times the limiter's gain squared (cheap: no filtering or copying per try). That shortcut
/// ignores how the gain's fast movements interact with the K-filter, so every candidate drive is
/// then verified on the real rendered output, and the search re-aims by the measured difference.
pub fn loudness_loop(
    pre: &AudioBuffer,
    env: &[f32],
    settings: &mut Settings,
    max_limiting_db: f64,
    rounds: usize,
    bias: &mut f64,
) -> (AudioBuffer, LimiterStats, Option<(f64, f64)>) {
    let target = settings.limiter.target_lufs;
    let rate = pre.sample_rate_hz;
    let render = |s: &Settings| {
        let mut out = pre.clone();
        let stats = limit(&mut out, env, &s.limiter);
        (out, stats)
    };
    let energy = k_weighted_energy(pre);
    let base = gated_loudness(&block_energies(&energy, rate, |_| 1.0));
    if !base.is_finite() || !target.is_finite() {
        settings.limiter.drive_db = 0.0;
        let (out, stats) = render(settings);
        return (out, stats, None);
    }
    if !settings.limiter.enabled {
        settings.limiter.drive_db = (target - base).clamp(-60.0, 36.0);
        let (out, stats) = render(settings);
        return (out, stats, None);
    }
    // Limiting depth is judged at the 99.9th percentile of the true-peak envelope: the gain
    // reduction that more than 0.1 % of the music receives. A lone transient may go deeper.
    let mut sorted: Vec<f32> = env.chunks(8).map(|c| c.iter().fold(0f32, |a, &b| a.max(b))).collect();
    let k = ((sorted.len() as f64) * 0.999) as usize;
    let loud_db = if sorted.is_empty() {
        0.0
    } else {
        let idx = k.min(sorted.len() - 1);
        let (_, v, _) = sorted.select_nth_unstable_by(idx, f32::total_cmp);
        20.0 * f64::from(v.max(1e-10)).log10()
    };
    let drive_max = (settings.limiter.ceiling_dbtp - CEILING_MARGIN_DB + max_limiting_db - loud_db).min(36.0);
    // The estimate runs on an 8× decimated envelope and energy (block maxima and means): the
    // limiter's gain at that resolution is close enough to aim, and eight times cheaper.
    const DECIMATION: usize = 8;
    let env_d: Vec<f32> = env.chunks(DECIMATION).map(|c| c.iter().fold(0f32, |a, &b| a.max(b))).collect();
    let energy_d: Vec<f32> = energy.chunks(DECIMATION).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect();
    let rate_d = (rate / DECIMATION as u32).max(1);
    let limiter = settings.limiter.clone();
    let estimate = |drive_db: f64| {
        let gain = gain_curve(&env_d, db_to_lin(drive_db) as f32, rate_d, &limiter);
        let g2 = db_to_lin(2.0 * drive_db) as f32;
        gated_loudness(&block_energies(&energy_d, rate_d, |i| gain[i] * gain[i] * g2))
    };
    let mut aim = target + *bias;
    let mut drive = (target - base).clamp(-60.0, drive_max);
    let mut reached = f64::NEG_INFINITY;
    let planes: Vec<&[f32]> = pre.channels.iter().map(Vec::as_slice).collect();
    let mut best: Option<Vec<f32>> = None;
    for _ in 0..rounds.max(1) {
        drive = secant(&estimate, aim, drive, -60.0, drive_max);
        let gain = gain_curve(env, db_to_lin(drive) as f32, rate, &settings.limiter);
        reached = integrated_lufs_scaled(&planes, rate, db_to_lin(drive) as f32, &gain);
        best = Some(gain);
        if (reached - target).abs() <= LOUDNESS_TOLERANCE_LU || drive >= drive_max - 1e-9 {
            break;
        }
        aim += target - reached;
    }
    *bias = aim - target;
    settings.limiter.drive_db = drive;
    // Only the chosen gain is rendered, through the same output stage `render::render` uses.
    let gain = best.unwrap_or_else(|| gain_curve(env, db_to_lin(drive) as f32, rate, &settings.limiter));
    let mut out = pre.clone();
    finish(&mut out, db_to_lin(drive) as f32, &gain, &settings.limiter);
    let stats = limiter_stats(&gain, rate);
    let short = (reached < target - 0.1 && drive >= drive_max - 1e-6).then_some((reached, target));
    (out, stats, short)
}

/// Secant search for the drive (dB, within `lo..=hi`) at which `estimate(drive)` equals `aim`.
fn secant(estimate: &dyn Fn(f64) -> f64, aim: f64, start: f64, lo: f64, hi: f64) -> f64 {
    let mut d0 = start.clamp(lo, hi);
    let mut l0 = estimate(d0);
    let mut d1 = (d0 + (aim - l0)).clamp(lo, hi);
    for _ in 0..20 {
        if (aim - l0).abs() <= LOUDNESS_TOLERANCE_LU / 4.0 || (d1 - d0).abs() < 1e-5 {
            break;
        }
        let l1 = estimate(d1);
        let slope = ((l1 - l0) / (d1 - d0)).clamp(0.05, 1.5);
        let next = (d1 + (aim - l1) / slope).clamp(lo, hi);
        d0 = d1;
        l0 = l1;
        d1 = next;
    }
    d0
}
