//! Stage 5, verify: the closed loop that turns solved settings into a master that itself sits on
//! the target. Each pass renders the chain, finds the limiter drive that lands the integrated
//! loudness within 0.05 LU of the target (re-measuring the limited output, never assuming), then
//! measures the master's spectrum and corrects the EQ for what compression and limiting changed.

use crate::analysis::loudness::{block_energies, gated_loudness, integrated_lufs_scaled, k_weighted_energy};
use crate::analysis::spectrum::{band_levels_db, welch};
use crate::analysis::{analyze, Profile};
use crate::audio::db_to_lin;
use crate::audio::AudioBuffer;
use crate::dsp::truepeak::{envelope_quantile_db, peak_envelope};
use crate::error::{Error, Result};
use crate::render::limiter::{
    finish, finish_untrimmed, gain_curve, limit, stats as limiter_stats, LimiterStats, CEILING_MARGIN_DB,
};
use crate::render::render_pre_limiter;
use crate::render::saturation::{saturate_with, Quality, SaturationStats};
use crate::settings::Settings;
use crate::solve::{follow_limit_hz, match_curve, solve, SolveOptions};
use std::path::Path;

/// Loudness tolerance of the drive search, LU.
pub const LOUDNESS_TOLERANCE_LU: f64 = 0.05;
/// Deepest limiting refmaster applies by default, dB of gain reduction at the 99.9th percentile
/// (what more than 0.1 % of the music receives). Past this a loud target is reported
/// unreachable rather than crushed.
pub const MAX_LIMITING_DB: f64 = 12.0;
/// Limiting depth allowed with `--allow-crush`, dB at the 99.9th percentile.
pub const CRUSH_MAX_LIMITING_DB: f64 = 30.0;
/// The loudness-war guard, part 1: the smallest peak-to-loudness ratio (true peak minus
/// integrated loudness) a default master may be pressed down to, dB.
pub const MIN_PLR_DB: f64 = 7.0;
/// The loudness-war guard, part 2: peak reduction (saturation plus limiting) the guard always
/// allows, dB. A master is refused (mastered quieter, with a note) only when reaching the target
/// needs more peak reduction than this AND leaves a PLR under [`MIN_PLR_DB`]: a flattened
/// "sausage" made from a dynamic mix. Trimming a hot finished track's overs is not that.
pub const GUARD_REDUCTION_DB: f64 = 6.0;
/// How far under the guard's loudest level the guarded target sits, dB: the true peak of a
/// limited master reads up to about this much under the limiter's aim.
const GUARD_MARGIN_DB: f64 = 0.05;
/// The limiter's gain reduction (99.9th percentile) beyond which the saturator takes over the
/// rest of the peak reduction, dB: a limiter working harder than this pumps and dulls.
pub const LIMITER_SHARE_DB: f64 = 3.0;
/// Most the saturator drives the loudest peaks past its clip level, dB. Past this its harmonics
/// (and, for high treble, their aliases, see tests/saturation.rs) become audible as distortion.
pub const MAX_SATURATION_DB: f64 = 6.0;
/// The saturator's cap with `--allow-crush`, dB.
pub const CRUSH_MAX_SATURATION_DB: f64 = 12.0;

/// Options of a mastering run.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// Solver options (amount, bounds, ceiling, loudness target, stage switches).
    pub solve: SolveOptions,
    /// EQ correction passes after the first render.
    pub closed_loop_passes: usize,
    /// Deepest limiter gain reduction allowed, dB.
    pub max_limiting_db: f64,
    /// Use the saturator when the limiter would otherwise work hard (`--no-saturation`: false).
    pub saturation: bool,
    /// Smallest peak-to-loudness ratio allowed, dB (the loudness-war guard).
    pub min_plr_db: f64,
    /// Lift the guard and the limiting depth (`--allow-crush`).
    pub allow_crush: bool,
}

impl Default for MasterOptions {
    fn default() -> Self {
        Self {
            solve: SolveOptions::default(),
            closed_loop_passes: 2,
            max_limiting_db: MAX_LIMITING_DB,
            saturation: true,
            min_plr_db: MIN_PLR_DB,
            allow_crush: false,
        }
    }
}

impl MasterOptions {
    /// The limiting depth in force, dB.
    pub fn limiting_depth_db(&self) -> f64 {
        if self.allow_crush {
            self.max_limiting_db.max(CRUSH_MAX_LIMITING_DB)
        } else {
            self.max_limiting_db
        }
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
    /// What the saturator did in the final render.
    pub saturation: SaturationStats,
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
    let guarded = loudness_guard(&mut settings, mix_profile.loudness.plr_db, opts);
    // At the guard, loudness lost to the safety trim is not won back (that would lower the PLR).
    let trim_compensation = guarded.is_none();
    notes.extend(guarded);
    let max_limiting_db = opts.limiting_depth_db();
    // Saturation is for a target denser than the mix: one whose peak-to-loudness ratio under the
    // ceiling is more than the limiter's share below the mix's own. A finished track mastered
    // against itself (only its overs trimmed) never gets it.
    let target_plr = settings.limiter.ceiling_dbtp - CEILING_MARGIN_DB - settings.limiter.target_lufs;
    let use_saturation = opts.saturation
        && settings.limiter.enabled
        && settings.limiter.target_lufs.is_finite()
        && mix_profile.loudness.plr_db - target_plr > LIMITER_SHARE_DB;
    let mut sat_stats = SaturationStats::default();
    // (peaks into the clipper, limiter gain reduction) of each pass so far, dB.
    let mut work: Vec<(f64, f64)> = Vec::new();
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
        let mut pre = render_pre_limiter(mix, &settings)?;
        if use_saturation {
            let cap = if opts.allow_crush { CRUSH_MAX_SATURATION_DB } else { MAX_SATURATION_DB };
            plan_saturation(&pre, &mut settings, &work, cap);
            // Intermediate passes are measured, never written: the draft saturator is enough.
            let final_pass = pass >= opts.closed_loop_passes || !settings.eq.enabled;
            let quality = if final_pass { Quality::Oversampled } else { Quality::Draft };
            sat_stats = saturate_with(&mut pre, &settings.saturation, settings.limiter.ceiling_dbtp, quality);
        }
        let planes: Vec<&[f32]> = pre.channels.iter().map(Vec::as_slice).collect();
        let env = peak_envelope(&planes);
        let last = pass >= opts.closed_loop_passes || !settings.eq.enabled;
        // Intermediate passes only need the loudness roughly right (for the spectral measurement);
        // the final pass verifies on the real output until it is within tolerance.
        let rounds = if last { 4 } else { 1 };
        let rounds = LoopRounds { search: rounds, trim_compensation };
        let (out, stats, short) = loudness_loop(&pre, &env, &mut settings, max_limiting_db, rounds, &mut bias);
        work.push((
            if settings.saturation.enabled { sat_stats.peak_drive_db.max(0.0) } else { 0.0 },
            stats.loud_gain_reduction_db,
        ));
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
            settings.limiter.ceiling_dbtp, max_limiting_db
        ));
    }
    if settings.saturation.enabled {
        notes.push(format!(
            "saturation: the loudest peaks (99.9th percentile) were driven {:.1} dB into the soft clipper, taking that much work off the limiter",
            sat_stats.peak_drive_db.max(0.0)
        ));
    }
    if settings.limiter.enabled {
        notes.push(format!(
            "limiter gain reduction: {:.1} dB at the 99.9th percentile, {:.1} dB at most",
            stats.loud_gain_reduction_db, stats.max_gain_reduction_db
        ));
    }
    progress("verifying");
    let profile = analyze(&audio, "master", false);
    Ok(Mastered { settings, audio, profile, limiter: stats, saturation: sat_stats, notes })
}

/// The loudness-war guard: lowers the target to the loudest the mix reaches cleanly - with a PLR
/// of at least `opts.min_plr_db`, or with at most [`GUARD_REDUCTION_DB`] of peak reduction from
/// the mix's own PLR (`mix_plr_db`), whichever is louder - unless `--allow-crush`. Returns the
/// note that says so.
pub fn loudness_guard(settings: &mut Settings, mix_plr_db: f64, opts: &MasterOptions) -> Option<String> {
    let l = &mut settings.limiter;
    if opts.allow_crush || !l.enabled || !l.target_lufs.is_finite() {
        return None;
    }
    // The limiter lands the true peak CEILING_MARGIN_DB under the ceiling; PLRs count from there,
    // with GUARD_MARGIN_DB to spare for meters that read the peak a little lower.
    let peak = l.ceiling_dbtp - CEILING_MARGIN_DB;
    let plr = |lufs: f64| peak - lufs;
    let allowed_plr =
        if mix_plr_db.is_finite() { opts.min_plr_db.min(mix_plr_db - GUARD_REDUCTION_DB) } else { opts.min_plr_db };
    let loudest = peak - allowed_plr - GUARD_MARGIN_DB;
    if l.target_lufs <= loudest + 1e-9 {
        return None;
    }
    let wanted = l.target_lufs;
    l.target_lufs = loudest;
    Some(format!(
        "loudness guard: {wanted:.1} LUFS under a {:.1} dBTP ceiling needs {:.1} dB of peak reduction and leaves a peak-to-loudness ratio of {:.1} dB (guard: at most {GUARD_REDUCTION_DB:.0} dB, or a PLR of at least {:.1} dB); mastered to {loudest:.1} LUFS, PLR {:.1} dB, instead (--allow-crush to go louder)",
        l.ceiling_dbtp,
        mix_plr_db - plr(wanted),
        plr(wanted),
        opts.min_plr_db,
        plr(loudest)
    ))
}

/// Decides the saturator's drive for the signal entering it (`pre`, after EQ and compression):
/// the limiter keeps up to [`LIMITER_SHARE_DB`] of gain reduction at the 99.9th percentile and the
/// saturator takes the rest, up to `cap_db` ([`MAX_SATURATION_DB`], or
/// [`CRUSH_MAX_SATURATION_DB`] with `--allow-crush`). On the first pass the limiter's work is
/// estimated from the unlimited loudness (a lower bound: limiting costs some loudness); the
/// second moves the first pass's depth into the clipper by what the limiter did beyond its share;
/// later ones interpolate between the last two passes (`work`: peaks into the clipper and
/// limiter gain reduction of each pass, dB), since the clipper buys loudness more cheaply than
/// the limiter and one dB in the clipper saves more than one in the limiter.
fn plan_saturation(pre: &AudioBuffer, settings: &mut Settings, work: &[(f64, f64)], cap_db: f64) {
    let planes: Vec<&[f32]> = pre.channels.iter().map(Vec::as_slice).collect();
    let env = peak_envelope(&planes);
    let loud_db = envelope_quantile_db(&env, 0.999);
    let l = &settings.limiter;
    let into_clipper = match work {
        // Secant only where the two passes show the expected trade (more clipper, less limiter,
        // at a plausible rate); the intermediate passes' numbers are rough, and a secant
        // through noise can throw the plan anywhere.
        [.., (i0, l0), (i1, l1)] if (i1 - i0).abs() > 0.1 && (-4.0..=-0.25).contains(&((l1 - l0) / (i1 - i0))) => {
            i1 + (LIMITER_SHARE_DB - l1) * (i1 - i0) / (l1 - l0)
        }
        [.., (into, limiter_db)] => into + limiter_db - LIMITER_SHARE_DB,
        [] => {
            let energy = k_weighted_energy(pre);
            let base = gated_loudness(&block_energies(&energy, pre.sample_rate_hz, |_| 1.0));
            let limiting_db = l.target_lufs - base + loud_db - (l.ceiling_dbtp - CEILING_MARGIN_DB);
            limiting_db - LIMITER_SHARE_DB
        }
    };
    let s = &mut settings.saturation;
    if !into_clipper.is_finite() || !loud_db.is_finite() || into_clipper <= 0.05 {
        *s = crate::settings::SaturationSettings::default();
        return;
    }
    let into_clipper = into_clipper.min(cap_db);
    s.enabled = true;
    s.drive_db = (into_clipper + l.ceiling_dbtp - loud_db)
        .clamp(crate::settings::limits::DRIVE_DB.0, crate::settings::limits::DRIVE_DB.1);
    s.mix = 1.0;
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
    rounds: LoopRounds,
    bias: &mut f64,
) -> (AudioBuffer, LimiterStats, Option<(f64, f64)>) {
    let LoopRounds { search: rounds, trim_compensation } = rounds;
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
    let loud_db = if env.is_empty() { 0.0 } else { envelope_quantile_db(env, 0.999) };
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
    // Only the chosen gain is rendered, through the same output stage `render::render` uses.
    let mut gain = best.unwrap_or_else(|| gain_curve(env, db_to_lin(drive) as f32, rate, &settings.limiter));
    let mut out = pre.clone();
    if rounds <= 1 {
        // An intermediate pass: measured for its spectrum, never written.
        finish_untrimmed(&mut out, db_to_lin(drive) as f32, &gain);
    } else {
        // The safety trim lowers the whole master when a close 8× meter finds the limiter's 4×
        // detector under-read (full-band content near Nyquist); the loudness it costs is won
        // back with more drive, at most twice.
        // The trim can grow with the drive (content the limiter's 4x detector under-reads gets
        // louder too), so after the first retry the drive moves along the measured slope.
        const RETRIES: usize = 4;
        let mut previous: Option<(f64, f64)> = None;
        for retry in 0..=RETRIES {
            let trim_db = finish(&mut out, db_to_lin(drive) as f32, &gain, &settings.limiter);
            reached += trim_db;
            if trim_db > -0.02
                || !trim_compensation
                || retry == RETRIES
                || drive >= drive_max - 1e-9
                || (reached - target).abs() <= LOUDNESS_TOLERANCE_LU
            {
                break;
            }
            let next = match previous {
                Some((d0, r0)) if (drive - d0).abs() > 1e-6 => {
                    let slope = ((reached - r0) / (drive - d0)).clamp(0.1, 1.5);
                    (drive + (target - reached) / slope).clamp(-60.0, drive_max)
                }
                _ => {
                    aim += target - reached;
                    secant(&estimate, aim, drive, -60.0, drive_max)
                }
            };
            previous = Some((drive, reached));
            drive = next;
            gain = gain_curve(env, db_to_lin(drive) as f32, rate, &settings.limiter);
            reached = integrated_lufs_scaled(&planes, rate, db_to_lin(drive) as f32, &gain);
            out = pre.clone();
        }
    }
    *bias = aim - target;
    settings.limiter.drive_db = drive;
    let stats = limiter_stats(&gain, rate);
    let short = (reached < target - 0.1 && drive >= drive_max - 1e-6).then_some((reached, target));
    (out, stats, short)
}

/// How hard [`loudness_loop`] works.
#[derive(Debug, Clone, Copy)]
pub struct LoopRounds {
    /// Verified search rounds (1: an intermediate pass, rendered only to be measured).
    pub search: usize,
    /// Win back with more drive the loudness the safety trim takes.
    pub trim_compensation: bool,
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
