//! The proxy: a short stand-in for a long mix on which the closed loop's intermediate passes run.
//!
//! The loop renders the chain, measures what compression, saturation and limiting did to the
//! spectrum and how hard the limiter had to work, and corrects the settings. Those are
//! *properties of the chain on this kind of music*, not of every second of it, so they can be
//! read off a sample of the song: a few short excerpts chosen so that their short-term loudness
//! spreads like the song's (one at each of evenly spaced quantiles of the song's loudness, a
//! stratified sample). The excerpts are joined in song order with short crossfades.
//!
//! Only the last pass, the one that writes the master, renders the whole song; the proxy's
//! readings are checked against it in `tests/proxy.rs`.

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

/// Reads the excerpts from `source` (one streaming read) and joins them in order, each join a
/// short linear crossfade, into the proxy.
pub fn read_proxy(source: &dyn FrameSource, excerpts: &[Excerpt]) -> Result<AudioBuffer> {
    let (rate, channels) = (source.sample_rate_hz(), source.channel_count());
    let total: usize = excerpts.iter().map(|e| e.frames).sum();
    let mut parts: Vec<Vec<Vec<f32>>> = excerpts.iter().map(|e| vec![Vec::with_capacity(e.frames); channels]).collect();
    let mut at = 0usize;
    source.stream(&mut |chunk| {
        let n = chunk.first().map_or(0, |c| c.len());
        for (e, part) in excerpts.iter().zip(parts.iter_mut()) {
            let (s, t) = (e.start_frame.max(at), (e.start_frame + e.frames).min(at + n));
            if s < t {
                for (p, c) in part.iter_mut().zip(chunk) {
                    p.extend_from_slice(&c[s - at..t - at]);
                }
            }
        }
        at += n;
        Ok(())
    })?;
    let fade = ((CROSSFADE_S * f64::from(rate)) as usize).max(1);
    let mut out: Vec<Vec<f32>> = vec![Vec::with_capacity(total); channels];
    for part in parts {
        for (o, p) in out.iter_mut().zip(part) {
            let overlap = fade.min(o.len()).min(p.len());
            let base = o.len() - overlap;
            for (i, &x) in p[..overlap].iter().enumerate() {
                let w = (i as f32 + 0.5) / overlap as f32;
                o[base + i] = o[base + i] * (1.0 - w) + x * w;
            }
            o.extend_from_slice(&p[overlap..]);
        }
    }
    Ok(AudioBuffer { sample_rate_hz: rate, channels: out })
}
