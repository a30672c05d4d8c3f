//! The one audio buffer type every stage shares: planar f32 samples at the file's own rate.

/// Lowest sample rate refmaster accepts, in Hz.
pub const MIN_SAMPLE_RATE_HZ: u32 = 8_000;
/// Highest sample rate refmaster accepts, in Hz.
pub const MAX_SAMPLE_RATE_HZ: u32 = 192_000;

/// Planar audio: one `Vec<f32>` per channel, all the same length, full scale = ±1.0.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioBuffer {
    /// Sample rate in Hz.
    pub sample_rate_hz: u32,
    /// One vector per channel (channel order as in the file: L, R, C, LFE, Ls, Rs for 5.1).
    pub channels: Vec<Vec<f32>>,
}

impl AudioBuffer {
    /// A silent buffer of `frames` frames.
    pub fn silent(sample_rate_hz: u32, channel_count: usize, frames: usize) -> Self {
        Self { sample_rate_hz, channels: vec![vec![0.0; frames]; channel_count] }
    }

    /// Number of frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frames() as f64 / f64::from(self.sample_rate_hz.max(1))
    }

    /// Mid = (L+R)/2 and side = (L-R)/2 of the first two channels; a mono buffer gives its one
    /// channel as mid and silence as side.
    pub fn mid_side(&self) -> (Vec<f32>, Vec<f32>) {
        match self.channels.as_slice() {
            [] => (Vec::new(), Vec::new()),
            [mono] => (mono.clone(), vec![0.0; mono.len()]),
            [l, r, ..] => {
                let mid = l.iter().zip(r).map(|(a, b)| 0.5 * (a + b)).collect();
                let side = l.iter().zip(r).map(|(a, b)| 0.5 * (a - b)).collect();
                (mid, side)
            }
        }
    }

    /// Largest absolute sample value over all channels (linear).
    pub fn sample_peak(&self) -> f32 {
        self.channels.iter().flatten().fold(0.0f32, |m, &x| m.max(x.abs()))
    }
}

/// Splits a stereo chunk into mid `(L + R) / 2` and side `(L − R) / 2`, replacing what `mid`
/// and `side` held. The one definition the analysis, the renderer and the closed loop share, so
/// that the loop measures its output exactly as the analysis measured the mix and the reference.
pub fn split_mid_side(left: &[f32], right: &[f32], mid: &mut Vec<f32>, side: &mut Vec<f32>) {
    mid.clear();
    side.clear();
    mid.extend(left.iter().zip(right).map(|(a, b)| 0.5 * (a + b)));
    side.extend(left.iter().zip(right).map(|(a, b)| 0.5 * (a - b)));
}

/// Converts a linear amplitude to dB (−inf for 0).
#[inline]
pub fn lin_to_db(x: f64) -> f64 {
    20.0 * x.log10()
}

/// Converts dB to a linear amplitude.
#[inline]
pub fn db_to_lin(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}
