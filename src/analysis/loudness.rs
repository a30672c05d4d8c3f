//! Loudness per ITU-R BS.1770-4 / EBU R128: one K-weighting pass ([`KMeter`], the coefficient
//! formulas and gating of libebur128, the reference most tools use) gives every loudness
//! figure; checked against ffmpeg's `ebur128` filter and the `ebur128` crate in the tests.

use ebur128::{EbuR128, Mode};
use serde::{Deserialize, Serialize};

use crate::audio::{lin_to_db, AudioBuffer};
use crate::dsp::biquad::{BiquadCoeffs, FusedBiquad};

/// Loudness measurements of one file. Silence gives −inf loudness, written as `null` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loudness {
    /// Integrated (programme) loudness in LUFS.
    #[serde(with = "crate::analysis::db_or_null")]
    pub integrated_lufs: f64,
    /// Loudness range (EBU Tech 3342) in LU.
    pub range_lu: f64,
    /// Highest momentary (400 ms) loudness in LUFS.
    #[serde(with = "crate::analysis::db_or_null")]
    pub max_momentary_lufs: f64,
    /// Highest short-term (3 s) loudness in LUFS.
    #[serde(with = "crate::analysis::db_or_null")]
    pub max_short_term_lufs: f64,
    /// True peak in dBTP, highest channel: refmaster's precise detector
    /// ([`crate::dsp::truepeak::TruePeakDetector`], 4× with a 48-tap interpolator cut at Nyquist),
    /// the meter the ceiling is held to; within 0.2 dB of ffmpeg's BS.1770-4 meter on music.
    #[serde(with = "crate::analysis::db_or_null")]
    pub true_peak_dbtp: f64,
    /// Sample peak in dBFS, highest channel.
    #[serde(with = "crate::analysis::db_or_null")]
    pub sample_peak_dbfs: f64,
    /// Percentiles 10/50/90/95 of short-term loudness (gated like LRA: −70 LUFS absolute,
    /// −20 LU relative), in LUFS.
    pub short_term_percentiles_lufs: [f64; 4],
    /// Peak-to-loudness ratio: true peak minus integrated loudness, in dB.
    pub plr_db: f64,
    /// Short-term loudness every second, in LUFS (floored at −70), for plots of loudness over time.
    pub short_term_series_lufs: Vec<f64>,
}

/// Lowest loudness written into series and percentiles (the BS.1770 absolute gate).
pub const ABSOLUTE_GATE_LUFS: f64 = -70.0;

/// All loudness figures of audio measured in one K-weighting pass: integrated loudness (gated
/// 400 ms blocks), momentary (400 ms) and short-term (3 s) loudness every 100 ms, their maxima,
/// LRA and percentiles, all from `k`'s 100 ms sub-blocks; `true_peak` and `sample_peak` (linear,
/// highest channel) from the caller's peak meters. The integrated figure is the `ebur128`
/// crate's (libebur128's) gating on the same filter, and ffmpeg's within its rounding
/// (`tests/loudness_vs_ffmpeg.rs`); its LRA samples short-term loudness once a second where
/// ffmpeg and EBU Tech 3342 use 100 ms, as done here.
pub fn loudness_of(k: &KMeter, true_peak: f32, sample_peak: f32) -> Loudness {
    let momentary = sliding_lufs(k, 4);
    let short_term = sliding_lufs(k, 30);
    let max_m = momentary.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let max_s = short_term.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let integrated = k.integrated_lufs();
    let range = loudness_range_lu(&short_term);
    let true_peak = lin_to_db(f64::from(true_peak));
    let sample_peak = lin_to_db(f64::from(sample_peak));
    let percentiles = short_term_percentiles(&short_term, integrated);
    let series = short_term.iter().step_by(10).map(|s| s.max(ABSOLUTE_GATE_LUFS)).collect();
    Loudness {
        integrated_lufs: integrated,
        range_lu: if range.is_finite() { range } else { 0.0 },
        max_momentary_lufs: max_m,
        max_short_term_lufs: max_s,
        true_peak_dbtp: true_peak,
        sample_peak_dbfs: sample_peak,
        short_term_percentiles_lufs: percentiles,
        plr_db: if integrated.is_finite() && true_peak.is_finite() { true_peak - integrated } else { 0.0 },
        short_term_series_lufs: series,
    }
}

/// Loudness in LUFS of every window of `blocks` sub-blocks (hop one sub-block) of what `k` saw,
/// ungated. The last window takes in the trailing partial sub-block, still divided by the full
/// window length. Audio shorter than one window gives one value, its mean over what there is.
fn sliding_lufs(k: &KMeter, blocks: usize) -> Vec<f64> {
    let hop = k.hop;
    let mut prefix = Vec::with_capacity(k.sub_blocks.len() + 2);
    prefix.push(0f64);
    let mut acc = 0f64;
    for e in k.sub_blocks.iter().copied().chain(k.partial_sub_block()) {
        acc += e;
        prefix.push(acc);
    }
    if prefix.len() <= blocks {
        return vec![energy_to_lufs(acc / k.frames.max(1) as f64)];
    }
    (blocks..prefix.len()).map(|j| energy_to_lufs((prefix[j] - prefix[j - blocks]) / (blocks * hop) as f64)).collect()
}

/// BS.1770 loudness in LUFS of a mean K-weighted energy (−inf for zero).
fn energy_to_lufs(mean_energy: f64) -> f64 {
    -0.691 + 10.0 * mean_energy.log10()
}

/// BS.1770 K-weighted 100 ms sub-block energies of audio pushed chunk by chunk (our own
/// K-weighting, [`k_weighting`]), channel weights as
/// [`channel_weights`]. Holds one f64 per 100 ms of audio, never the signal, so the mastering
/// loop can verify a rendered master without storing it.
#[derive(Debug, Clone)]
pub struct KMeter {
    /// Frames per sub-block (100 ms).
    hop: usize,
    /// Channels each pushed chunk holds.
    channel_count: usize,
    /// Filter state of each channel with a non-zero weight.
    channels: Vec<KChannel>,
    /// Frames already in the sub-block being filled (< `hop`).
    filled: usize,
    /// Frames pushed so far.
    frames: usize,
    /// Weighted energy sum (Σ weight × y², summed over channels) of each complete sub-block.
    sub_blocks: Vec<f64>,
}

/// One channel of a [`KMeter`].
#[derive(Debug, Clone)]
struct KChannel {
    /// Index of the channel in the pushed chunks.
    index: usize,
    /// BS.1770 channel weight.
    weight: f64,
    shelf: FusedBiquad,
    highpass: FusedBiquad,
    /// Σ y² of this channel in the sub-block being filled (unweighted).
    sum: f64,
}

impl KMeter {
    /// A meter for `channel_count` channels at `sample_rate_hz`.
    pub fn new(sample_rate_hz: u32, channel_count: usize) -> Self {
        let [shelf, hp] = k_weighting(sample_rate_hz);
        let channels = channel_weights(channel_count)
            .into_iter()
            .enumerate()
            .filter(|(_, w)| *w > 0.0)
            .map(|(index, weight)| KChannel {
                index,
                weight,
                shelf: FusedBiquad::new(shelf),
                highpass: FusedBiquad::new(hp),
                sum: 0.0,
            })
            .collect();
        let hop = (sample_rate_hz / 10).max(1) as usize;
        Self { hop, channel_count, channels, filled: 0, frames: 0, sub_blocks: Vec::new() }
    }

    /// Feeds one planar chunk: one slice per channel, equal lengths, any length. Sums run on
    /// sample by sample, so the sub-blocks do not depend on how the audio was cut.
    ///
    /// # Panics
    /// If `chunk` does not hold `channel_count` slices of equal length.
    pub fn push(&mut self, chunk: &[&[f32]]) {
        let len = chunk.first().map_or(0, |c| c.len());
        assert!(
            chunk.len() == self.channel_count && chunk.iter().all(|c| c.len() == len),
            "KMeter::push: one slice per channel, all of the same length"
        );
        let mut start = 0;
        while start < len {
            let end = len.min(start + self.hop - self.filled);
            match self.channels.as_mut_slice() {
                // Stereo: both channels' filters in one loop, so their two dependency chains
                // (each sample's output feeds the next) overlap; each sum is the one `add` makes.
                [a, b] => KChannel::add_pair(a, b, &chunk[a.index][start..end], &chunk[b.index][start..end]),
                channels => channels.iter_mut().for_each(|c| c.add(&chunk[c.index][start..end])),
            }
            self.filled += end - start;
            start = end;
            if self.filled == self.hop {
                self.sub_blocks.push(self.weighted_sum());
                self.channels.iter_mut().for_each(|c| c.sum = 0.0);
                self.filled = 0;
            }
        }
        self.frames += len;
    }

    /// Gated integrated loudness (LUFS, −inf for silence) of everything pushed so far: 400 ms
    /// blocks with a 100 ms hop over the complete sub-blocks (the tests hold it bit for bit to a
    /// whole-buffer computation of the same).
    pub fn integrated_lufs(&self) -> f64 {
        gated_loudness(&gating_blocks(&self.sub_blocks, self.hop))
    }

    /// The complete 100 ms sub-blocks' weighted energy sums so far (Σ over channels of the weight
    /// times Σ y², not divided by the length), for short-term series etc.
    pub fn sub_blocks(&self) -> &[f64] {
        &self.sub_blocks
    }

    /// Weighted energy sum of the incomplete sub-block at the end, None when the audio pushed
    /// so far is a whole number of sub-blocks.
    pub fn partial_sub_block(&self) -> Option<f64> {
        (self.filled > 0).then(|| self.weighted_sum())
    }

    /// Frames per sub-block (a tenth of the sample rate).
    pub fn sub_block_frames(&self) -> usize {
        self.hop
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Σ weight × Σ y² over the channels, in channel order.
    fn weighted_sum(&self) -> f64 {
        self.channels.iter().map(|c| c.sum * c.weight).sum()
    }
}

impl KChannel {
    /// K-weights `x` and adds its squares to the running sum, one sample after another.
    fn add(&mut self, x: &[f32]) {
        k_sum(&mut self.shelf, &mut self.highpass, &mut self.sum, x);
    }

    /// [`Self::add`] of two channels at once, `a` with `xa` and `b` with `xb` (equal lengths):
    /// the same operations per channel, interleaved.
    fn add_pair(a: &mut Self, b: &mut Self, xa: &[f32], xb: &[f32]) {
        k_sum_pair(a, b, xa, xb);
    }
}

crate::dsp::fma_dispatch!(
    /// [`KChannel::add`]'s loop.
    fn k_sum(shelf: &mut FusedBiquad, highpass: &mut FusedBiquad, sum: &mut f64, x: &[f32]) {
        let (mut shelf_, mut hp, mut acc) = (*shelf, *highpass, *sum);
        for &v in x {
            let y = hp.process(shelf_.process(f64::from(v)));
            acc += y * y;
        }
        (*shelf, *highpass, *sum) = (shelf_, hp, acc);
    }
);

crate::dsp::fma_dispatch!(
    /// [`KChannel::add_pair`]'s loop.
    fn k_sum_pair(a: &mut KChannel, b: &mut KChannel, xa: &[f32], xb: &[f32]) {
        let (mut shelf_a, mut hp_a, mut sum_a) = (a.shelf, a.highpass, a.sum);
        let (mut shelf_b, mut hp_b, mut sum_b) = (b.shelf, b.highpass, b.sum);
        for (&u, &v) in xa.iter().zip(xb) {
            let ya = hp_a.process(shelf_a.process(f64::from(u)));
            let yb = hp_b.process(shelf_b.process(f64::from(v)));
            sum_a += ya * ya;
            sum_b += yb * yb;
        }
        (a.shelf, a.highpass, a.sum) = (shelf_a, hp_a, sum_a);
        (b.shelf, b.highpass, b.sum) = (shelf_b, hp_b, sum_b);
    }
);

/// Mean energy of each 400 ms gating block (four sub-blocks, 100 ms hop) from sub-block sums of
/// `hop` frames each.
fn gating_blocks(sub_blocks: &[f64], hop: usize) -> Vec<f64> {
    sub_blocks.windows(4).map(|w| w.iter().sum::<f64>() / (4 * hop) as f64).collect()
}

/// Integrated loudness only, in LUFS (−inf for silence); used by the loudness loop.
pub fn integrated_lufs(audio: &AudioBuffer) -> f64 {
    let energy = k_weighted_energy(audio);
    gated_loudness(&block_energies(&energy, audio.sample_rate_hz, |_| 1.0))
}

/// The BS.1770 K-weighting filter (pre-filter shelf and RLB high-pass) for `sample_rate_hz`,
/// with the coefficient formulas libebur128 uses so any sample rate is exact.
pub fn k_weighting(sample_rate_hz: u32) -> [BiquadCoeffs; 2] {
    let fs = f64::from(sample_rate_hz);
    let f0 = 1_681.974_450_955_533;
    let g = 3.999_843_853_973_347;
    let q = 0.707_175_236_955_419_6;
    let k = (std::f64::consts::PI * f0 / fs).tan();
    let vh = 10f64.powf(g / 20.0);
    let vb = vh.powf(0.499_666_774_154_541_6);
    let a0 = 1.0 + k / q + k * k;
    let shelf = BiquadCoeffs {
        b0: (vh + vb * k / q + k * k) / a0,
        b1: 2.0 * (k * k - vh) / a0,
        b2: (vh - vb * k / q + k * k) / a0,
        a1: 2.0 * (k * k - 1.0) / a0,
        a2: (1.0 - k / q + k * k) / a0,
    };
    let f0 = 38.135_470_876_024_44;
    let q = 0.500_327_037_323_877_3;
    let k = (std::f64::consts::PI * f0 / fs).tan();
    let a0 = 1.0 + k / q + k * k;
    let highpass =
        BiquadCoeffs { b0: 1.0, b1: -2.0, b2: 1.0, a1: 2.0 * (k * k - 1.0) / a0, a2: (1.0 - k / q + k * k) / a0 };
    [shelf, highpass]
}

/// Per-sample K-weighted energy summed over channels with their BS.1770 weights, for a whole
/// buffer.
pub fn k_weighted_energy(audio: &AudioBuffer) -> Vec<f32> {
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    let mut energy = Vec::new();
    KWeightedEnergy::new(audio.sample_rate_hz, audio.channel_count()).push(&planes, &mut energy);
    energy
}

/// Per-sample K-weighted energy summed over channels with their BS.1770 weights, as a stream:
/// the filters carry their state from chunk to chunk, so chunks give what one buffer gives.
pub struct KWeightedEnergy {
    filters: Vec<(FusedBiquad, FusedBiquad)>,
    weights: Vec<f64>,
}

impl KWeightedEnergy {
    /// Filters for `channels` channels at `sample_rate_hz`.
    pub fn new(sample_rate_hz: u32, channels: usize) -> Self {
        let [shelf, hp] = k_weighting(sample_rate_hz);
        Self {
            filters: (0..channels).map(|_| (FusedBiquad::new(shelf), FusedBiquad::new(hp))).collect(),
            weights: channel_weights(channels),
        }
    }

    /// Replaces `out` with the energy of each frame of `chunk` (planar, one slice a channel).
    pub fn push(&mut self, chunk: &[&[f32]], out: &mut Vec<f32>) {
        out.clear();
        out.resize(chunk.first().map_or(0, |c| c.len()), 0.0);
        if let ([l, r], [left, right], &[wl, wr]) = (chunk, self.filters.as_mut_slice(), self.weights.as_slice()) {
            // Stereo: both channels in one loop (their filter chains overlap), each frame summed
            // in the order the loop below sums it.
            energy_pair(out, l, r, left, right, wl, wr);
            return;
        }
        for ((c, filters), &w) in chunk.iter().zip(self.filters.iter_mut()).zip(&self.weights) {
            if w == 0.0 {
                continue;
            }
            energy_add(out, c, filters, w);
        }
    }
}

crate::dsp::fma_dispatch!(
    /// Two channels' K-weighted energy per frame, weighted and summed in the order
    /// [`energy_add`] sums them.
    #[allow(clippy::too_many_arguments)]
    fn energy_pair(
        out: &mut [f32],
        l: &[f32],
        r: &[f32],
        left: &mut (FusedBiquad, FusedBiquad),
        right: &mut (FusedBiquad, FusedBiquad),
        wl: f64,
        wr: f64,
    ) {
        let ((mut la, mut lb), (mut ra, mut rb)) = (*left, *right);
        for ((o, &x), &y) in out.iter_mut().zip(l.iter()).zip(r.iter()) {
            let yl = lb.process(la.process(f64::from(x)));
            let yr = rb.process(ra.process(f64::from(y)));
            *o = (0.0 + (wl * yl * yl) as f32) + (wr * yr * yr) as f32;
        }
        (*left, *right) = ((la, lb), (ra, rb));
    }
);

crate::dsp::fma_dispatch!(
    /// Adds one channel's weighted K-weighted energy to each frame's.
    fn energy_add(out: &mut [f32], x: &[f32], filters: &mut (FusedBiquad, FusedBiquad), w: f64) {
        let (a, b) = filters;
        for (o, &v) in out.iter_mut().zip(x.iter()) {
            let y = b.process(a.process(f64::from(v)));
            *o += (w * y * y) as f32;
        }
    }
);

/// BS.1770 channel weights in the `ebur128` crate's default layout: L, R (C) weight 1,
/// surrounds 1.41, the LFE of 5.1 (fourth channel of six) and channels past the sixth unused.
pub fn channel_weights(channels: usize) -> Vec<f64> {
    match channels {
        4 => vec![1.0, 1.0, 1.41, 1.41],
        5 => vec![1.0, 1.0, 1.0, 1.41, 1.41],
        n if n >= 6 => (0..n).map(|i| [1.0, 1.0, 1.0, 0.0, 1.41, 1.41].get(i).copied().unwrap_or(0.0)).collect(),
        n => vec![1.0; n],
    }
}

/// Mean energy of the 400 ms gating blocks (100 ms hop) of a per-sample energy signal, each
/// sample weighted by `weight(i)` (the loudness loop passes the limiter's gain squared).
pub fn block_energies(energy: &[f32], sample_rate_hz: u32, weight: impl Fn(usize) -> f32) -> Vec<f64> {
    let hop = (sample_rate_hz / 10).max(1) as usize;
    let sub: Vec<f64> = energy
        .chunks(hop)
        .enumerate()
        .filter(|(_, c)| c.len() == hop)
        .map(|(j, c)| c.iter().enumerate().map(|(i, &e)| f64::from(e * weight(j * hop + i))).sum::<f64>())
        .collect();
    gating_blocks(&sub, hop)
}

/// BS.1770-4 gated loudness of block energies: absolute gate −70 LUFS, relative gate −10 LU.
pub fn gated_loudness(blocks: &[f64]) -> f64 {
    let lufs = energy_to_lufs;
    let above_abs: Vec<f64> = blocks.iter().copied().filter(|&z| z > 0.0 && lufs(z) > ABSOLUTE_GATE_LUFS).collect();
    if above_abs.is_empty() {
        return f64::NEG_INFINITY;
    }
    let relative = lufs(above_abs.iter().sum::<f64>() / above_abs.len() as f64) - 10.0;
    let gated: Vec<f64> = above_abs.into_iter().filter(|&z| lufs(z) > relative).collect();
    if gated.is_empty() {
        return f64::NEG_INFINITY;
    }
    lufs(gated.iter().sum::<f64>() / gated.len() as f64)
}

/// True peak in dBTP as BS.1770-4 measures it (the `ebur128` crate's oversampled meter).
pub fn true_peak_dbtp(audio: &AudioBuffer) -> f64 {
    let Ok(mut meter) = EbuR128::new(audio.channel_count().max(1) as u32, audio.sample_rate_hz, Mode::TRUE_PEAK) else {
        return f64::NEG_INFINITY;
    };
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    if meter.add_frames_planar_f32(&planes).is_err() {
        return f64::NEG_INFINITY;
    }
    let peak = (0..audio.channel_count() as u32).map(|c| meter.true_peak(c).unwrap_or(0.0)).fold(0.0, f64::max);
    lin_to_db(peak)
}

/// Loudness range (EBU Tech 3342) from short-term loudness values taken every 100 ms: values
/// above −70 LUFS and within 20 LU of their power mean, 95th minus 10th percentile, in LU.
/// (The `ebur128` crate takes one short-term value per second; ffmpeg and Tech 3342's own
/// examples use the 100 ms hop, which moves LRA by up to 0.8 LU on real music.)
pub fn loudness_range_lu(short_term_lufs: &[f64]) -> f64 {
    let abs: Vec<f64> = short_term_lufs.iter().copied().filter(|v| v.is_finite() && *v > ABSOLUTE_GATE_LUFS).collect();
    if abs.is_empty() {
        return 0.0;
    }
    let mean_energy = abs.iter().map(|l| 10f64.powf(l / 10.0)).sum::<f64>() / abs.len() as f64;
    let gate = 10.0 * mean_energy.log10() - 20.0;
    let mut gated: Vec<f64> = abs.into_iter().filter(|v| *v >= gate).collect();
    if gated.len() < 2 {
        return 0.0;
    }
    gated.sort_by(f64::total_cmp);
    percentile_sorted(&gated, 0.95) - percentile_sorted(&gated, 0.10)
}

pub(crate) fn short_term_percentiles(values: &[f64], integrated: f64) -> [f64; 4] {
    let gate = if integrated.is_finite() { (integrated - 20.0).max(ABSOLUTE_GATE_LUFS) } else { ABSOLUTE_GATE_LUFS };
    let mut gated: Vec<f64> = values.iter().copied().filter(|v| v.is_finite() && *v >= gate).collect();
    if gated.is_empty() {
        return [ABSOLUTE_GATE_LUFS; 4];
    }
    gated.sort_by(f64::total_cmp);
    [0.10, 0.50, 0.90, 0.95].map(|q| percentile_sorted(&gated, q))
}

/// Linear-interpolated percentile `q` (0..1) of sorted values.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let frac = pos - i as f64;
    let next = sorted[(i + 1).min(sorted.len() - 1)];
    sorted[i] + (next - sorted[i]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::test_audio::music;

    /// Runs `per_channel(samples, weight)` for every channel with a non-zero BS.1770 weight, one
    /// thread each (stereo uses both cores), and adds the results element by element.
    fn sum_weighted_channels<T, F>(channels: &[&[f32]], weights: &[f64], per_channel: F) -> Vec<T>
    where
        T: Copy + Send + std::ops::AddAssign,
        F: Fn(&[f32], f64) -> Vec<T> + Sync,
    {
        let results: Vec<Vec<T>> = std::thread::scope(|s| {
            let f = &per_channel;
            let jobs: Vec<_> = channels
                .iter()
                .zip(weights)
                .filter(|(_, w)| **w > 0.0)
                .map(|(ch, &w)| s.spawn(move || f(ch, w)))
                .collect();
            jobs.into_iter().filter_map(|j| j.join().ok()).collect()
        });
        let mut iter = results.into_iter();
        let mut total = iter.next().unwrap_or_default();
        for other in iter {
            for (t, o) in total.iter_mut().zip(other) {
                *t += o;
            }
        }
        total
    }

    /// Integrated loudness (LUFS) of `channels` multiplied sample by sample by `scale × gain[i]`,
    /// without materialising the product, over the whole buffer, one thread a channel: the
    /// whole-buffer form of [`KMeter`]'s loudness, kept here as the specification the meter is
    /// held to (the product measures on the stream and no longer calls it).
    fn integrated_lufs_scaled(channels: &[&[f32]], sample_rate_hz: u32, scale: f32, gain: &[f32]) -> f64 {
        let [shelf, hp] = k_weighting(sample_rate_hz);
        let weights = channel_weights(channels.len());
        let hop = (sample_rate_hz / 10).max(1) as usize;
        let sub_blocks = |ch: &[f32], w: f64| -> Vec<f64> {
            let (mut a, mut b) = (FusedBiquad::new(shelf), FusedBiquad::new(hp));
            ch.chunks(hop)
                .zip(gain.chunks(hop))
                .filter(|(c, _)| c.len() == hop)
                .map(|(c, g)| {
                    c.iter()
                        .zip(g)
                        .map(|(&x, &g)| {
                            let y = b.process(a.process(f64::from(x * scale * g)));
                            y * y
                        })
                        .sum::<f64>()
                        * w
                })
                .collect()
        };
        let sums = sum_weighted_channels(channels, &weights, sub_blocks);
        gated_loudness(&gating_blocks(&sums, hop))
    }

    /// `audio` through a [`KMeter`] in chunks of `chunk` frames.
    fn metered(audio: &AudioBuffer, chunk: usize) -> KMeter {
        let mut k = KMeter::new(audio.sample_rate_hz, audio.channel_count());
        let frames = audio.frames();
        for start in (0..frames).step_by(chunk) {
            let planes: Vec<&[f32]> = audio.channels.iter().map(|c| &c[start..frames.min(start + chunk)]).collect();
            k.push(&planes);
        }
        k
    }

    #[test]
    fn k_meter_gives_integrated_lufs_scaled_bit_for_bit_whatever_the_chunking() {
        // Odd lengths leave a partial sub-block, which neither counts.
        for (rate, channels, seconds) in [(48_000, 2, 7.23), (44_100, 1, 3.01), (96_000, 6, 2.5), (22_050, 2, 0.45)] {
            let audio = music(rate, channels, seconds, 7);
            let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
            let ones = vec![1f32; audio.frames()];
            let expected = integrated_lufs_scaled(&planes, rate, 1.0, &ones);
            assert!(expected.is_finite());
            let whole = metered(&audio, audio.frames());
            assert_eq!(whole.integrated_lufs(), expected, "{rate} Hz, {channels} channels");
            assert_eq!(whole.sub_blocks().len(), audio.frames() / whole.sub_block_frames());
            assert_eq!(whole.frames(), audio.frames());
            for chunk in [1, 777, 4800, 65_536] {
                let k = metered(&audio, chunk);
                assert_eq!(k.sub_blocks(), whole.sub_blocks(), "chunks of {chunk}");
                assert_eq!(k.partial_sub_block(), whole.partial_sub_block(), "chunks of {chunk}");
            }
        }
    }

    #[test]
    fn k_meter_keeps_the_partial_sub_block_apart() {
        let audio = music(48_000, 2, 0.25, 8);
        let k = metered(&audio, 1000);
        assert_eq!(k.sub_blocks().len(), 2);
        assert!(k.partial_sub_block().is_some_and(|e| e > 0.0));
        // Under 400 ms: no gating block, no loudness.
        assert_eq!(k.integrated_lufs(), f64::NEG_INFINITY);
        let exact = metered(&music(48_000, 2, 0.2, 8), 1000);
        assert_eq!(exact.partial_sub_block(), None);
        let silent = metered(&AudioBuffer::silent(48_000, 2, 48_000), 4096);
        assert_eq!(silent.integrated_lufs(), f64::NEG_INFINITY);
        assert!(silent.sub_blocks().iter().all(|&e| e == 0.0));
    }
}
