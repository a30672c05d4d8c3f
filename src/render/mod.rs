//! Stage 4: render [`Settings`] onto the mix at its own sample rate: mid/side EQ (with the width
//! gains folded into the side filter), multiband compression, saturation, drive and the true-peak
//! limiter.
//! Dither happens on the way out ([`crate::encode`]). Same input and settings, same bits.

pub mod dynamics;
pub mod eq;
pub mod limiter;
pub mod saturation;

use crate::audio::AudioBuffer;
use crate::dsp::truepeak::peak_envelope;
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
    match mix.channel_count() {
        1 | 2 => Ok(()),
        n => Err(Error::Unsupported(format!(
            "refmaster masters mono or stereo; this mix has {n} channels (downmix it to stereo first)"
        ))),
    }
}

/// Everything before the limiter: EQ, width and compression, back in L/R (or mono).
pub fn render_pre_limiter(mix: &AudioBuffer, s: &Settings) -> Result<AudioBuffer> {
    check_channels(mix)?;
    let rate = mix.sample_rate_hz;
    let (mut mid, mut side) = mix.mid_side();
    let stereo = mix.channel_count() == 2;
    let (new_mid, new_side) = std::thread::scope(|scope| {
        let side_in = &side;
        let side_job = stereo
            .then(|| scope.spawn(move || eq::apply_curve(side_in, rate, |f| eq::side_curve_db(&s.eq, &s.width, f))));
        let m = eq::apply_curve(&mid, rate, |f| eq::mid_curve_db(&s.eq, f));
        let sd = side_job.and_then(|j| j.join().ok().flatten());
        (m, sd)
    });
    if let Some(m) = new_mid {
        mid = m;
    }
    if let Some(sd) = new_side {
        side = sd;
    }
    if !stereo {
        side.clear();
    }
    dynamics::compress(&mut mid, &mut side, rate, &s.dynamics);
    let channels = if stereo {
        let left = mid.iter().zip(&side).map(|(m, s)| m + s).collect();
        let right = mid.iter().zip(&side).map(|(m, s)| m - s).collect();
        vec![left, right]
    } else {
        vec![mid]
    };
    Ok(AudioBuffer { sample_rate_hz: rate, channels })
}

/// The whole chain. Deterministic: the same mix and settings give the same samples.
pub fn render(mix: &AudioBuffer, s: &Settings) -> Result<Rendered> {
    let mut pre = render_pre_limiter(mix, s)?;
    saturation::saturate(&mut pre, &s.saturation, s.limiter.ceiling_dbtp);
    let planes: Vec<&[f32]> = pre.channels.iter().map(Vec::as_slice).collect();
    let env = peak_envelope(&planes);
    let mut audio = pre;
    let stats = limiter::limit(&mut audio, &env, &s.limiter);
    Ok(Rendered { audio, limiter: stats })
}
