//! The proxy: a short stand-in for a long mix on which the closed loop's intermediate passes run.
//!
//! The loop renders the chain, measures what compression, saturation and limiting did to the
//! spectrum and how hard the limiter had to work, and corrects the settings. Those are
//! *properties of the chain on this kind of music*, not of every second of it, so they can be
//! read off a sample of the song: a few short excerpts chosen so that their short-term loudness
//! spreads like the song's (one at each of evenly spaced quantiles of the song's loudness, a
//! stratified sample). The excerpts are joined in song order with short crossfades.
//!
//! Each excerpt is preceded by a pre-roll: the song just before it, rendered but not measured.
//! The chain's slow parts (a compressor's detector, a release) then enter the excerpt in the
//! state the song would have them in, not in the state the previous excerpt left: without it, a
//! 200 ms leveller's recovery at every join was a sixth of a 3 s excerpt and moved the proxy's
//! reading of what the chain does to a band by up to 1.4 dB.
//!
//! Only the last pass, the one that writes the master, renders the whole song; the proxy's
//! readings are checked against it in `tests/proxy.rs`.

use std::ops::Range;

use crate::analysis::Profile;
use crate::audio::AudioBuffer;
use crate::error::Result;
use crate::source::FrameSource;

/// Length of one excerpt, s: the short-term loudness window, long enough for the compressor's
/// slowest release (0.8 s) to settle within it.
pub const EXCERPT_S: usize = 3;
/// Share of the song the proxy takes, before the bounds below.
const PROXY_SHARE: f64 = 0.15;
/// Shortest and longest proxy, s.
const PROXY_MIN_S: usize = 30;
const PROXY_MAX_S: usize = 60;
/// Songs shorter than this many times the shortest proxy are measured whole: a proxy would save
/// too little to be worth its approximation.
const MIN_SONG_FACTOR: usize = 2;
/// Crossfade at each join, s: short enough to keep the excerpts intact, long enough for no click
/// (a click would be a true peak the song never had).
const CROSSFADE_S: f64 = 0.01;
/// Short-term loudness at or under which a second counts as silence (the BS.1770 absolute gate
/// the series is floored at), LUFS.
const SILENT_LUFS: f64 = -69.9;

/// One excerpt of the mix: first frame and length, frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Excerpt {
    /// First frame in the mix.
    pub start_frame: usize,
    /// Length, frames.
    pub frames: usize,
}

/// The excerpts of a mix profiled as `profile` that make its proxy, in song order, or `None`
/// when the song is short enough to be measured whole (or its profile carries no loudness
/// series to choose from).
///
/// The candidates are the song's non-overlapping `EXCERPT_S` windows that are not silence,
/// each with the short-term loudness of its window; one is taken at the middle of each of
/// equal shares of their loudness distribution.
pub fn choose_excerpts(profile: &Profile) -> Option<Vec<Excerpt>> {
    let rate = profile.sample_rate_hz as usize;
    let frames = (profile.duration_s * rate as f64).round() as usize;
    let series = &profile.loudness.short_term_series_lufs;
    let song_s = frames / rate.max(1);
    if rate == 0 || song_s < MIN_SONG_FACTOR * PROXY_MIN_S || series.len() < song_s.saturating_sub(EXCERPT_S) {
        return None;
    }
    let proxy_s = ((song_s as f64 * PROXY_SHARE).round() as usize).clamp(PROXY_MIN_S, PROXY_MAX_S);
    let count = proxy_s / EXCERPT_S;
    // Window k starts at k * EXCERPT_S seconds; series[i] is the 3 s window starting at second i.
    let windows = (song_s / EXCERPT_S).min(series.len().div_ceil(EXCERPT_S));
    let mut candidates: Vec<(usize, f64)> = (0..windows)
        .filter_map(|k| series.get(k * EXCERPT_S).map(|&l| (k, l)))
        .filter(|&(_, l)| l > SILENT_LUFS && l.is_finite())
        .collect();
    if candidates.len() <= count {
        return None;
    }
    candidates.sort_by(|a, b| a.1.total_cmp(&b.1));
    // One excerpt at the middle of each of `count` equal shares of the loudness distribution:
    // a stratified sample, so every percentile of the proxy (of loudness, of the peak envelope
    // the saturator and limiter are planned on) estimates the song's without bias. Forcing the
    // loudest stretch in would weigh it as one excerpt in `count` instead of one in the song's
    // hundred, and the loop would correct the EQ for more saturation than the song gets.
    let mut chosen: Vec<usize> = (0..count)
        .map(|i| {
            let q = (i as f64 + 0.5) / count as f64;
            candidates[((q * candidates.len() as f64) as usize).min(candidates.len() - 1)].0
        })
        .collect();
    chosen.sort_unstable();
    chosen.dedup();
    let len = EXCERPT_S * rate;
    Some(
        chosen
            .into_iter()
            .map(|k| Excerpt { start_frame: k * len, frames: len.min(frames.saturating_sub(k * len)) })
            .filter(|e| e.frames > 0)
            .collect(),
    )
}

/// The proxy: the excerpts joined, each behind its pre-roll, and where the excerpts lie in it.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// The joined audio, pre-rolls included.
    pub audio: AudioBuffer,
    /// Frames of `audio` that are excerpts (to be measured), in order, each the song's own
    /// samples from its excerpt's first frame (less the last few that the next join crossfades);
    /// the rest is pre-roll and crossfade, rendered only so that the chain's state is the song's
    /// when an excerpt begins.
    pub measured: Vec<Range<usize>>,
}

/// Pre-roll before each excerpt for a chain whose slowest time constant is `slowest_ms`, frames
/// at `sample_rate_hz`: three time constants (the state within 5 % of where the song has it), at
/// least 0.1 s, at most 1 s (the proxy is held in memory twice, as read and as rendered).
pub fn preroll_frames(slowest_ms: f64, sample_rate_hz: u32) -> usize {
    let seconds = (3.0 * slowest_ms / 1e3).clamp(0.1, 1.0);
    (seconds * f64::from(sample_rate_hz)).round() as usize
}

/// Reads the excerpts from `source` (one streaming read), each with up to `preroll_frames` of the
/// song before it, and joins them in order, each join a short linear crossfade (inside the
/// pre-roll), into the proxy.
pub fn read_proxy(source: &dyn FrameSource, excerpts: &[Excerpt], preroll_frames: usize) -> Result<Proxy> {
    let (rate, channels) = (source.sample_rate_hz(), source.channel_count());
    let fade = ((CROSSFADE_S * f64::from(rate)) as usize).max(1);
    // Each part's first frame in the song and its pre-roll: the song before the excerpt, back to
    // the end of the previous excerpt at most. A part that reaches back to the previous one
    // continues it in the song and joins it without a crossfade; any other begins at least a
    // crossfade before its excerpt, so that the crossfade falls outside what is measured.
    let mut parts_at: Vec<(usize, usize)> = Vec::with_capacity(excerpts.len());
    let mut contiguous: Vec<bool> = Vec::with_capacity(excerpts.len());
    let mut previous_end = 0usize;
    for (i, e) in excerpts.iter().enumerate() {
        let wanted = if i == 0 { preroll_frames } else { preroll_frames.max(fade) };
        let reaches_back = i > 0 && e.start_frame.saturating_sub(previous_end) <= wanted;
        let start = if reaches_back { previous_end } else { e.start_frame.saturating_sub(wanted) };
        parts_at.push((start, e.start_frame - start));
        contiguous.push(reaches_back);
        previous_end = e.start_frame + e.frames;
    }
    let total: usize = excerpts.iter().zip(&parts_at).map(|(e, (_, pre))| e.frames + pre).sum();
    let mut parts: Vec<Vec<Vec<f32>>> = excerpts
        .iter()
        .zip(&parts_at)
        .map(|(e, (_, pre))| vec![Vec::with_capacity(e.frames + pre); channels])
        .collect();
    let mut at = 0usize;
    source.stream(&mut |chunk| {
        let n = chunk.first().map_or(0, |c| c.len());
        for ((e, &(first, _)), part) in excerpts.iter().zip(&parts_at).zip(parts.iter_mut()) {
            let (s, t) = (first.max(at), (e.start_frame + e.frames).min(at + n));
            if s < t {
                for (p, c) in part.iter_mut().zip(chunk) {
                    p.extend_from_slice(&c[s - at..t - at]);
                }
            }
        }
        at += n;
        Ok(())
    })?;
    let mut out: Vec<Vec<f32>> = vec![Vec::with_capacity(total); channels];
    let mut measured = Vec::with_capacity(excerpts.len());
    for ((part, &(_, pre)), &joined) in parts.into_iter().zip(&parts_at).zip(&contiguous) {
        let len = part.first().map_or(0, Vec::len);
        let mut base = 0;
        for (o, p) in out.iter_mut().zip(part) {
            let overlap = if joined { 0 } else { fade.min(o.len()).min(p.len()) };
            base = o.len() - overlap;
            for (i, &x) in p[..overlap].iter().enumerate() {
                let w = (i as f32 + 0.5) / overlap as f32;
                o[base + i] = o[base + i] * (1.0 - w) + x * w;
            }
            o.extend_from_slice(&p[overlap..]);
        }
        // The next join's crossfade blends this part's last frames: they are not measured.
        if let Some(last) = measured.last_mut() {
            let last: &mut Range<usize> = last;
            last.end = last.end.min(base).max(last.start);
        }
        let excerpt_start = (base + pre).min(base + len);
        measured.push(excerpt_start..base + len);
    }
    Ok(Proxy { audio: AudioBuffer { sample_rate_hz: rate, channels: out }, measured })
}

/// How far the proxy's sample misreads what the compressor does to each of its bands, dB (the
/// compressor's power gain over the proxy's excerpts minus over the whole song), from the mix's
/// 5 ms band mean squares as the compressor sees them (`bands`, from
/// [`crate::solve::dynamics::compressor_input`], at `sample_rate_hz`): the compressor's gain is
/// simulated on every block of the song (the detector and gain law the renderer runs), so the
/// whole song's figure is known exactly and only the excerpts' is sampled.
///
/// A compressor that lifts quiet passages and lowers loud ones keeps each band's energy over the
/// song (its make-up is set so), but over ten excerpts it may not: one loud stretch more or less
/// in the sample moved the proxy's reading of a band by a decibel, and the loop corrected the EQ
/// for it. The loop takes this bias out of the proxy's reading. `None` without dynamics.
pub fn compressor_bias_db(
    bands: &[Vec<f32>],
    sample_rate_hz: u32,
    excerpts: &[Excerpt],
    dynamics: &crate::settings::DynamicsSettings,
) -> Option<[f64; 4]> {
    use crate::solve::dynamics::{gain_track_for, sum_series};
    if !dynamics.enabled || bands.len() != 4 || dynamics.bands.len() != 4 {
        return None;
    }
    let block_frames = (f64::from(sample_rate_hz) * crate::analysis::dynamics::BLOCK_S).round().max(1.0);
    let n = bands.iter().map(Vec::len).min()?;
    let in_proxy: Vec<bool> = {
        let mut mask = vec![false; n];
        for e in excerpts {
            let first = (e.start_frame as f64 / block_frames).ceil() as usize;
            let end = (((e.start_frame + e.frames) as f64 / block_frames).floor() as usize).min(n);
            mask.iter_mut().take(end).skip(first).for_each(|m| *m = true);
        }
        mask
    };
    let mut gains: Vec<Vec<f32>> = Vec::with_capacity(4);
    if dynamics.linked {
        let sum = sum_series(bands.iter().map(Vec::as_slice));
        let mut g = Vec::with_capacity(n);
        gain_track_for(&sum, &dynamics.bands[0], dynamics.feedback, &mut g);
        gains.resize(4, g);
    } else {
        for (b, band) in bands.iter().zip(&dynamics.bands) {
            let mut g = Vec::with_capacity(n);
            if band.is_neutral() {
                g.resize(n, 1.0);
            } else {
                gain_track_for(&b[..n], band, dynamics.feedback, &mut g);
            }
            gains.push(g);
        }
    }
    let mut bias = [0.0; 4];
    for ((out, b), g) in bias.iter_mut().zip(bands).zip(&gains) {
        let (mut all_in, mut all_out, mut proxy_in, mut proxy_out) = (0f64, 0f64, 0f64, 0f64);
        for ((&p, &g), &inside) in b.iter().zip(g).zip(&in_proxy) {
            let (p, q) = (f64::from(p), f64::from(p) * f64::from(g));
            all_in += p;
            all_out += q;
            if inside {
                proxy_in += p;
                proxy_out += q;
            }
        }
        if all_in > 0.0 && all_out > 0.0 && proxy_in > 0.0 && proxy_out > 0.0 {
            *out = 10.0 * (proxy_out / proxy_in).log10() - 10.0 * (all_out / all_in).log10();
        }
    }
    Some(bias)
}

/// Share of power that band `b` of a four-band LR4 split at `crossovers_hz` holds at `hz`
/// (the four shares sum to 1): how a per-band figure spreads over frequency.
pub fn band_share(hz: f64, crossovers_hz: [f64; 3], b: usize) -> f64 {
    let shares: [f64; 4] = std::array::from_fn(|i| {
        let low_pass = |fc: f64| 1.0 / (1.0 + (hz / fc).powi(4));
        let high_pass = |fc: f64| 1.0 - low_pass(fc);
        let below = if i < 3 { low_pass(crossovers_hz[i]) } else { 1.0 };
        let above = if i > 0 { high_pass(crossovers_hz[i - 1]) } else { 1.0 };
        below * above
    });
    let total: f64 = shares.iter().sum();
    if total > 0.0 {
        shares[b] / total
    } else {
        0.0
    }
}
