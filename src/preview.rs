//! `--preview`: a loudness-matched before/after pair for honest listening. Louder sounds better,
//! so a master only proves itself against its mix at the same loudness.
//!
//! Both excerpts cover the same time range: the loudest 30 seconds of the master (the window
//! with the highest loudness, i.e. the short-term loudness measure widened to 30 s, searched in
//! 100 ms steps), or the whole file when it is shorter. Each gets 50 ms raised-cosine fades.
//! Then the two are matched in integrated loudness (BS.1770, as ffmpeg's `ebur128` measures it):
//! the quieter one is raised as far as its true peak stays under the ceiling, and the louder one
//! is lowered by the rest. Nothing is ever raised past the ceiling, so neither file clips.

use std::path::{Path, PathBuf};

use crate::analysis::loudness::{integrated_lufs, k_weighted_energy, true_peak_dbtp};
use crate::audio::{db_to_lin, AudioBuffer};

/// Length of the excerpts, seconds.
pub const PREVIEW_SECONDS: f64 = 30.0;
/// Fade in and out of the excerpts, seconds.
pub const FADE_SECONDS: f64 = 0.05;

/// A loudness-matched pair of excerpts.
#[derive(Debug, Clone)]
pub struct Previews {
    /// The mix excerpt, gain applied.
    pub mix: AudioBuffer,
    /// The master excerpt, gain applied.
    pub master: AudioBuffer,
    /// Start of the excerpt in the files, seconds.
    pub start_s: f64,
    /// Length of the excerpt, seconds.
    pub duration_s: f64,
    /// Gain applied to the mix excerpt, dB.
    pub mix_gain_db: f64,
    /// Gain applied to the master excerpt, dB.
    pub master_gain_db: f64,
    /// Integrated loudness both excerpts measure, LUFS.
    pub loudness_lufs: f64,
}

/// `OUT.preview-mix.wav` and `OUT.preview-master.wav` beside `out` (OUT is its stem).
pub fn preview_paths(out: &Path) -> (PathBuf, PathBuf) {
    let stem = out.file_stem().map_or_else(|| "master".into(), |s| s.to_string_lossy().into_owned());
    (out.with_file_name(format!("{stem}.preview-mix.wav")), out.with_file_name(format!("{stem}.preview-master.wav")))
}

/// The loudest window of `seconds` in `audio`, as (first frame, frame count), in 100 ms steps;
/// the whole buffer when it is shorter. Ties go to the earliest window.
pub fn loudest_window(audio: &AudioBuffer, seconds: f64) -> (usize, usize) {
    let hop = (audio.sample_rate_hz.max(1) / 10).max(1) as usize;
    let energy = k_weighted_energy(audio);
    let blocks: Vec<f64> = energy.chunks(hop).map(|c| c.iter().map(|&e| f64::from(e)).sum::<f64>()).collect();
    loudest_window_of(&blocks, audio.sample_rate_hz, audio.frames(), seconds)
}

/// [`loudest_window`] of a signal of `frames` frames at `rate` given its K-weighted energy summed
/// per 100 ms block (`block_energy`, from the first frame; what the loop's loudness meter keeps).
pub fn loudest_window_of(block_energy: &[f64], rate: u32, frames: usize, seconds: f64) -> (usize, usize) {
    let hop = (rate.max(1) / 10).max(1) as usize;
    let len = ((seconds * f64::from(rate.max(1))).round() as usize).min(frames);
    if len >= frames {
        return (0, frames);
    }
    let mut prefix = Vec::with_capacity(block_energy.len() + 1);
    prefix.push(0f64);
    for e in block_energy {
        prefix.push(prefix[prefix.len() - 1] + e);
    }
    let blocks = len / hop;
    let mut best = (0usize, f64::NEG_INFINITY);
    let mut b = 0;
    while b * hop + len <= frames && b + blocks < prefix.len() {
        let e = prefix[b + blocks] - prefix[b];
        if e > best.1 {
            best = (b, e);
        }
        b += 1;
    }
    (best.0 * hop, len)
}

fn excerpt(audio: &AudioBuffer, start: usize, len: usize) -> AudioBuffer {
    let channels = audio
        .channels
        .iter()
        .map(|c| {
            let end = (start + len).min(c.len());
            c.get(start..end).map(<[f32]>::to_vec).unwrap_or_default()
        })
        .collect();
    AudioBuffer { sample_rate_hz: audio.sample_rate_hz, channels }
}

/// Raised-cosine fades of `seconds` at both ends, in place.
fn fade(x: &mut [f32], rate: u32, seconds: f64) {
    let n = ((seconds * f64::from(rate)) as usize).min(x.len() / 2);
    for i in 0..n {
        let g = (0.5 - 0.5 * (std::f64::consts::PI * (i as f64 + 0.5) / n as f64).cos()) as f32;
        x[i] *= g;
        let j = x.len() - 1 - i;
        x[j] *= g;
    }
}

fn apply_gain(a: &mut AudioBuffer, gain_db: f64) {
    if gain_db == 0.0 {
        return;
    }
    let g = db_to_lin(gain_db) as f32;
    a.channels.iter_mut().flatten().for_each(|x| *x *= g);
}

/// Cuts the loudness-matched pair from `mix` and `master` (same rate and length, as
/// [`crate::master::master`] returns them). `ceiling_dbtp` is the highest true peak a raised
/// excerpt may reach.
pub fn previews(mix: &AudioBuffer, master: &AudioBuffer, ceiling_dbtp: f64) -> Previews {
    let frames = mix.frames().min(master.frames());
    let mut trimmed = master.clone();
    trimmed.channels.iter_mut().for_each(|c| c.truncate(frames));
    let (start, len) = loudest_window(&trimmed, PREVIEW_SECONDS);
    previews_of(excerpt(mix, start, len), excerpt(&trimmed, start, len), start, ceiling_dbtp)
}

/// The loudness-matched pair from excerpts of the mix and the master cut at the same place
/// (`start`, frames into the song; the loudest stretch of the master, as
/// [`crate::master::WriteInfo::loudest_window`] gives it): faded in and out, the quieter one
/// raised as far as `ceiling_dbtp` allows and the louder one lowered for the rest.
pub fn previews_of(mix: AudioBuffer, master: AudioBuffer, start: usize, ceiling_dbtp: f64) -> Previews {
    let rate = master.sample_rate_hz.max(1);
    let len = master.frames();
    let (mut mix_ex, mut master_ex) = (mix, master);
    for x in mix_ex.channels.iter_mut().chain(master_ex.channels.iter_mut()) {
        fade(x, rate, FADE_SECONDS);
    }
    let (mut g_mix, mut g_master) = (0.0, 0.0);
    let l_mix = integrated_lufs(&mix_ex);
    let l_master = integrated_lufs(&master_ex);
    if l_mix.is_finite() && l_master.is_finite() {
        let diff = l_master - l_mix;
        let mix_quieter = diff > 0.0;
        let quieter = if mix_quieter { &mix_ex } else { &master_ex };
        let tp = true_peak_dbtp(quieter);
        let headroom = if tp.is_finite() { (ceiling_dbtp - tp).max(0.0) } else { 0.0 };
        let up = diff.abs().min(headroom);
        let down = diff.abs() - up;
        // `0.0 - x` rather than `-x`: no "-0.0" in what is printed.
        if mix_quieter {
            (g_mix, g_master) = (up, 0.0 - down);
        } else {
            (g_mix, g_master) = (0.0 - down, up);
        }
        apply_gain(&mut mix_ex, g_mix);
        apply_gain(&mut master_ex, g_master);
        // Gain moves gated loudness one for one unless blocks cross the absolute gate; check
        // and take up any residue by lowering the louder one.
        let residue = integrated_lufs(&master_ex) - integrated_lufs(&mix_ex);
        if residue.is_finite() && residue.abs() > 0.01 {
            if residue > 0.0 {
                apply_gain(&mut master_ex, -residue);
                g_master -= residue;
            } else {
                apply_gain(&mut mix_ex, residue);
                g_mix += residue;
            }
        }
    }
    let loudness = integrated_lufs(&master_ex);
    Previews {
        mix: mix_ex,
        master: master_ex,
        start_s: start as f64 / f64::from(rate),
        duration_s: len as f64 / f64::from(rate),
        mix_gain_db: g_mix,
        master_gain_db: g_master,
        loudness_lufs: loudness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, seconds: f64, level: impl Fn(f64) -> f64) -> AudioBuffer {
        let n = (seconds * f64::from(rate)) as usize;
        let ch: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                (level(t) * (2.0 * std::f64::consts::PI * 997.0 * t).sin()) as f32
            })
            .collect();
        AudioBuffer { sample_rate_hz: rate, channels: vec![ch.clone(), ch] }
    }

    #[test]
    fn the_loudest_window_is_found_and_short_files_are_taken_whole() {
        let rate = 8000;
        let a = tone(rate, 90.0, |t| if (40.0..70.0).contains(&t) { 0.5 } else { 0.05 });
        let (start, len) = loudest_window(&a, 30.0);
        assert_eq!(len, 30 * rate as usize);
        assert!((start as f64 / f64::from(rate) - 40.0).abs() <= 0.1, "start {start}");
        let short = tone(rate, 12.0, |_| 0.3);
        assert_eq!(loudest_window(&short, 30.0), (0, short.frames()));
    }

    #[test]
    fn previews_measure_the_same_loudness_and_the_quiet_one_is_not_raised_over_the_ceiling() {
        let rate = 8000;
        let mix = tone(rate, 40.0, |_| 0.9);
        let master = tone(rate, 40.0, |_| 0.3);
        let p = previews(&mix, &master, -1.0);
        let (a, b) = (integrated_lufs(&p.mix), integrated_lufs(&p.master));
        assert!((a - b).abs() < 0.02, "{a} vs {b}");
        assert!(true_peak_dbtp(&p.master) <= -0.99, "raised over the ceiling");
        assert!(p.mix_gain_db < 0.0 && p.master_gain_db > 0.0);
        assert!((p.duration_s - 30.0).abs() < 1e-9);
    }
}
