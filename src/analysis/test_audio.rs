//! Deterministic test audio for the analysis tests.

use crate::audio::AudioBuffer;

/// Deterministic xorshift noise in −1..1.
pub struct Noise(u64);
impl Noise {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Music-like test audio: low-passed noise with a beat every 0.5 s and a level that changes
/// from section to section, the channels partly correlated.
pub fn music(rate: u32, channels: usize, seconds: f64, seed: u64) -> AudioBuffer {
    let frames = (f64::from(rate) * seconds).round() as usize;
    let mut noise = Noise(seed);
    let (mut lp_common, mut lp) = (0f32, vec![0f32; channels]);
    let mut out = vec![Vec::with_capacity(frames); channels];
    for i in 0..frames {
        let t = i as f64 / f64::from(rate);
        let section = [0.5, 0.15, 0.8, 0.3][(t / 4.0) as usize % 4];
        let beat = (-(t % 0.5) * 12.0).exp() * 0.7 + 0.3;
        let gain = (section * beat) as f32;
        lp_common += 0.2 * (noise.next() - lp_common);
        for (c, ch) in out.iter_mut().enumerate() {
            lp[c] += 0.5 * (noise.next() - lp[c]);
            ch.push(gain * (0.7 * lp_common + 0.3 * lp[c] + 0.05 * noise.next()));
        }
    }
    AudioBuffer { sample_rate_hz: rate, channels: out }
}
