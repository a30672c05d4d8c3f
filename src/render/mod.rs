//! Stage 4: render [`Settings`] onto the mix at its own sample rate: mid/side EQ (with the width
//! gains folded into the side filter), multiband compression, saturation, drive and the true-peak
//! limiter.
//! Dither happens on the way out ([`crate::encode`]). Same input and settings, same bits.

pub mod chain;
pub mod dynamics;
pub mod eq;
pub mod limiter;
pub mod saturation;
pub mod stream;

use crate::audio::AudioBuffer;
use crate::error::{Error, Result};
use crate::settings::Settings;
pub use limiter::LimiterStats;

/// A rendered master and what the limiter did to it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The master, floating point, before dither.
    pub audio: AudioBuffer,
    /// Limiter gain reduction.
    pub limiter: LimiterStats,
}

/// Refuses what the renderer cannot master: more than two channels.
pub fn check_channels(mix: &AudioBuffer) -> Result<()> {
    check_channel_count(mix.channel_count())
}

/// [`check_channels`] for a channel count.
pub fn check_channel_count(channels: usize) -> Result<()> {
    match channels {
        1 | 2 => Ok(()),
        n => Err(Error::Unsupported(format!(
            "refmaster masters mono or stereo; this mix has {n} channels (downmix it to stereo first)"
        ))),
    }
}

/// Everything before the saturator and limiter: EQ, width and compression, back in L/R (or mono),
/// in memory (for tests and benchmarks; the master is rendered as a stream).
pub fn render_pre_limiter(mix: &AudioBuffer, s: &Settings) -> Result<AudioBuffer> {
    check_channels(mix)?;
    let mut pre = AudioBuffer { sample_rate_hz: mix.sample_rate_hz, channels: vec![Vec::new(); mix.channel_count()] };
    stream::render_pre(mix, s, None, &mut |p, _| {
        for (c, x) in pre.channels.iter_mut().zip(p) {
            c.extend_from_slice(x);
        }
        Ok(())
    })?;
    Ok(pre)
}

/// The whole chain, in memory ([`stream::render_stream`] collected). Deterministic: the same mix
/// and settings give the same samples, and the same samples the mastering loop wrote.
pub fn render(mix: &AudioBuffer, s: &Settings) -> Result<Rendered> {
    check_channels(mix)?;
    let mut audio = AudioBuffer {
        sample_rate_hz: mix.sample_rate_hz,
        channels: vec![Vec::with_capacity(mix.frames()); mix.channel_count()],
    };
    let limiter = stream::render_stream(mix, s, &mut |_, chunk| {
        for (c, x) in audio.channels.iter_mut().zip(chunk) {
            c.extend_from_slice(x);
        }
        Ok(())
    })?;
    Ok(Rendered { audio, limiter })
}
