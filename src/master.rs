//! Stage 5, verify: the closed loop that turns solved settings into a master that itself sits on
//! the target. Each pass renders the chain, finds the limiter drive that lands the integrated
//! loudness within 0.05 LU of the target (re-measuring the limited output, never assuming), then
//! measures the master's spectrum and corrects the EQ for what compression and limiting changed.

use crate::analysis::loudness::{block_energies, gated_loudness, KMeter, KWeightedEnergy};
use crate::analysis::spectrum::{band_levels_db, PowerSpectrum, Welch};
use crate::analysis::{Analyzer, Profile};
use crate::audio::db_to_lin;
use crate::audio::AudioBuffer;
use crate::error::{Error, Result};
use crate::render::limiter::{gain_curve, safety_trim_db, LimiterStats, CEILING_MARGIN_DB};
use crate::render::saturation::{Quality, SaturationStats};
use crate::render::stream::{
    render_pre, slices, DbHistogram, EnvelopeQuantile, EnvelopeStage, Planes, PreSink, StreamLimiter, TruePeakMeter,
};
use crate::settings::Settings;
use crate::solve::{follow_limit_hz, solve, SolveOptions};
use crate::source::{FrameSource, CHUNK_FRAMES};
use std::path::Path;

/// Loudness tolerance of the drive search, LU.
pub const LOUDNESS_TOLERANCE_LU: f64 = 0.05;
/// How far the measured limiting depth may exceed the limit before the drive is lowered, dB.
const DEPTH_TOLERANCE_DB: f64 = 0.04;
/// How far under the limit a reading at the drive limit may stay, short of its target, before
/// the limit is raised again, dB.
const DEPTH_SLACK_DB: f64 = 0.25;
/// How much further than the last intermediate pass's safety trim the master's render trims its
/// output, dB: the master's drive differs a little from that pass's (its loudness is won back,
/// its EQ corrected), and the content the limiter's detector under-reads moves with it. Where
/// the foreseen trim still falls short, the master gets the rest as before, written after its
/// readings; where it goes past, the search's extra drive wins the loudness back.
const TRIM_FORESIGHT_MARGIN_DB: f64 = 0.01;
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
    /// Bytes of decoded and rendered audio the loop may keep in memory, counting the mix's own
    /// samples when its source holds them ([`FrameSource::resident_bytes`]); what does not fit
    /// is rendered again from the mix for every read (`--memory-budget`).
    pub memory_budget_bytes: usize,
    /// Run the intermediate passes on a proxy of the song's excerpts ([`crate::proxy`]) when the
    /// song is long enough for one; `false` renders the whole song on every pass (`--full-loop`).
    pub proxy: bool,
    /// Keep the last pass's render (or its limiter gains) on disk and write the master from the
    /// reading that was accepted, instead of limiting again (`false`: limit again; the master
    /// is the same bits either way, which `tests/streaming.rs` checks).
    pub spool: bool,
    /// Folder for the unnamed temporary file that keeps the last pass's render until the master
    /// is written from it (the output's folder: the same disk, and not a RAM-backed `/tmp`);
    /// `None`: the system's temporary folder.
    pub spool_dir: Option<std::path::PathBuf>,
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
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            proxy: true,
            spool: true,
            spool_dir: None,
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

/// Default for [`MasterOptions::memory_budget_bytes`]: 640 MiB. Half of it may hold the mix's
/// samples ([`crate::source::open_mix`]); the signal entering the limiter and its true-peak
/// envelope are kept between reads when they fit in what is left, and rendered again from the
/// mix for every read when they do not (a long mix then costs time, not memory).
pub const DEFAULT_MEMORY_BUDGET_BYTES: usize = 640 << 20;

/// What [`master_stream`] decided and measured.
#[derive(Debug, Clone)]
pub struct Mastered {
    /// Final settings (rendering them onto the mix reproduces the master bit for bit).
    pub settings: Settings,
    /// Profile of the master.
    pub profile: Profile,
    /// Limiter gain reduction of the final render.
    pub limiter: LimiterStats,
    /// What the saturator did in the final render.
    pub saturation: SaturationStats,
    /// Things the user should know (unreachable targets, bounded EQ, mono mix...).
    pub notes: Vec<String>,
}

/// What a [`MasterSink`] is told before the master streams to it.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteInfo {
    /// Sample rate, Hz.
    pub sample_rate_hz: u32,
    /// Channels.
    pub channel_count: usize,
    /// Frames that will be written.
    pub frames: usize,
    /// Seed of the TPDF dither (from the settings).
    pub dither_seed: u64,
    /// The loudest stretch of the master, (first frame, frames), of [`PREVIEW_WINDOW_S`] (or
    /// all of a shorter master), in 100 ms steps: where the before/after previews are cut.
    pub loudest_window: (usize, usize),
    /// The true-peak ceiling the written samples are held to ([`crate::ceiling`]), dBTP; `None`
    /// with the limiter off.
    pub ceiling_dbtp: Option<f64>,
}

/// Length of the loudest window reported in [`WriteInfo`], s.
pub const PREVIEW_WINDOW_S: f64 = crate::preview::PREVIEW_SECONDS;

/// Where the finished master goes, chunk by chunk, as the last pass renders it.
pub trait MasterSink {
    /// Called before the first chunk. Called again (only on a [`Self::rewindable`] sink), the
    /// sink starts over: everything written so far is forgotten.
    fn begin(&mut self, info: &WriteInfo) -> Result<()>;
    /// Whether the master may be written speculatively: begun before the loudest window is
    /// known (`WriteInfo::loudest_window` is then `(0, 0)`) and begun again when the reading it
    /// was written from is not the one kept. The last pass then writes the master as its
    /// reading measures it, instead of measuring first and writing after.
    fn rewindable(&self) -> bool {
        false
    }
    /// A chunk of the master (planar, floating point, before dither) starting at `first_frame`.
    fn write(&mut self, first_frame: usize, chunk: &[&[f32]]) -> Result<()>;
    /// Called once after the last chunk: what the ceiling's last guard did to the written
    /// samples, when the sink writes through one.
    fn end(&mut self) -> Result<Option<crate::ceiling::NetStats>> {
        Ok(None)
    }
}

/// Collects the master in memory (for [`master`] and tests).
#[derive(Debug, Default)]
pub struct CollectSink {
    /// The master so far.
    pub audio: Option<AudioBuffer>,
}

impl MasterSink for CollectSink {
    fn rewindable(&self) -> bool {
        true
    }

    fn begin(&mut self, info: &WriteInfo) -> Result<()> {
        self.audio = Some(AudioBuffer {
            sample_rate_hz: info.sample_rate_hz,
            channels: (0..info.channel_count).map(|_| Vec::with_capacity(info.frames)).collect(),
        });
        Ok(())
    }

    fn write(&mut self, _first_frame: usize, chunk: &[&[f32]]) -> Result<()> {
        if let Some(a) = self.audio.as_mut() {
            for (c, x) in a.channels.iter_mut().zip(chunk) {
                c.extend_from_slice(x);
            }
        }
        Ok(())
    }
}

/// Writes the master into a WAV file being written by [`crate::encode::write_wav_stream`],
/// dithered with the settings' seed.
pub struct WavSink<'a, 'b>(pub &'a mut crate::encode::WavChunks<'b>);

impl MasterSink for WavSink<'_, '_> {
    fn rewindable(&self) -> bool {
        true
    }

    fn begin(&mut self, info: &WriteInfo) -> Result<()> {
        self.0.rewind()?;
        self.0.set_dither_seed(info.dither_seed);
        if let Some(c) = info.ceiling_dbtp {
            self.0.set_ceiling(c);
        }
        Ok(())
    }

    fn write(&mut self, _first_frame: usize, chunk: &[&[f32]]) -> Result<()> {
        self.0.write(chunk)
    }

    fn end(&mut self) -> Result<Option<crate::ceiling::NetStats>> {
        self.0.end()
    }
}

/// Masters the mix read from `source` into a WAV file at `output` (written atomically: nothing
/// is left there if anything fails).
pub fn master_to_file(
    source: &dyn FrameSource,
    mix_profile: &Profile,
    target: &Profile,
    opts: &MasterOptions,
    output: &Path,
    depth: crate::encode::BitDepth,
    progress: &dyn Fn(&str),
) -> Result<Mastered> {
    let mut done = None;
    let mut opts = opts.clone();
    if opts.spool_dir.is_none() {
        opts.spool_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf);
    }
    crate::encode::write_wav_stream(output, source.sample_rate_hz(), source.channel_count(), depth, |w| {
        done = Some(master_stream(source, mix_profile, target, &opts, progress, &mut WavSink(w))?);
        Ok(())
    })?;
    done.ok_or_else(|| Error::output(output, "internal: the master was not produced"))
}

/// Masters `mix` (profiled as `mix_profile`) toward `target` in memory: [`master_stream`] with
/// the master collected. Returns the outcome and the master (floating point, before dither).
pub fn master(
    mix: &AudioBuffer,
    mix_profile: &Profile,
    target: &Profile,
    opts: &MasterOptions,
    progress: &dyn Fn(&str),
) -> Result<(Mastered, AudioBuffer)> {
    let mut sink = CollectSink::default();
    let m = master_stream(mix, mix_profile, target, opts, progress, &mut sink)?;
    let audio = sink.audio.unwrap_or_else(|| AudioBuffer::silent(mix.sample_rate_hz, mix.channel_count(), 0));
    Ok((m, audio))
}

/// Masters the mix read from `source` (profiled as `mix_profile`) toward `target`, streaming the
/// master to `sink`. The mix is read several times (once per measurement), never held whole
/// unless `source` holds it.
pub fn master_stream(
    source: &dyn FrameSource,
    mix_profile: &Profile,
    target: &Profile,
    opts: &MasterOptions,
    progress: &dyn Fn(&str),
    sink: &mut dyn MasterSink,
) -> Result<Mastered> {
    let (rate, channels, frames) = (source.sample_rate_hz(), source.channel_count(), source.frames());
    crate::render::check_channel_count(channels)?;
    // A mix far over full scale (a gain error upstream) is read lower by an exact power of two
    // and analysed again: the chain and its loudness loop work on the rescaled mix.
    let huge = crate::source::huge_input_gain(source, mix_profile.loudness.sample_peak_dbfs)?;
    let (scaled_source, scaled_profile);
    let (source, mix_profile): (&dyn FrameSource, &Profile) = match huge {
        Some(gain) => {
            progress("analysing the rescaled mix");
            scaled_source = crate::source::ScaledSource { inner: source, gain };
            let mut analyzer = Analyzer::new(rate, channels, Some(frames));
            scaled_source.stream(&mut |chunk| {
                analyzer.push(chunk);
                Ok(())
            })?;
            scaled_profile = analyzer.finish(&mix_profile.source, mix_profile.lossy);
            (&scaled_source, &scaled_profile)
        }
        None => (source, mix_profile),
    };
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
    if let Some(gain) = huge {
        notes.insert(
            0,
            format!(
                "the mix peaks far over full scale (a gain error in its bounce?): it was read {:.1} dB lower (an exact power of two: nothing lost) before mastering",
                -20.0 * gain.log10()
            ),
        );
    }
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
    let cap = if opts.allow_crush { CRUSH_MAX_SATURATION_DB } else { MAX_SATURATION_DB };
    let cache = frames.saturating_mul(channels + 1).saturating_mul(4)
        <= opts.memory_budget_bytes.saturating_sub(source.resident_bytes());
    let mut sat_stats = SaturationStats::default();
    // (peaks into the clipper, limiter gain reduction) of each pass so far, dB.
    let mut work: Vec<(f64, f64)> = Vec::new();
    let grid = mix_profile.spectrum.frequencies_hz.clone();
    let amount = opts.solve.amount.clamp(0.0, 1.0);
    // The spectrum the master should have: the mix moved `amount` of the way to the target.
    let want = |m: &[f64], t: &[f64]| -> Vec<f64> { m.iter().zip(t).map(|(m, t)| m + amount * (t - m)).collect() };
    let want_mid = want(&mix_profile.spectrum.mid_db, &target.spectrum.mid_db);
    let want_side = want(&mix_profile.spectrum.side_db, &target.spectrum.side_db);
    let mix_side_to_mid = crate::solve::difference(&mix_profile.spectrum.side_db, &mix_profile.spectrum.mid_db);
    let cutoff = follow_limit_hz(mix_profile, target);
    let mut loop_opts = opts.solve.clone();
    loop_opts.amount = 1.0;
    // The intermediate passes read only what the chain does to the spectrum and how hard the
    // peak stages work: on a long song they run on a proxy of its excerpts, and only the last
    // pass renders the whole song.
    let proxy = match crate::proxy::choose_excerpts(mix_profile) {
        Some(excerpts) if opts.proxy && opts.closed_loop_passes > 0 && settings.eq.enabled => {
            progress("reading the proxy excerpts");
            let preroll = crate::proxy::preroll_frames(slowest_time_ms(&settings), source.sample_rate_hz());
            let proxy = crate::proxy::read_proxy(source, &excerpts, preroll)?;
            let [mid, side] = measure_spectra(&proxy.audio, Some(&proxy.measured)).map(|p| band_levels_db(&p, &grid));
            // The proxy's sampling error in what the compressor does to each band, known from
            // the song's envelopes, is taken out of its reading.
            let bias = mix_profile
                .envelopes
                .as_ref()
                .map(|e| crate::solve::dynamics::compressor_input(e, &grid, &settings.eq.mid_gain_db))
                .and_then(|bands| {
                    crate::proxy::compressor_bias_db(&bands, source.sample_rate_hz(), &excerpts, &settings.dynamics)
                })
                .map(|bias| {
                    grid.iter()
                        .map(|&f| {
                            (0..4)
                                .map(|b| bias[b] * crate::proxy::band_share(f, settings.dynamics.crossovers_hz, b))
                                .sum::<f64>()
                        })
                        .collect::<Vec<f64>>()
                });
            Some(ProxyMix { audio: proxy.audio, measured: proxy.measured, mid_db: mid, side_db: side, bias_db: bias })
        }
        _ => None,
    };
    let mut bias = 0.0;
    let mut depth = 0.0;
    let mut pass = 0;
    let mut spool: Option<Spool> = None;
    // The safety trim the last intermediate pass measured, dB (≤ 0): the master's render
    // carries it ([`crate::settings::LimiterSettings::output_trim_db`]), the loudness search
    // aims with it in place, and the master is written as its last reading measures it instead
    // of being trimmed and written again after the readings.
    let mut foreseen_trim_db = 0.0;
    let (pre, search) = loop {
        progress(&format!("rendering (pass {})", pass + 1));
        let last = pass >= opts.closed_loop_passes || !settings.eq.enabled;
        if last {
            settings.limiter.output_trim_db = foreseen_trim_db;
        }
        // Intermediate passes are measured, never written, so the draft saturator serves them,
        // except the last one: its measurement sets the EQ correction the master is rendered
        // with, so it is measured on the saturator that renders the master. With the draft
        // there, the correction missed what the 8x clipper does differently, and saturation
        // cost up to 0.01-0.02 dB of spectral distance (scorecard) against --no-saturation.
        let quality = if pass + 1 >= opts.closed_loop_passes || last { Quality::Oversampled } else { Quality::Draft };
        // The master keeps the saturator drive the last intermediate pass was measured with:
        // planned again, the drive moved (the plan's trade curve is read off passes with
        // different EQs) and the EQ and width corrections, measured on the old drive, no
        // longer fitted (strict_vs_quite at equal loudness, scorecard width: 1.40 dB planned
        // again, 1.27 kept, as with --no-saturation).
        let replan = !last || work.is_empty();
        let plan = if use_saturation { Some(SaturationPlan { work: &work, cap_db: cap, replan }) } else { None };
        let on_proxy = proxy.as_ref().filter(|_| !last);
        let pass_source: &dyn FrameSource = on_proxy.map_or(source, |p| &p.audio as &dyn FrameSource);
        let keep = if cache || on_proxy.is_some() {
            Keep::Memory
        } else if opts.spool {
            Keep::Disk(opts.spool_dir.as_deref())
        } else {
            Keep::Nothing
        };
        let mut prepared = prepare(pass_source, &mut settings, plan, quality, keep, frames)?;
        prepared.measured = on_proxy.map(|p| p.measured.clone());
        if let Some(measured) = &prepared.saturation {
            sat_stats = measured.clone();
        }
        let rounds = LoopRounds {
            search: if last { 4 } else { 1 },
            trim_compensation,
            true_peak: pass + 1 >= opts.closed_loop_passes,
        };
        if last && spool.is_none() && opts.spool {
            let gains = matches!(prepared.pre, Pre::Cached { .. }) && settings.limiter.enabled;
            spool = Spool::create(opts.spool_dir.as_deref(), channels, gains);
        }
        // The last pass's readings write the master as they measure it, when the sink can be
        // begun again (for a reading not kept): with the safety trim the render carries, the
        // master is likely to be written as read. Else (a sink begun once, a trim needed on top)
        // the master is written after the readings, from what the kept one limited.
        let speculate = last && sink.rewindable();
        let info = WriteInfo {
            sample_rate_hz: rate,
            channel_count: channels,
            frames,
            dither_seed: settings.dither_seed,
            loudest_window: (0, 0),
            ceiling_dbtp: settings.limiter.enabled.then_some(settings.limiter.ceiling_dbtp),
        };
        let write = speculate.then_some(Speculative { sink: &mut *sink, info: &info });
        progress(&format!("limiting and measuring{} (pass {})", if speculate { " and writing" } else { "" }, pass + 1));
        let search = loudness_loop(
            &prepared,
            &mut settings,
            max_limiting_db,
            rounds,
            (&mut bias, &mut depth),
            !last,
            Outlets { spool: spool.as_mut().filter(|_| last), write },
        )?;
        // The estimate of what the limiter alone would do anchors the plan's trade curve.
        if let Some(l) = prepared.limiting_estimate.filter(|l| l.is_finite()) {
            work.push((0.0, l));
        }
        work.push((
            if settings.saturation.enabled { sat_stats.peak_drive_db.max(0.0) } else { 0.0 },
            search.stats.loud_gain_reduction_db,
        ));
        if last {
            break (prepared.pre, search);
        }
        foreseen_trim_db = if search.trim_db < 0.0 {
            (search.trim_db - TRIM_FORESIGHT_MARGIN_DB).max(crate::settings::limits::OUTPUT_TRIM_DB.0)
        } else {
            0.0
        };
        let Some([mut out_mid, mut out_side]) =
            search.spectra.as_ref().map(|s| s.each_ref().map(|p| band_levels_db(p, &grid)))
        else {
            break (prepared.pre, search);
        };
        if let Some(p) = on_proxy {
            // What the chain did to the proxy's spectrum, band by band, is what it would do to
            // the song's: the song's output is its mix moved by that.
            out_mid = predict_from_proxy(&mix_profile.spectrum.mid_db, &p.mid_db, &out_mid);
            out_side = predict_from_proxy(&mix_profile.spectrum.side_db, &p.side_db, &out_side);
            if let Some(bias) = &p.bias_db {
                for ((m, s), b) in out_mid.iter_mut().zip(out_side.iter_mut()).zip(bias) {
                    *m -= b;
                    *s -= b;
                }
            }
        }
        let (e_mid, e_side) = crate::solve::correct_eq(
            &mut settings.eq,
            &grid,
            (&want_mid, &out_mid),
            (&want_side, &out_side),
            &mix_side_to_mid,
            cutoff,
            &opts.solve,
            channels == 2,
        );
        if channels == 2 && settings.width.enabled && settings.width.bands.len() == grid.len() {
            let sm = |side: &[f64], mid: &[f64]| crate::solve::difference(side, mid);
            let gap = crate::solve::difference(&sm(&want_side, &want_mid), &sm(&out_side, &out_mid));
            // What the EQ corrections above already do to side/mid is not the width stage's job.
            let wanted = crate::solve::difference(&gap, &sm(&e_side, &e_mid));
            let e_w = crate::solve::width_curve(&grid, &wanted, cutoff, &loop_opts, settings.eq.render);
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
    crate::solve::finish_eq(&mut settings, cutoff);
    if let (Some((reached, wanted)), false) = (search.short, settings.limiter.enabled) {
        notes.push(format!(
            "without the limiter the peaks set the level: target {wanted:.1} LUFS would take the true peak over the {:.1} dBTP ceiling, so the master was mastered to {reached:.1} LUFS instead (nothing clipped)",
            settings.limiter.ceiling_dbtp
        ));
    } else if let Some((reached, wanted)) = search.short {
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
    if search.written && search.trim_db == 0.0 {
        // The kept reading wrote the master as it measured it: its analysis is the master's.
        if let Some(net) = sink.end()? {
            notes.extend(net_note(&net, rate));
        }
        progress("verifying");
        let profile =
            search.profile.ok_or_else(|| Error::Unsupported("internal: the written master was not analysed".into()))?;
        if settings.limiter.enabled {
            notes.push(limiter_note(&search.stats));
        }
        return Ok(Mastered { settings, profile, limiter: search.stats, saturation: sat_stats, notes });
    }
    progress("writing");
    let info = WriteInfo {
        sample_rate_hz: rate,
        channel_count: channels,
        frames,
        dither_seed: settings.dither_seed,
        loudest_window: search.loudest_window,
        ceiling_dbtp: settings.limiter.enabled.then_some(settings.limiter.ceiling_dbtp),
    };
    sink.begin(&info)?;
    // The last reading kept what it limited (before the safety trim) in the spool: the master
    // is that, times the trim, the same bits as limiting again with the trim
    // (`x * (drive * g) * trim`). Without a spool the signal entering the limiter is limited
    // again.
    let spooled = spool.filter(|s| s.frames == Some(frames));
    let mut limiter = spooled.is_none().then(|| StreamLimiter::new(rate, channels, &settings.limiter, search.trim_db));
    // As the limiter scales its output ([`StreamLimiter::new`]): the trim the render carried and
    // the one measured on top.
    let trim = db_to_lin(settings.limiter.output_trim_db + search.trim_db) as f32;
    // The last reading analysed the limited output as it measured it: without a safety trim
    // that output is the master, sample for sample, and its analysis is the master's. Else the
    // master's own analysis runs as it is written, on the other core, a chunk behind the
    // writer.
    let read_profile = search.profile.filter(|_| search.trim_db == 0.0);
    let analyse = read_profile.is_none();
    // Three threads, each a chunk behind the one before: the master's samples are made (the
    // spool read back and scaled, or the limiter run again) on one, written (ceiling net,
    // encoding, the file) on this one, and analysed on a third when the analysis is needed.
    // The chunks' buffers go round between them.
    let profile = std::thread::scope(|scope| -> Result<Option<Profile>> {
        let (to_meter, for_meter) = std::sync::mpsc::sync_channel::<Planes>(2);
        let (metered, meter_spare) = std::sync::mpsc::channel::<Planes>();
        let meter = analyse.then(|| {
            scope.spawn(move || {
                let mut analyzer = Analyzer::without_dynamics(rate, channels, Some(frames));
                for mut planes in for_meter {
                    analyzer.push(&slices(&planes));
                    planes.iter_mut().for_each(Vec::clear);
                    let _ = metered.send(planes);
                }
                analyzer.finish("master", false)
            })
        });
        let (pre, settings_ref, limiter_ref) = (&pre, &settings, limiter.as_mut());
        let mut written = 0usize;
        crate::render::chain::hand_over(
            channels,
            move |emit| {
                let mut out: Planes = vec![Vec::new(); channels];
                match (spooled, limiter_ref) {
                    (Some(spool), _) if spool.gains => {
                        let Pre::Cached { pre: planes, .. } = pre else {
                            return Err(Error::Unsupported(
                                "internal: a spool of gains without the render kept".into(),
                            ));
                        };
                        // As the limiter computes it: `x * (drive * g) * trim`.
                        let drive = db_to_lin(settings_ref.limiter.drive_db) as f32;
                        let mut at = 0;
                        spool.replay(&mut |chunk| {
                            let g = chunk.first().copied().unwrap_or_default();
                            for (o, c) in out.iter_mut().zip(planes) {
                                o.extend(c[at..at + g.len()].iter().zip(g).map(|(x, g)| x * (drive * g) * trim));
                            }
                            at += g.len();
                            emit(&mut out)
                        })
                    }
                    (Some(spool), _) => spool.replay(&mut |chunk| {
                        for (o, c) in out.iter_mut().zip(chunk) {
                            o.extend(c.iter().map(|x| x * trim));
                        }
                        emit(&mut out)
                    }),
                    (None, Some(limiter)) => {
                        pre.replay(&mut |p, e| {
                            limiter.process(p, e, &mut out);
                            emit(&mut out)
                        })?;
                        limiter.finish(&mut out);
                        emit(&mut out)
                    }
                    (None, None) => Err(Error::Unsupported("internal: no limiter to write the master".into())),
                }
            },
            &mut |planes| {
                sink.write(written, &slices(planes))?;
                written += planes.first().map_or(0, Vec::len);
                if analyse {
                    // The chunk goes on to the meter thread, a cleared buffer takes its place.
                    let spare = meter_spare.try_recv().unwrap_or_else(|_| vec![Vec::new(); channels]);
                    // A send fails only when the meter thread has died; its join reports that.
                    let _ = to_meter.send(std::mem::replace(planes, spare));
                }
                Ok(())
            },
        )?;
        drop(to_meter);
        if let Some(net) = sink.end()? {
            notes.extend(net_note(&net, rate));
        }
        progress("verifying");
        meter
            .map(|m| m.join().map_err(|_| Error::Unsupported("internal: the master's analysis failed".into())))
            .transpose()
    })?;
    let profile = match (profile, read_profile) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => return Err(Error::Unsupported("internal: the master was not analysed".into())),
    };
    // What the limiter did as it wrote the master: the gain the last reading measured.
    let stats = limiter.map_or(search.stats, |l| l.stats());
    if settings.limiter.enabled {
        notes.push(limiter_note(&stats));
    }
    Ok(Mastered { settings, profile, limiter: stats, saturation: sat_stats, notes })
}

/// What the limiter did to the master, for the notes.
fn limiter_note(stats: &LimiterStats) -> String {
    format!(
        "limiter gain reduction: {:.1} dB at the 99.9th percentile, {:.1} dB at most",
        stats.loud_gain_reduction_db, stats.max_gain_reduction_db
    )
}

/// The proxy of a long mix ([`crate::proxy`]) and its own mid and side band levels, dB on the
/// profile's grid: what the intermediate passes' measurements are read against.
struct ProxyMix {
    audio: AudioBuffer,
    /// The frames of `audio` that are excerpts (the rest is pre-roll): the only ones measured.
    measured: Vec<std::ops::Range<usize>>,
    mid_db: Vec<f64>,
    side_db: Vec<f64>,
    /// How far the proxy over-reads what the compressor does at each grid frequency, dB
    /// ([`crate::proxy::compressor_bias_db`]); `None` without compression.
    bias_db: Option<Vec<f64>>,
}

/// The slowest time constant of the chain's stages with memory, ms: what a proxy's pre-roll
/// must let settle.
fn slowest_time_ms(settings: &Settings) -> f64 {
    let dynamics = settings
        .dynamics
        .bands
        .iter()
        .filter(|b| settings.dynamics.enabled && !b.is_neutral())
        .map(|b| b.attack_ms.max(b.release_ms))
        .fold(0.0, f64::max);
    let limiter = if settings.limiter.enabled { settings.limiter.release_ms } else { 0.0 };
    dynamics.max(limiter)
}

/// The song's output band levels predicted from the proxy's: the song's mix levels (`song_db`)
/// moved by what the chain did to each band of the proxy (`out_db` over `proxy_db`). A band the
/// proxy lacks (no level to compare) keeps the song's mix level.
fn predict_from_proxy(song_db: &[f64], proxy_db: &[f64], out_db: &[f64]) -> Vec<f64> {
    song_db
        .iter()
        .zip(proxy_db)
        .zip(out_db)
        .map(|((&s, &i), &o)| if i.is_finite() && o.is_finite() { s + (o - i) } else { s })
        .collect()
}

/// Mid and side Welch spectra of a buffer (of its `measured` frames, or all), measured as the
/// loop measures its output.
fn measure_spectra(audio: &AudioBuffer, measured: Option<&[std::ops::Range<usize>]>) -> [PowerSpectrum; 2] {
    let mut meter = SpectrumMeter::new(audio.sample_rate_hz, audio.frames(), measured);
    let _ = audio.stream(&mut |chunk| {
        meter.push(chunk);
        Ok(())
    });
    meter.finish()
}

/// The note that says the ceiling's last guard had to act (`None` when it only measured).
pub fn net_note(net: &crate::ceiling::NetStats, sample_rate_hz: u32) -> Option<String> {
    (net.dips > 0).then(|| {
        format!(
            "ceiling guard: {} short stretch(es) of the written samples (after dither, or at the file's ends as a resampler extends them) read over the ceiling minus {:.2} dB; lowered by up to {:.2} dB over {:.1} ms in all (written true peak {:.2} dBTP)",
            net.dips,
            crate::ceiling::NET_MARGIN_DB,
            net.max_reduction_db,
            net.frames_lowered as f64 * 1e3 / f64::from(sample_rate_hz.max(1)),
            net.written_true_peak_dbtp
        )
    })
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

/// The signal entering the limiter in one pass (after EQ, compression and saturation) with its
/// true-peak envelope: kept in memory when it fits the memory budget, else in an unnamed
/// temporary file (the planes and the envelope interleaved), else rendered again from the mix
/// each time it is read.
enum Pre<'a> {
    Cached { pre: Planes, env: Vec<f32> },
    Spooled(Spool),
    Live { source: &'a dyn FrameSource, settings: Box<Settings>, quality: Quality },
}

/// Where [`prepare`] keeps the render between the readings of its pass.
#[derive(Clone, Copy)]
enum Keep<'p> {
    /// In memory: it fits the memory budget.
    Memory,
    /// In an unnamed temporary file in this folder (else the system's temporary folder): a
    /// render over the memory budget is read back from the page cache or the disk, far cheaper
    /// than rendering the chain again (its 8x saturator above all) for every reading.
    Disk(Option<&'p Path>),
    /// Nowhere: rendered again from the mix for every reading.
    Nothing,
}

impl Pre<'_> {
    /// Calls `f` with consecutive aligned chunks of the signal and its envelope.
    fn replay(&self, f: &mut PreSink<'_>) -> Result<()> {
        match self {
            Pre::Cached { pre, env } => {
                let mut start = 0;
                while start < env.len() {
                    let end = (start + CHUNK_FRAMES).min(env.len());
                    let chunk: Vec<&[f32]> = pre.iter().map(|c| &c[start..end]).collect();
                    f(&chunk, &env[start..end])?;
                    start = end;
                }
                Ok(())
            }
            Pre::Spooled(spool) => spool.replay(&mut |planes| match planes.split_last() {
                Some((env, audio)) => f(audio, env),
                None => Ok(()),
            }),
            Pre::Live { source, settings, quality } => render_pre(*source, settings, Some(*quality), f),
        }
    }
}

/// What the loudness search needs of a pass's pre-limiter signal: its true-peak envelope and
/// K-weighted energy decimated (block maxima and means of `decimation` frames, at most
/// [`ESTIMATE_FRAMES`] of them), the envelope's 99.9th-percentile level and its loudness.
struct Prepared<'a> {
    pre: Pre<'a>,
    env_d: Vec<f32>,
    energy_d: Vec<f32>,
    decimation: usize,
    loud_db: f64,
    base_lufs: f64,
    rate: u32,
    channels: usize,
    frames: usize,
    /// What the saturator does, when this pass measured what enters it (`None`: the last pass,
    /// which keeps the drive and the figures of the pass before).
    saturation: Option<SaturationStats>,
    /// First pass with saturation: the limiter's estimated depth without it, dB.
    limiting_estimate: Option<f64>,
    /// On a proxy, the frames whose spectrum is measured (its excerpts, not their pre-rolls);
    /// `None`: every frame.
    measured: Option<Vec<std::ops::Range<usize>>>,
}

/// Most frames of the decimated estimate signals (4 Mi: 16 MB each).
const ESTIMATE_FRAMES: usize = 1 << 22;

/// Frames per value of the decimated estimate signals of a song of `frames` frames: 8, doubled
/// until there are at most [`ESTIMATE_FRAMES`] values. A proxy is measured at its song's
/// decimation, so that what its readings teach the estimate holds for the song.
fn decimation_for(frames: usize) -> usize {
    let mut decimation = 8;
    while frames / decimation > ESTIMATE_FRAMES {
        decimation *= 2;
    }
    decimation
}

/// The sample rate of the decimated estimate signals (one value per `decimation` frames), Hz.
fn decimated_rate(rate: u32, decimation: usize) -> u32 {
    (rate / decimation as u32).max(1)
}

/// Saturates the first `frames` frames of the kept pre-limiter signal `pre` in place with `sat`,
/// writes its true-peak envelope over `env`, and measures what comes out into `m`.
///
/// The saturator runs on a thread of its own, fed copies of the signal's chunks; the envelope,
/// the measurement and the writing back run on this one, a chunk behind. The saturator's
/// output lags its input, so every frame written back has been copied out before. Each stage
/// sees the chunks it would see run one after the other: the same bits.
fn saturate_kept(
    pre: &mut Planes,
    env: &mut [f32],
    frames: usize,
    mut sat: crate::render::stream::SaturatorStage,
    m: &mut Measure,
) -> Result<()> {
    use std::sync::mpsc::{channel, sync_channel};
    let channels = pre.len();
    // Message k < `chunks` carries chunk k; message `chunks` ends the stream.
    let chunks = frames.div_ceil(CHUNK_FRAMES);
    let (to_sat, sat_in) = sync_channel::<(usize, Planes)>(2);
    let (from_sat, sat_out) = sync_channel::<Planes>(2);
    // Buffers go back to where they are filled: the chunks' copies here, the saturator's
    // output planes to its thread.
    let (inputs_back, spare_inputs) = channel::<Planes>();
    let (outputs_back, spare_outputs) = channel::<Planes>();
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for (k, input) in sat_in {
                let mut a = spare_outputs.try_recv().unwrap_or_else(|_| vec![Vec::new(); channels]);
                if k < chunks {
                    sat.process(&slices(&input), &mut a);
                } else {
                    sat.finish(&mut a);
                }
                // A send fails only when this side has stopped reading (an error there).
                let _ = inputs_back.send(input);
                if from_sat.send(a).is_err() || k >= chunks {
                    return;
                }
            }
        });
        let copy_out = |k: usize, pre: &Planes| -> (usize, Planes) {
            let mut input = spare_inputs.try_recv().unwrap_or_else(|_| vec![Vec::new(); channels]);
            let start = k * CHUNK_FRAMES;
            let end = (start + CHUNK_FRAMES).min(frames);
            for (i, c) in input.iter_mut().zip(pre.iter()) {
                i.clear();
                if k < chunks {
                    i.extend_from_slice(&c[start..end]);
                }
            }
            (k, input)
        };
        let mut stage = EnvelopeStage::new(channels);
        let (mut b, mut e): (Planes, Vec<f32>) = (vec![Vec::new(); channels], Vec::new());
        let mut sent = 0;
        let mut written = 0;
        let lost = || Error::Unsupported("internal: the saturator's thread stopped".into());
        for k in 0..=chunks {
            while sent <= chunks && sent < k + 2 {
                to_sat.send(copy_out(sent, pre)).map_err(|_| lost())?;
                sent += 1;
            }
            let mut a = sat_out.recv().map_err(|_| lost())?;
            stage.process(&slices(&a), &mut b, &mut e);
            if k == chunks {
                stage.finish(&mut b, &mut e);
            }
            a.iter_mut().for_each(Vec::clear);
            let _ = outputs_back.send(a);
            m.push(&slices(&b), &e);
            let n = e.len();
            for (c, x) in pre.iter_mut().zip(&b) {
                c[written..written + n].copy_from_slice(x);
            }
            env[written..written + n].copy_from_slice(&e);
            written += n;
            b.iter_mut().for_each(Vec::clear);
            e.clear();
        }
        // The saturator's thread has ended (after the last message, or on an error here: this
        // side's senders go with it).
        drop(to_sat);
        Ok(())
    })
}

/// Gathers a [`Prepared`]'s measurements from chunks of the signal and its envelope.
struct Measure {
    rate: u32,
    /// Whether to keep the decimated signals (the loudness search's estimate needs them).
    decimate: bool,
    decimation: usize,
    env_d: Vec<f32>,
    energy_d: Vec<f32>,
    block_max: f32,
    block_sum: f32,
    in_block: usize,
    quantile: EnvelopeQuantile,
    k: KWeightedEnergy,
    energy: Vec<f32>,
}

impl Measure {
    /// A measurement of `frames` frames; `decimate`: keep the decimated signals too (reserved
    /// at their final length: grown by doubling they would briefly need three times that).
    fn new(rate: u32, channels: usize, frames: usize, decimation: usize, decimate: bool) -> Self {
        let reserve = if decimate { frames / decimation + 1 } else { 0 };
        Self {
            rate,
            decimate,
            decimation,
            env_d: Vec::with_capacity(reserve),
            energy_d: Vec::with_capacity(reserve),
            block_max: 0.0,
            block_sum: 0.0,
            in_block: 0,
            quantile: EnvelopeQuantile::new(),
            k: KWeightedEnergy::new(rate, channels),
            energy: Vec::new(),
        }
    }

    fn push(&mut self, pre: &[&[f32]], env: &[f32]) {
        self.quantile.push(env);
        if !self.decimate {
            return;
        }
        let mut energy = std::mem::take(&mut self.energy);
        self.k.push(pre, &mut energy);
        for (&e, &k) in env.iter().zip(&energy) {
            self.block_max = self.block_max.max(e);
            self.block_sum += k;
            self.in_block += 1;
            if self.in_block == self.decimation {
                self.flush();
            }
        }
        self.energy = energy;
    }

    /// Integrated loudness of what was measured, LUFS, from the decimated K-weighted energy
    /// (block means, so the same 400 ms blocks; −∞ unless decimating). Aims the drive search;
    /// every drive it finds is verified on the full signal.
    fn loudness_lufs(&self) -> f64 {
        gated_loudness(&block_energies(&self.energy_d, decimated_rate(self.rate, self.decimation), |_| 1.0))
    }

    fn flush(&mut self) {
        if self.in_block > 0 {
            self.env_d.push(self.block_max);
            self.energy_d.push(self.block_sum / self.in_block as f32);
        }
        (self.block_max, self.block_sum, self.in_block) = (0.0, 0.0, 0);
    }
}

/// How [`prepare`] sets the saturator.
struct SaturationPlan<'w> {
    /// (peaks into the clipper, limiter gain reduction) of the passes so far, dB.
    work: &'w [(f64, f64)],
    /// Deepest drive into the clipper, dB.
    cap_db: f64,
    /// Measure what enters the saturator and plan the drive again (false: keep the drive in the
    /// settings, planned and capped by the pass before, and render it without measuring first).
    replan: bool,
}

/// Renders one pass's pre-limiter signal and measures it; with `saturation` (the plan),
/// first measures the signal before the saturator to set its drive.
fn prepare<'a>(
    source: &'a dyn FrameSource,
    settings: &mut Settings,
    saturation: Option<SaturationPlan<'_>>,
    quality: Quality,
    keep_in: Keep<'_>,
    song_frames: usize,
) -> Result<Prepared<'a>> {
    let cache = matches!(keep_in, Keep::Memory);
    let (rate, channels, frames) = (source.sample_rate_hz(), source.channel_count(), source.frames());
    let decimation = decimation_for(song_frames);
    let keep = |store: &mut Option<(Planes, Vec<f32>)>, p: &[&[f32]], e: &[f32]| {
        if let Some((pre, env)) = store.as_mut() {
            for (c, x) in pre.iter_mut().zip(p) {
                c.extend_from_slice(x);
            }
            env.extend_from_slice(e);
        }
    };
    let new_store = || {
        cache.then(|| {
            ((0..channels).map(|_| Vec::with_capacity(frames)).collect::<Planes>(), Vec::with_capacity(frames))
        })
    };
    let mut sat_stats = SaturationStats::default();
    let mut limiting_estimate = None;
    let mut unsaturated: Option<(Planes, Vec<f32>)> = None;
    // What entered the saturator, measured before the plan.
    let mut measured: Option<Measure> = None;
    // The last pass keeps the drive the pass before planned and capped: it is not rendered
    // once more without the saturator only to measure what enters it.
    let measure_first = saturation.as_ref().is_some_and(|p| p.replan);
    if let Some(&SaturationPlan { work, cap_db, .. }) = saturation.as_ref().filter(|_| measure_first) {
        // Measure what enters the saturator (kept, when it fits, to saturate without rendering
        // the EQ and compressor again).
        // The first pass estimates the limiter's work from the decimated signal; later passes
        // have measured it.
        // Decimating too where the pass before left the saturator off: if this plan leaves it
        // off as well, what was measured here is what enters the limiter, and it is not
        // measured a second time.
        let mut m0 = Measure::new(rate, channels, frames, decimation, work.is_empty() || !settings.saturation.enabled);
        let mut store = new_store();
        render_pre(source, settings, None, &mut |p, e| {
            m0.push(p, e);
            keep(&mut store, p, e);
            Ok(())
        })?;
        m0.flush();
        let loud_db = m0.quantile.quantile_db(0.999);
        let base = m0.loudness_lufs();
        let first_limiting = work.is_empty().then(|| estimated_limiting_db(&m0, &settings.limiter, base));
        plan_saturation(loud_db, first_limiting, settings, work, cap_db);
        limiting_estimate = first_limiting;
        if settings.saturation.enabled {
            sat_stats.peak_drive_db = loud_db + settings.saturation.drive_db - settings.limiter.ceiling_dbtp;
        }
        unsaturated = store;
        measured = Some(m0);
    }
    let mut m = Measure::new(rate, channels, frames, decimation, true);
    let store;
    let mut spooled_pre = None;
    let saturating = settings.saturation.enabled && saturation.is_some();
    match unsaturated {
        Some((mut pre, mut env)) if saturating => {
            let sat = crate::render::stream::SaturatorStage::new(
                rate,
                channels,
                &settings.saturation,
                settings.limiter.ceiling_dbtp,
                quality,
            );
            saturate_kept(&mut pre, &mut env, frames, sat, &mut m)?;
            store = Some((pre, env));
        }
        Some((pre, env)) => {
            // The saturator stays out: what was measured is what enters the limiter.
            match measured.filter(|m0| m0.decimate) {
                Some(m0) => m = m0,
                None => {
                    let mut start = 0;
                    while start < frames {
                        let end = (start + CHUNK_FRAMES).min(frames);
                        let chunk: Vec<&[f32]> = pre.iter().map(|c| &c[start..end]).collect();
                        m.push(&chunk, &env[start..end]);
                        start = end;
                    }
                }
            }
            store = Some((pre, env));
        }
        None => {
            let q = if saturating { Some(quality) } else { None };
            let mut kept = new_store();
            let mut disk = match keep_in {
                Keep::Disk(dir) => Spool::create(dir, channels + 1, false),
                Keep::Memory | Keep::Nothing => None,
            };
            let mut writer = disk.as_mut().map(Spool::writer);
            render_pre(source, settings, q, &mut |p, e| {
                m.push(p, e);
                keep(&mut kept, p, e);
                if let Some(w) = writer.as_mut() {
                    let planes: Vec<&[f32]> = p.iter().copied().chain([e]).collect();
                    w.push(&planes);
                }
                Ok(())
            })?;
            writer.into_iter().for_each(SpoolWriter::finish);
            store = kept;
            // A spool whose writing failed (a full disk) is dropped: the render is then
            // rendered again for every reading.
            spooled_pre = disk.filter(|d| d.frames == Some(frames));
        }
    }
    m.flush();
    let pre = match (store, spooled_pre) {
        (Some((pre, env)), _) => Pre::Cached { pre, env },
        (None, Some(spool)) => Pre::Spooled(spool),
        (None, None) => Pre::Live { source, settings: Box::new(settings.clone()), quality },
    };
    Ok(Prepared {
        pre,
        loud_db: m.quantile.quantile_db(0.999),
        base_lufs: m.loudness_lufs(),
        env_d: m.env_d,
        energy_d: m.energy_d,
        decimation: m.decimation,
        rate,
        channels,
        frames,
        saturation: measure_first.then_some(sat_stats),
        limiting_estimate,
        measured: None,
    })
}

/// The loudness the limiter's output would have at `drive_db`, estimated on decimated signals:
/// the K-weighted energy times the limiter's gain (computed on the decimated envelope) squared.
/// Returns it with that gain.
fn estimate_lufs(
    env_d: &[f32],
    energy_d: &[f32],
    rate_d: u32,
    limiter: &crate::settings::LimiterSettings,
    drive_db: f64,
) -> (f64, Vec<f32>) {
    let gain = gain_curve(env_d, db_to_lin(drive_db) as f32, rate_d, limiter);
    // The output trim scales the limited output's energy like the drive does its input's.
    let g2 = db_to_lin(2.0 * (drive_db + limiter.output_trim_db)) as f32;
    (gated_loudness(&block_energies(energy_d, rate_d, |i| gain[i] * gain[i] * g2)), gain)
}

/// The limiter's gain reduction (99.9th percentile, dB) at the drive that would reach the
/// target without a saturator, estimated on the decimated signal `m` (loudness `base_lufs`).
fn estimated_limiting_db(m: &Measure, limiter: &crate::settings::LimiterSettings, base_lufs: f64) -> f64 {
    let target = limiter.target_lufs;
    if !base_lufs.is_finite() || !target.is_finite() || m.env_d.is_empty() {
        return f64::NAN;
    }
    let rate_d = decimated_rate(m.rate, m.decimation);
    let estimate = |d: f64| estimate_lufs(&m.env_d, &m.energy_d, rate_d, limiter, d).0;
    let drive = secant(&estimate, target, (target - base_lufs).clamp(-60.0, 36.0), -60.0, 36.0);
    let (_, gain) = estimate_lufs(&m.env_d, &m.energy_d, rate_d, limiter, drive);
    let mut reduction = DbHistogram::new(0.0, 0.001, 120_000);
    for g in &gain {
        reduction.add(-20.0 * f64::from(g.max(1e-6)).log10());
    }
    reduction.quantile(0.999)
}

/// Decides the saturator's drive for the signal entering it (after EQ and compression; its
/// envelope's 99.9th-percentile level is `loud_db`): the limiter keeps up to
/// [`LIMITER_SHARE_DB`] of gain reduction at the 99.9th percentile and the saturator takes the
/// rest, up to `cap_db` ([`MAX_SATURATION_DB`], or [`CRUSH_MAX_SATURATION_DB`] with
/// `--allow-crush`). `work` holds (peaks into the clipper, limiter gain reduction) of the passes
/// so far, dB, anchored by the first pass's estimate of the limiter alone (`first_limiting_db`,
/// from [`estimated_limiting_db`]: clipper depth 0). The trade is far from one for one and
/// flattens as the clipper takes over (on quite_roundtrip: 5.4 dB of limiting with no clipping,
/// 1.5 dB at 1.4 dB into the clipper), so the depth is interpolated between the passes that
/// bracket the limiter's share, and only stepped (secant, else one for one) while none does.
fn plan_saturation(
    loud_db: f64,
    first_limiting_db: Option<f64>,
    settings: &mut Settings,
    work: &[(f64, f64)],
    cap_db: f64,
) {
    let l = &settings.limiter;
    // Passes whose limiter worked at least its share, and passes whose limiter worked at most
    // its share: the depth wanted lies between the deepest of the first and the shallowest of
    // the second, where the trade (limiter depth against clipper depth) is read off directly.
    // The trade is far from one for one and flattens as the clipper takes over, so stepping by
    // it from one side (or by a secant through two points on the same side) can overshoot.
    let over = work.iter().filter(|(_, l)| *l >= LIMITER_SHARE_DB).max_by(|a, b| a.0.total_cmp(&b.0));
    let under = work.iter().filter(|(_, l)| *l <= LIMITER_SHARE_DB).min_by(|a, b| a.0.total_cmp(&b.0));
    let into_clipper = match (over, under, work) {
        (Some(&(i0, l0)), Some(&(i1, l1)), _) if i1 > i0 && l0 > l1 => {
            i0 + (l0 - LIMITER_SHARE_DB) * (i1 - i0) / (l0 - l1)
        }
        (Some(&(i0, _)), Some(&(i1, _)), _) => 0.5 * (i0 + i1),
        // Secant only where the two passes show the expected trade (more clipper, less limiter,
        // at a plausible rate); the intermediate passes' numbers are rough, and a secant
        // through noise can throw the plan anywhere.
        (_, _, [.., (i0, l0), (i1, l1)])
            if (i1 - i0).abs() > 0.1 && (-4.0..=-0.25).contains(&((l1 - l0) / (i1 - i0))) =>
        {
            i1 + (LIMITER_SHARE_DB - l1) * (i1 - i0) / (l1 - l0)
        }
        (_, _, [.., (into, limiter_db)]) => into + limiter_db - LIMITER_SHARE_DB,
        (_, _, []) => first_limiting_db.unwrap_or(f64::NAN) - LIMITER_SHARE_DB,
    };
    let s = &mut settings.saturation;
    if !into_clipper.is_finite() || !loud_db.is_finite() || into_clipper <= 0.05 {
        *s = crate::settings::SaturationSettings::default();
        return;
    }
    let into_clipper = into_clipper.min(cap_db);
    s.enabled = true;
    s.drive_db = clipper_drive_db(into_clipper, l.ceiling_dbtp, loud_db);
    s.mix = 1.0;
}

/// The saturator drive that takes peaks at `loud_db` (dBFS, before the drive) `into_clipper_db`
/// past the clip level (the ceiling, dBTP), within the settings' drive range, dB.
fn clipper_drive_db(into_clipper_db: f64, ceiling_dbtp: f64, loud_db: f64) -> f64 {
    (into_clipper_db + ceiling_dbtp - loud_db)
        .clamp(crate::settings::limits::DRIVE_DB.0, crate::settings::limits::DRIVE_DB.1)
}

/// What [`loudness_loop`] found.
struct Search {
    /// Limiter statistics of the chosen drive.
    stats: LimiterStats,
    /// Safety trim of the chosen drive, dB (≤ 0).
    trim_db: f64,
    /// `Some((reached, wanted))` when the target was out of reach.
    short: Option<(f64, f64)>,
    /// Mid and side spectra of the limited output (intermediate passes).
    spectra: Option<[PowerSpectrum; 2]>,
    /// The loudest window of the limited output (first frame, frames).
    loudest_window: (usize, usize),
    /// The analysis of the limited output as read (the last pass's readings), before the
    /// safety trim: the master's own profile when the trim is 0 dB.
    profile: Option<Profile>,
    /// Whether the chosen reading's output was written to the sink as it was read: with no
    /// safety trim, that is the master, written.
    written: bool,
}

/// One read of the limited output at the drive in `limiter`: its integrated loudness, its true
/// peak (when `true_peak`), its spectra (when `spectra`), the limiter's statistics.
struct Reading {
    lufs: f64,
    true_peak_dbtp: f64,
    stats: LimiterStats,
    spectra: Option<[PowerSpectrum; 2]>,
    sub_blocks: Vec<f64>,
    /// The whole analysis of what was read, when the reading took it ([`Meters::Analysis`]).
    profile: Option<Profile>,
    /// Whether what was read was also written to the master's sink as it was read.
    written: bool,
}

/// How [`read_limited`] measures the limited output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meters {
    /// Loudness, with the true peak when `true_peak`: an intermediate pass's reading, or a last
    /// pass's retry once its master needs a trim on top (it is then written after).
    Levels { true_peak: bool },
    /// The whole analysis of a master ([`Analyzer`]), which holds the loudness and the true
    /// peak the search needs: a last-pass reading, which becomes the master's profile when the
    /// master is written as read (no safety trim), so the written master is not analysed again.
    Analysis,
}

/// The last pass's limited output (before the safety trim), kept on disk as each reading makes
/// it, so that the master is written from what the accepted reading rendered instead of
/// limiting (or, past the memory budget, rendering the whole chain) again. Raw interleaved f32
/// frames in an unnamed temporary file (removed by the system when closed); its pages live in
/// the page cache, not in the process's memory. A spool that fails to write (a full disk) is
/// dropped and the master is rendered again from the signal entering the limiter, as before.
struct Spool {
    file: std::fs::File,
    /// Values per frame: the output's channels, or 1 for [`Self::gains`].
    channels: usize,
    /// The spool keeps the limiter's gain per frame rather than its output: the signal
    /// entering the limiter is in memory ([`Pre::Cached`]), and the output is that times
    /// `drive * gain * trim`, computed as the limiter computes it. A channel's worth of data
    /// instead of all of them.
    gains: bool,
    /// Frames of the last complete reading (`None`: none complete, or a write failed).
    frames: Option<usize>,
}

impl Spool {
    /// An unnamed temporary file in `dir` (else the system's temporary folder), for the output
    /// of `channels` channels, or for the gains when `gains`.
    fn create(dir: Option<&Path>, channels: usize, gains: bool) -> Option<Self> {
        let file = dir.and_then(|d| tempfile::tempfile_in(d).ok()).or_else(|| tempfile::tempfile().ok())?;
        Some(Self { file, channels: if gains { 1 } else { channels }, gains, frames: None })
    }

    /// Starts a new reading's output: what was kept is forgotten.
    fn writer(&mut self) -> SpoolWriter<'_> {
        self.frames = None;
        let ok = std::io::Seek::rewind(&mut self.file).is_ok();
        let channels = self.channels;
        SpoolWriter {
            out: ok.then(|| std::io::BufWriter::with_capacity(1 << 20, &self.file)),
            frames: 0,
            bytes: Vec::new(),
            channels,
            done: &mut self.frames,
        }
    }

    /// Streams the kept frames back as planar chunks of at most [`CHUNK_FRAMES`] frames.
    fn replay(&self, f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()> {
        use std::io::Read;
        let frames = self.frames.ok_or_else(|| Error::Unsupported("internal: the spool holds no reading".into()))?;
        let io =
            |e: std::io::Error| Error::Unsupported(format!("cannot read the render back from its temporary file: {e}"));
        std::io::Seek::rewind(&mut &self.file).map_err(io)?;
        let channels = self.channels;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &self.file);
        let mut bytes = vec![0u8; CHUNK_FRAMES * channels * 4];
        let mut planes: Planes = vec![Vec::with_capacity(CHUNK_FRAMES); channels];
        let mut at = 0;
        while at < frames {
            let n = (frames - at).min(CHUNK_FRAMES);
            let b = &mut bytes[..n * channels * 4];
            reader.read_exact(b).map_err(io)?;
            for (c, p) in planes.iter_mut().enumerate() {
                p.clear();
                p.extend((0..n).map(|i| {
                    let o = (i * channels + c) * 4;
                    f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
                }));
            }
            f(&slices(&planes))?;
            at += n;
        }
        Ok(())
    }
}

/// Writes one reading's limited output into a [`Spool`].
struct SpoolWriter<'a> {
    out: Option<std::io::BufWriter<&'a std::fs::File>>,
    frames: usize,
    bytes: Vec<u8>,
    channels: usize,
    done: &'a mut Option<usize>,
}

impl SpoolWriter<'_> {
    fn push(&mut self, planes: &[&[f32]]) {
        use std::io::Write;
        let Some(out) = self.out.as_mut() else { return };
        let n = planes.first().map_or(0, |c| c.len());
        self.bytes.clear();
        self.bytes.reserve(n * self.channels * 4);
        for i in 0..n {
            for c in planes {
                self.bytes.extend_from_slice(&c[i].to_le_bytes());
            }
        }
        if out.write_all(&self.bytes).is_err() {
            self.out = None;
        }
        self.frames += n;
    }

    /// Marks the reading complete (when every write succeeded).
    fn finish(mut self) {
        use std::io::Write;
        if self.out.take().is_some_and(|mut o| o.flush().is_ok()) {
            *self.done = Some(self.frames);
        }
    }
}

/// Keeps what the limiter just produced (its output `out`, or the gains that made it when
/// tapped) in the reading's spool.
fn keep_limited(spool: &mut Option<SpoolWriter<'_>>, out: &Planes, lim: &mut StreamLimiter) {
    let Some(s) = spool.as_mut() else { return };
    match lim.tapped() {
        Some(g) => {
            s.push(&[g.as_slice()]);
            g.clear();
        }
        None => s.push(&slices(out)),
    }
}

/// Runs the prepared render through the limiter, keeping what it limited in the reading's spool,
/// scaling it by `trim` (linear) and handing each chunk to `take` (the reading's meters, which
/// clear it).
fn limit_and_take(
    prepared: &Prepared,
    lim: &mut StreamLimiter,
    trim: f32,
    mut spool: Option<SpoolWriter<'_>>,
    out: &mut Planes,
    take: &mut dyn FnMut(&mut Planes) -> Result<()>,
) -> Result<()> {
    let mut limited = |out: &mut Planes, lim: &mut StreamLimiter| {
        keep_limited(&mut spool, out, lim);
        if trim != 1.0 {
            out.iter_mut().for_each(|c| c.iter_mut().for_each(|x| *x *= trim));
        }
        take(out)
    };
    prepared.pre.replay(&mut |p, e| {
        lim.process(p, e, out);
        limited(out, lim)
    })?;
    lim.finish(out);
    limited(out, lim)?;
    if let Some(s) = spool {
        s.finish();
    }
    Ok(())
}

/// Where the last pass's readings put what they limit, besides their meters: the spool (what
/// the kept reading limited, for writing the master after) and the master's sink (written as
/// read).
struct Outlets<'a, 's, 'i> {
    spool: Option<&'a mut Spool>,
    write: Option<Speculative<'s, 'i>>,
}

/// Where a last-pass reading writes what it limits as it measures it: the sink, begun (again)
/// with `info` before the reading's first chunk.
struct Speculative<'s, 'i> {
    sink: &'s mut dyn MasterSink,
    info: &'i WriteInfo,
}

fn read_limited(
    prepared: &Prepared,
    limiter: &crate::settings::LimiterSettings,
    meters: Meters,
    spectra: bool,
    outlets: &mut Outlets<'_, '_, '_>,
) -> Result<Reading> {
    let (spool, write) = (outlets.spool.as_deref_mut(), outlets.write.as_mut());
    let (rate, channels) = (prepared.rate, prepared.channels);
    // The limiter runs without the output trim and the trim scales each chunk after the spool
    // has kept it: the spool holds what was limited before any trim, which the master is
    // written from times the whole trim (carried and measured), as a limiter with that trim
    // computes it, bit for bit. The readings see the same bits as that limiter's too
    // (`x · (drive · g) · 1` is `x · (drive · g)`).
    let untrimmed = crate::settings::LimiterSettings { output_trim_db: 0.0, ..limiter.clone() };
    let mut lim = StreamLimiter::new(rate, channels, &untrimmed, 0.0);
    let trim = db_to_lin(limiter.output_trim_db) as f32;
    let frames = prepared.frames;
    let mut spec = spectra.then(|| SpectrumMeter::new(rate, frames, prepared.measured.as_deref()));
    let gains = spool.as_ref().is_some_and(|s| s.gains);
    if gains {
        lim.tap_gains();
    }
    let spool = spool.map(Spool::writer);
    let mut out: Planes = vec![Vec::new(); channels];
    match meters {
        Meters::Analysis => {
            // The analyser measures on its own threads, a block behind the limiter.
            let mut analyzer = Analyzer::without_dynamics(rate, channels, Some(frames));
            let mut measure = |out: &Planes| {
                let planes = slices(out);
                analyzer.push(&planes);
                if let Some(s) = spec.as_mut() {
                    s.push(&planes);
                }
            };
            let written = match write {
                None => {
                    limit_and_take(prepared, &mut lim, trim, spool, &mut out, &mut |out| {
                        measure(out);
                        out.iter_mut().for_each(Vec::clear);
                        Ok(())
                    })?;
                    false
                }
                Some(Speculative { sink, info }) => {
                    // The limiter and the meters on one thread, the writer (the ceiling's net,
                    // encoding, the file) on this one, a chunk behind.
                    sink.begin(info)?;
                    let lim = &mut lim;
                    let mut at = 0usize;
                    crate::render::chain::hand_over(
                        channels,
                        move |emit| {
                            limit_and_take(prepared, lim, trim, spool, &mut out, &mut |out| {
                                measure(out);
                                emit(out)
                            })
                        },
                        &mut |planes| {
                            sink.write(at, &slices(planes))?;
                            at += planes.first().map_or(0, Vec::len);
                            Ok(())
                        },
                    )?;
                    true
                }
            };
            let (profile, levels) = analyzer.finish_with_levels("master", false);
            Ok(Reading {
                lufs: levels.integrated_lufs,
                true_peak_dbtp: 20.0 * f64::from(levels.true_peak).log10(),
                stats: lim.stats(),
                spectra: spec.map(SpectrumMeter::finish),
                sub_blocks: levels.sub_blocks,
                profile: Some(profile),
                written,
            })
        }
        Meters::Levels { true_peak } => {
            let mut kmeter = KMeter::new(rate, channels);
            let mut tp = true_peak.then(|| TruePeakMeter::new(channels));
            let mut take = |out: &mut Planes| {
                let planes = slices(out);
                // The true-peak meters (the costliest part of a read) run beside the loudness
                // and spectrum meters.
                std::thread::scope(|scope| {
                    if let Some(t) = tp.as_mut() {
                        let planes = &planes;
                        scope.spawn(move || t.push(planes));
                    }
                    kmeter.push(&planes);
                    if let Some(s) = spec.as_mut() {
                        s.push(&planes);
                    }
                });
                out.iter_mut().for_each(Vec::clear);
                Ok(())
            };
            // The limiter on a thread of its own, the meters a chunk behind it on this one.
            let lim_ref = &mut lim;
            crate::render::chain::hand_over(
                channels,
                move |emit| limit_and_take(prepared, lim_ref, trim, spool, &mut out, emit),
                &mut take,
            )?;
            Ok(Reading {
                lufs: kmeter.integrated_lufs(),
                true_peak_dbtp: tp.map_or(f64::NEG_INFINITY, |t| t.true_peak_dbtp()),
                stats: lim.stats(),
                spectra: spec.map(SpectrumMeter::finish),
                sub_blocks: kmeter.sub_blocks().to_vec(),
                profile: None,
                written: false,
            })
        }
    }
}

/// Finds the drive that puts the limited output's integrated loudness on the target, without
/// exceeding `max_limiting_db` of gain reduction, and the safety trim that keeps it under the
/// ceiling.
///
/// The search aims with a cheap estimate: the decimated pre-limiter energy times the limiter's
/// gain (on the decimated envelope) squared. That shortcut ignores how the gain's fast movements
/// interact with the K-filter, so every candidate drive is then verified on the real limited
/// output (read in full, not stored), and the search re-aims by the measured difference.
/// `intermediate`: one verified read, which also measures the spectra; else up to
/// `rounds.search` reads, each with the true peak, then the loudness the safety trim takes won
/// back (up to 4 more reads) when `rounds.trim_compensation`.
///
/// `learned` carries what one pass teaches the next: the loudness estimate's bias, LU, and how
/// far under the estimate's drive limit the limiter's measured depth puts the real one, dB.
fn loudness_loop(
    prepared: &Prepared,
    settings: &mut Settings,
    max_limiting_db: f64,
    rounds: LoopRounds,
    learned: (&mut f64, &mut f64),
    intermediate: bool,
    mut outlets: Outlets<'_, '_, '_>,
) -> Result<Search> {
    let (bias, depth) = learned;
    let LoopRounds { search: rounds, trim_compensation, true_peak } = rounds;
    let meters = |tp: bool| {
        if intermediate {
            Meters::Levels { true_peak: tp || true_peak }
        } else {
            Meters::Analysis
        }
    };
    // Where the loudness a safety trim takes is not won back, the trim the render carries keeps
    // it too: the search aims that much under the target, at the drive it would have without.
    let kept_trim_db = if trim_compensation { 0.0 } else { settings.limiter.output_trim_db };
    let target = settings.limiter.target_lufs + kept_trim_db;
    let base = prepared.base_lufs;
    let frames = prepared.frames;
    let window_of =
        |r: &Reading| crate::preview::loudest_window_of(&r.sub_blocks, prepared.rate, frames, PREVIEW_WINDOW_S);
    let finish = |r: Reading, trim_db: f64, short: Option<(f64, f64)>| Search {
        loudest_window: window_of(&r),
        stats: r.stats,
        trim_db,
        short,
        spectra: r.spectra,
        profile: r.profile,
        written: r.written,
    };
    let trim_of = |r: &Reading| safety_trim_db(settings.limiter.ceiling_dbtp, r.true_peak_dbtp);
    if !settings.limiter.enabled && base.is_finite() && target.is_finite() {
        // Without a limiter nothing holds the peaks: the drive is the loudness target's, lowered
        // as far as the true peak needs to stay under the ceiling (aimed at with the limiter's
        // own margin). Nothing is clipped; a target given up for it is said.
        let aim_dbtp = settings.limiter.ceiling_dbtp - CEILING_MARGIN_DB;
        settings.limiter.drive_db = (target - base).clamp(-60.0, 36.0);
        let mut r = read_limited(prepared, &settings.limiter, meters(true), intermediate, &mut outlets)?;
        for _ in 0..3 {
            let over_db = r.true_peak_dbtp - aim_dbtp;
            if over_db.is_nan() || over_db <= 0.0 {
                break;
            }
            settings.limiter.drive_db = (settings.limiter.drive_db - over_db - 0.01).clamp(-60.0, 36.0);
            r = read_limited(prepared, &settings.limiter, meters(true), intermediate, &mut outlets)?;
        }
        let short = (r.lufs < target - LOUDNESS_TOLERANCE_LU).then_some((r.lufs, target));
        return Ok(finish(r, 0.0, short));
    }
    if !base.is_finite() || !target.is_finite() {
        settings.limiter.drive_db = 0.0;
        let enabled = settings.limiter.enabled;
        let r = read_limited(prepared, &settings.limiter, meters(false), intermediate, &mut outlets)?;
        let trim_db = if enabled { trim_of(&r) } else { 0.0 };
        return Ok(finish(r, trim_db, None));
    }
    // Limiting depth is the gain reduction that more than 0.1 % of the music receives (a lone
    // transient may go deeper). The envelope's 99.9th percentile sets a first limit on the
    // drive; the limiter's gain, held through its release, reaches deeper than the envelope,
    // so every verified reading measures the real depth and lowers the limit by any excess.
    let loud_db = if prepared.loud_db.is_finite() { prepared.loud_db } else { 0.0 };
    let drive_cap = (settings.limiter.ceiling_dbtp - CEILING_MARGIN_DB + max_limiting_db - loud_db).min(36.0);
    let mut drive_max = drive_cap - *depth;
    // Moves the drive limit to where the measured depth says it is: down when a reading went
    // too deep, back up (never past the envelope's limit) when one at the limit fell short of
    // both the depth and the target, as after a pass that changed the saturator or the EQ.
    // True when the limit moved enough to search again.
    let mut correct_limit = |r: &Reading, drive: f64, drive_max: &mut f64| -> bool {
        let over = r.stats.loud_gain_reduction_db - max_limiting_db;
        let at_limit = drive >= *drive_max - 1e-9;
        let short = r.lufs < target - LOUDNESS_TOLERANCE_LU;
        if !(over > DEPTH_TOLERANCE_DB || (at_limit && short && over < -DEPTH_SLACK_DB)) {
            return false;
        }
        let moved = (drive - over).min(drive_cap);
        let changed = (moved - *drive_max).abs() > 0.02;
        *drive_max = moved;
        *depth = drive_cap - moved;
        changed
    };
    let rate_d = decimated_rate(prepared.rate, prepared.decimation);
    let limiter = settings.limiter.clone();
    let estimate = |drive_db: f64| estimate_lufs(&prepared.env_d, &prepared.energy_d, rate_d, &limiter, drive_db).0;
    let mut aim = target + *bias;
    let mut drive = (target - base).clamp(-60.0, drive_max);
    let mut reading = None;
    let mut reached = f64::NEG_INFINITY;
    // Final passes get up to two more reads when the drive limit moved.
    let extra = if intermediate { 0 } else { 2 };
    let mut round = 0;
    while round < rounds.max(1) + extra {
        drive = secant(&estimate, aim, drive, -60.0, drive_max);
        settings.limiter.drive_db = drive;
        let r = read_limited(prepared, &settings.limiter, meters(false), intermediate, &mut outlets)?;
        reached = r.lufs;
        let moved = correct_limit(&r, drive, &mut drive_max);
        reading = Some(r);
        round += 1;
        if moved {
            continue;
        }
        if (reached - target).abs() <= LOUDNESS_TOLERANCE_LU || drive >= drive_max - 1e-9 || round >= rounds.max(1) {
            break;
        }
        aim += target - reached;
    }
    let Some(mut r) = reading else {
        return Err(Error::Unsupported("internal: the loudness search made no reading".into()));
    };
    let mut trim_db = trim_of(&r);
    if !intermediate {
        // The safety trim lowers the whole master when a close 8× meter finds the limiter's 4×
        // detector under-read (full-band content near Nyquist). The loudness it costs is won
        // back with more drive; the trim can grow with the drive (content the limiter's
        // detector under-reads gets louder too), so after the first retry the drive moves along
        // the measured slope.
        const RETRIES: usize = 4;
        let mut previous: Option<(f64, f64)> = None;
        reached += trim_db;
        // A master that needs a trim on top of what its render carries is written after the
        // readings: the retries only measure.
        let retry_meters = if trim_db < 0.0 {
            outlets.write = None;
            Meters::Levels { true_peak: true }
        } else {
            meters(true)
        };
        for retry in 0..=RETRIES {
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
            settings.limiter.drive_db = drive;
            r = read_limited(prepared, &settings.limiter, retry_meters, false, &mut outlets)?;
            trim_db = trim_of(&r);
            reached = r.lufs + trim_db;
        }
    }
    *bias = aim - target;
    settings.limiter.drive_db = drive;
    let short = (reached < target - LOUDNESS_TOLERANCE_LU && drive >= drive_max - 1e-6).then_some((reached, target));
    Ok(finish(r, trim_db, short))
}

/// Mid and side Welch spectra of an L/R (or mono) stream: the closed loop's measurement of its
/// output, the same windows and normalisation as the analysis ([`Welch`]).
struct SpectrumMeter {
    welch: Welch,
    mid: Vec<f32>,
    side: Vec<f32>,
    /// Frames measured (`None`: all), in order; the frame position of the next chunk.
    measured: Option<Vec<std::ops::Range<usize>>>,
    at: usize,
}

impl SpectrumMeter {
    fn new(rate: u32, frames: usize, measured: Option<&[std::ops::Range<usize>]>) -> Self {
        let counted = measured.map_or(frames, |m| m.iter().map(|r| r.len()).sum());
        Self {
            welch: Welch::new(rate, 2, Some(counted)),
            mid: Vec::new(),
            side: Vec::new(),
            measured: measured.map(<[_]>::to_vec),
            at: 0,
        }
    }

    fn push(&mut self, chunk: &[&[f32]]) {
        let n = chunk.first().map_or(0, |c| c.len());
        let start = self.at;
        self.at += n;
        let Some(measured) = self.measured.take() else {
            self.push_frames(chunk, 0..n);
            return;
        };
        for r in measured.iter().filter(|r| r.start < start + n && r.end > start) {
            let (s, e) = (r.start.max(start) - start, r.end.min(start + n) - start);
            self.push_frames(chunk, s..e);
        }
        self.measured = Some(measured);
    }

    /// Pushes the frames `range` of `chunk`.
    fn push_frames(&mut self, chunk: &[&[f32]], range: std::ops::Range<usize>) {
        self.mid.clear();
        self.side.clear();
        match chunk {
            [l, r, ..] => crate::audio::split_mid_side(&l[range.clone()], &r[range], &mut self.mid, &mut self.side),
            [m] => {
                self.mid.extend_from_slice(&m[range]);
                self.side.resize(self.mid.len(), 0.0);
            }
            [] => return,
        }
        self.welch.push(&[&self.mid, &self.side]);
    }

    fn finish(self) -> [PowerSpectrum; 2] {
        let mut s = self.welch.finish().into_iter();
        let mid = s.next().unwrap_or(PowerSpectrum { bin_hz: 1.0, power: Vec::new() });
        let side = s.next().unwrap_or(PowerSpectrum { bin_hz: 1.0, power: Vec::new() });
        [mid, side]
    }
}

/// How hard [`loudness_loop`] works.
#[derive(Debug, Clone, Copy)]
pub struct LoopRounds {
    /// Verified search rounds (1: an intermediate pass, rendered only to be measured).
    pub search: usize,
    /// Win back with more drive the loudness the safety trim takes.
    pub trim_compensation: bool,
    /// An intermediate pass: measure the true peak too (the safety trim its output needs is
    /// the one the master's render carries).
    pub true_peak: bool,
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
