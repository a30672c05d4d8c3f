//! Dynamics per frequency band: short-term crest factor and level spread.
//!
//! The mid signal is split by the same LR4 crossover the multiband compressor uses, and each band
//! is reduced to an envelope of 5 ms blocks (peak and mean square). Every dynamics figure is then
//! a small pure function of those envelopes, so the solver can simulate a compressor on the mix's
//! own envelopes and measure the result with exactly the same yardstick.

use serde::{Deserialize, Serialize};

use crate::analysis::loudness::percentile_sorted;
use crate::dsp::crossover::{crossovers_for_rate, Crossover4};

/// Envelope block length in seconds.
pub const BLOCK_S: f64 = 0.005;
/// Blocks per crest-factor window (100 ms).
pub const CREST_WINDOW_BLOCKS: usize = 20;
/// Blocks per level-spread window (3 s, the EBU short-term window).
pub const SPREAD_WINDOW_BLOCKS: usize = 600;

/// Dynamics of one band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandDynamics {
    /// Lower band edge in Hz (0 for the lowest band).
    pub low_hz: f64,
    /// Upper band edge in Hz (Nyquist for the highest band).
    pub high_hz: f64,
    /// Gated RMS level in dBFS (a full-scale sine reads −3.01).
    pub rms_dbfs: f64,
    /// Mean crest factor (peak over RMS) of loud 100 ms windows, in dB. Compression and limiting
    /// lower it; dense masters read 8–12 dB, open mixes 14–20 dB.
    pub crest_db: f64,
    /// Spread of 3 s levels (95th minus 10th percentile, gated like LRA), in dB.
    pub spread_db: f64,
}

/// 5 ms envelope of one band.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BandEnvelope {
    /// Largest |x| in each block (linear).
    pub peak: Vec<f32>,
    /// Mean square of each block (linear power).
    pub mean_square: Vec<f32>,
}

/// Envelopes of the four dynamics bands of one signal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BandEnvelopes {
    /// Band edges in Hz: [0, f1, f2, f3, nyquist].
    pub edges_hz: [f64; 5],
    /// One envelope per band, low to high.
    pub bands: Vec<BandEnvelope>,
}

/// Splits `mid` into bands and reduces each to its 5 ms envelope.
pub fn envelopes(mid: &[f32], sample_rate_hz: u32, crossovers_hz: [f64; 3]) -> BandEnvelopes {
    let mut follower = EnvelopeFollower::new(sample_rate_hz, crossovers_hz);
    follower.push(mid);
    follower.finish()
}

/// [`envelopes`] of a signal pushed chunk by chunk: the crossover's state and the block being
/// filled carry over between chunks, so the envelopes do not depend on how the signal was cut.
#[derive(Debug, Clone)]
pub struct EnvelopeFollower {
    crossover: Crossover4,
    /// Frames per envelope block (5 ms).
    block: usize,
    /// Frames already in the block being filled (< `block`).
    filled: usize,
    /// Largest |x| of each band in the block being filled.
    peak: [f64; 4],
    /// Σ x² of each band in the block being filled.
    energy: [f64; 4],
    env: BandEnvelopes,
}

impl EnvelopeFollower {
    /// A follower splitting at `crossovers_hz` (see [`crossovers_for_rate`]) at `sample_rate_hz`.
    pub fn new(sample_rate_hz: u32, crossovers_hz: [f64; 3]) -> Self {
        let [f1, f2, f3] = crossovers_for_rate(crossovers_hz, sample_rate_hz);
        Self {
            crossover: Crossover4::new(crossovers_hz, sample_rate_hz),
            block: ((f64::from(sample_rate_hz) * BLOCK_S).round() as usize).max(1),
            filled: 0,
            peak: [0.0; 4],
            energy: [0.0; 4],
            env: BandEnvelopes {
                edges_hz: [0.0, f1, f2, f3, f64::from(sample_rate_hz) / 2.0],
                bands: vec![BandEnvelope::default(); 4],
            },
        }
    }

    /// Feeds the next samples of the signal (any number).
    pub fn push(&mut self, signal: &[f32]) {
        let mut rest = signal;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rest.len().min(self.block - self.filled));
            let (mut peak, mut energy) = (self.peak, self.energy);
            self.crossover.split_each(now, |_, b| {
                for i in 0..4 {
                    peak[i] = peak[i].max(b[i].abs());
                    energy[i] += b[i] * b[i];
                }
            });
            (self.peak, self.energy) = (peak, energy);
            self.filled += now.len();
            if self.filled == self.block {
                self.close_block();
            }
            rest = later;
        }
    }

    /// The envelopes of everything pushed; a partial last block is averaged over its own length.
    pub fn finish(mut self) -> BandEnvelopes {
        if self.filled > 0 {
            self.close_block();
        }
        self.env
    }

    fn close_block(&mut self) {
        for (i, band) in self.env.bands.iter_mut().enumerate() {
            band.peak.push(self.peak[i] as f32);
            band.mean_square.push((self.energy[i] / self.filled as f64) as f32);
        }
        (self.peak, self.energy, self.filled) = ([0.0; 4], [0.0; 4], 0);
    }
}

/// Dynamics figures of every band of `env`.
pub fn band_dynamics(env: &BandEnvelopes) -> Vec<BandDynamics> {
    env.bands
        .iter()
        .enumerate()
        .map(|(i, band)| {
            let (rms_dbfs, crest_db) = crest(&band.peak, &band.mean_square);
            BandDynamics {
                low_hz: env.edges_hz[i],
                high_hz: env.edges_hz[i + 1],
                rms_dbfs,
                crest_db,
                spread_db: spread(&band.mean_square),
            }
        })
        .collect()
}

/// Gated RMS (dBFS) and mean crest factor (dB) of 100 ms windows within 30 dB of the loudest.
pub fn crest(peak: &[f32], mean_square: &[f32]) -> (f64, f64) {
    let windows: Vec<(f64, f64)> = peak
        .chunks(CREST_WINDOW_BLOCKS)
        .zip(mean_square.chunks(CREST_WINDOW_BLOCKS))
        .map(|(p, m)| {
            let pk = p.iter().fold(0f32, |a, &b| a.max(b));
            let ms = m.iter().map(|&v| f64::from(v)).sum::<f64>() / m.len() as f64;
            (f64::from(pk), ms)
        })
        .collect();
    let loudest = windows.iter().map(|w| w.1).fold(0.0, f64::max);
    if loudest <= 1e-12 {
        return (-150.0, 0.0);
    }
    let gate = (loudest * 1e-3).max(1e-8); // −30 dB relative, −80 dBFS absolute
    let (mut sum_ms, mut sum_crest, mut n) = (0.0, 0.0, 0usize);
    for &(pk, ms) in &windows {
        if ms >= gate && pk > 0.0 {
            sum_ms += ms;
            sum_crest += 20.0 * pk.log10() - 10.0 * ms.log10();
            n += 1;
        }
    }
    if n == 0 {
        return (-150.0, 0.0);
    }
    (10.0 * (sum_ms / n as f64).log10(), sum_crest / n as f64)
}

/// Spread of 3 s window levels in dB: 95th minus 10th percentile of windows (hop 100 ms) above
/// −80 dBFS and within 20 dB of their energy mean (the LRA gate).
pub fn spread(mean_square: &[f32]) -> f64 {
    let n = mean_square.len();
    if n == 0 {
        return 0.0;
    }
    let win = SPREAD_WINDOW_BLOCKS.min(n);
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0f64);
    let mut acc = 0f64;
    for &m in mean_square {
        acc += f64::from(m);
        prefix.push(acc);
    }
    let levels: Vec<f64> = (0..=n - win)
        .step_by(CREST_WINDOW_BLOCKS)
        .map(|s| (prefix[s + win] - prefix[s]) / win as f64)
        .filter(|&ms| ms > 1e-8)
        .collect();
    if levels.is_empty() {
        return 0.0;
    }
    let mean = levels.iter().sum::<f64>() / levels.len() as f64;
    let gate = mean * 0.01;
    let mut db: Vec<f64> = levels.iter().filter(|&&m| m >= gate).map(|m| 10.0 * m.log10()).collect();
    db.sort_by(f64::total_cmp);
    percentile_sorted(&db, 0.95) - percentile_sorted(&db, 0.10)
}

/// Window lengths of the level-motion statistics, in envelope blocks: 50 ms (the swing of single
/// notes and hits), 400 ms (EBU momentary) and 3 s (EBU short-term, what LRA is made of).
pub const MOTION_SCALES_BLOCKS: [usize; 3] = [10, 80, SPREAD_WINDOW_BLOCKS];
/// Hop between windows of each scale, in blocks.
const MOTION_HOPS_BLOCKS: [usize; 3] = [10, 20, 20];
/// Percentiles of the window levels the statistics keep (each relative to the median).
pub const MOTION_PERCENTILES: [f64; 5] = [0.10, 0.25, 0.75, 0.90, 0.95];
/// Windows quieter than the mean window power by more than this are left out (fades, gaps), dB.
const MOTION_GATE_DB: f64 = 30.0;

/// How the level of one signal (a band, or the whole mid) moves over time: the distribution of
/// its window levels at three time scales and how far it swings from one window to the next.
/// Compression narrows the distribution and slows the swing; an expander (or an un-mastered
/// mix) widens both. The solver compares these between mix and reference.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MotionStats {
    /// Per scale ([`MOTION_SCALES_BLOCKS`]): the [`MOTION_PERCENTILES`] of the gated window
    /// levels minus their median, dB (negative below the median).
    pub percentiles_db: Vec<Vec<f64>>,
    /// Per scale: mean absolute change of level between successive gated windows, dB.
    pub swing_db: Vec<f64>,
    /// Median 400 ms window level, dBFS.
    pub median_dbfs: f64,
}

/// Level motion of the whole mid signal and of each dynamics band.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LevelMotion {
    /// The sum of the bands (the mid signal's level).
    pub broadband: MotionStats,
    /// One per dynamics band, low to high.
    pub bands: Vec<MotionStats>,
}

/// Level motion of `env`: each band, and the broadband sum of their powers.
pub fn level_motion(env: &BandEnvelopes) -> LevelMotion {
    let n = env.bands.iter().map(|b| b.mean_square.len()).max().unwrap_or(0);
    let mut sum = vec![0f32; n];
    for b in &env.bands {
        for (s, &m) in sum.iter_mut().zip(&b.mean_square) {
            *s += m;
        }
    }
    let mut scratch = MotionScratch::default();
    LevelMotion {
        broadband: motion_stats(&sum, &mut scratch),
        bands: env.bands.iter().map(|b| motion_stats(&b.mean_square, &mut scratch)).collect(),
    }
}

/// Blocks per chunk: every level-motion window starts and ends on a chunk boundary, so a series
/// reduced to its chunk sums ([`ChunkSums`]) carries everything the statistics need, at a tenth
/// of the length (the solver measures thousands of candidates).
pub const CHUNK_BLOCKS: usize = 10;

/// A series of 5 ms mean squares reduced to sums over [`CHUNK_BLOCKS`]-block chunks (linear
/// power × blocks), plus the sum of the partial chunk at the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkSums {
    /// Σ of each whole chunk's mean squares.
    pub sums: Vec<f64>,
    /// Σ of the mean squares after the last whole chunk.
    pub tail: f64,
    /// Length of the series, blocks.
    pub blocks: usize,
}

impl ChunkSums {
    /// The chunk sums of `mean_square`.
    pub fn of(mean_square: &[f32]) -> Self {
        let mut out = Self::default();
        out.set_gained(mean_square, None);
        out
    }

    /// Overwrites `self` with the chunk sums of `mean_square`, each block multiplied by its
    /// `gains` (linear power) when given; `gains` must be at least as long as the series.
    pub fn set_gained(&mut self, mean_square: &[f32], gains: Option<&[f32]>) {
        self.sums.clear();
        self.blocks = mean_square.len();
        let whole = mean_square.len() / CHUNK_BLOCKS * CHUNK_BLOCKS;
        let (body, rest) = mean_square.split_at(whole);
        match gains {
            Some(g) => {
                let (gb, gr) = g[..mean_square.len()].split_at(whole);
                self.sums.extend(body.chunks_exact(CHUNK_BLOCKS).zip(gb.chunks_exact(CHUNK_BLOCKS)).map(|(x, g)| {
                    let mut acc = 0f32;
                    for (a, b) in x.iter().zip(g) {
                        acc += a * b;
                    }
                    f64::from(acc)
                }));
                self.tail = rest.iter().zip(gr).map(|(&a, &b)| f64::from(a * b)).sum();
            }
            None => {
                self.sums.extend(body.chunks_exact(CHUNK_BLOCKS).map(|x| f64::from(x.iter().sum::<f32>())));
                self.tail = rest.iter().map(|&a| f64::from(a)).sum();
            }
        }
    }

    /// Sets `self` to the element-wise sum of `parts` (all of the same length).
    pub fn set_sum(&mut self, parts: &[ChunkSums]) {
        let n = parts.iter().map(|p| p.sums.len()).max().unwrap_or(0);
        self.sums.clear();
        self.sums.resize(n, 0.0);
        self.tail = 0.0;
        self.blocks = parts.iter().map(|p| p.blocks).max().unwrap_or(0);
        for p in parts {
            for (a, &b) in self.sums.iter_mut().zip(&p.sums) {
                *a += b;
            }
            self.tail += p.tail;
        }
    }

    /// Σ of the whole series.
    pub fn total(&self) -> f64 {
        self.sums.iter().sum::<f64>() + self.tail
    }
}

/// Reusable buffers for [`motion_stats`] (the solver measures thousands of candidates).
#[derive(Debug, Default)]
pub struct MotionScratch {
    chunks: ChunkSums,
    prefix: Vec<f64>,
    levels: Vec<f64>,
    db: Vec<f32>,
    sorted: Vec<f64>,
}

/// [`MotionStats`] of a series of 5 ms mean squares.
pub fn motion_stats(mean_square: &[f32], scratch: &mut MotionScratch) -> MotionStats {
    let mut chunks = std::mem::take(&mut scratch.chunks);
    chunks.set_gained(mean_square, None);
    let out = motion_stats_of_chunks(&chunks, scratch);
    scratch.chunks = chunks;
    out
}

/// [`MotionStats`] of a series given by its chunk sums.
pub fn motion_stats_of_chunks(chunks: &ChunkSums, scratch: &mut MotionScratch) -> MotionStats {
    let n = chunks.blocks;
    scratch.prefix.clear();
    scratch.prefix.push(0.0);
    let mut acc = 0f64;
    for &m in &chunks.sums {
        acc += m;
        scratch.prefix.push(acc);
    }
    let total = acc + chunks.tail;
    let whole = chunks.sums.len();
    let mut out = MotionStats { median_dbfs: -150.0, ..MotionStats::default() };
    for (scale, (&win, &hop)) in MOTION_SCALES_BLOCKS.iter().zip(&MOTION_HOPS_BLOCKS).enumerate() {
        scratch.levels.clear();
        if n > 0 && win <= n {
            // Windows of `win` blocks every `hop` blocks that end inside the series: in chunks.
            let (wc, hc) = (win / CHUNK_BLOCKS, hop / CHUNK_BLOCKS);
            let p = &scratch.prefix;
            let scale_by = 1.0 / win as f64;
            scratch.levels.extend((0..=whole.saturating_sub(wc)).step_by(hc).map(|j| (p[j + wc] - p[j]) * scale_by));
        } else if n > 0 {
            // A series shorter than the window is one window.
            scratch.levels.push(total / n as f64);
        }
        let mean = scratch.levels.iter().sum::<f64>() / scratch.levels.len().max(1) as f64;
        let gate = (mean * 10f64.powf(-MOTION_GATE_DB / 10.0)).max(1e-7);
        // Every window's level in dB first (a loop that vectorises), then the gated statistics.
        scratch.db.clear();
        scratch.db.resize(scratch.levels.len(), 0.0);
        for (d, &l) in scratch.db.iter_mut().zip(&scratch.levels) {
            *d = fast_log2((l as f32).max(f32::MIN_POSITIVE));
        }
        let (mut swing, mut steps, mut prev) = (0f64, 0usize, None::<f64>);
        scratch.sorted.clear();
        for (&l, &d) in scratch.levels.iter().zip(&scratch.db) {
            if l >= gate {
                let db = f64::from(d) * DB_PER_OCTAVE;
                if let Some(p) = prev {
                    swing += (db - p).abs();
                    steps += 1;
                }
                prev = Some(db);
                scratch.sorted.push(db);
            } else {
                prev = None;
            }
        }
        if scratch.sorted.is_empty() {
            out.percentiles_db.push(vec![0.0; MOTION_PERCENTILES.len()]);
            out.swing_db.push(0.0);
            continue;
        }
        let mut qs = [0f64; MOTION_PERCENTILES.len() + 1];
        qs[..MOTION_PERCENTILES.len()].copy_from_slice(&MOTION_PERCENTILES);
        qs[MOTION_PERCENTILES.len()] = 0.5;
        let mut values = [0f64; MOTION_PERCENTILES.len() + 1];
        percentiles_unsorted(&mut scratch.sorted, &qs, &mut values);
        let median = values[MOTION_PERCENTILES.len()];
        if scale == 1 {
            out.median_dbfs = median;
        }
        out.percentiles_db.push(values[..MOTION_PERCENTILES.len()].iter().map(|v| v - median).collect());
        out.swing_db.push(if steps > 0 { swing / steps as f64 } else { 0.0 });
    }
    out
}

/// The percentiles `qs` of `values` (interpolated as [`percentile_sorted`] does on the sorted
/// values) written into `out`, found by selection instead of a full sort; reorders `values`.
pub fn percentiles_unsorted(values: &mut [f64], qs: &[f64], out: &mut [f64]) {
    let len = values.len();
    if len == 0 {
        out.iter_mut().for_each(|o| *o = f64::NAN);
        return;
    }
    // The ranks each percentile interpolates between, sorted and unique.
    let mut ranks = [0usize; 32];
    let mut count = 0;
    for &q in qs.iter().take(16) {
        let i = (q.clamp(0.0, 1.0) * (len - 1) as f64).floor() as usize;
        for r in [i, (i + 1).min(len - 1)] {
            ranks[count] = r;
            count += 1;
        }
    }
    let ranks = &mut ranks[..count];
    ranks.sort_unstable();
    let mut unique = 0;
    for k in 0..ranks.len() {
        if k == 0 || ranks[k] != ranks[unique - 1] {
            ranks[unique] = ranks[k];
            unique += 1;
        }
    }
    select_ranks(values, 0, &ranks[..unique]);
    for (o, &q) in out.iter_mut().zip(qs) {
        let pos = q.clamp(0.0, 1.0) * (len - 1) as f64;
        let i = pos.floor() as usize;
        let next = values[(i + 1).min(len - 1)];
        *o = values[i] + (next - values[i]) * (pos - i as f64);
    }
}

/// Puts the elements of the sorted order at `ranks` (ascending, relative to `offset`, the
/// position of `values[0]` in the whole) in their sorted places.
fn select_ranks(values: &mut [f64], offset: usize, ranks: &[usize]) {
    if ranks.is_empty() || values.is_empty() {
        return;
    }
    let mid = ranks.len() / 2;
    let k = ranks[mid] - offset;
    let (left, _, right) = values.select_nth_unstable_by(k, f64::total_cmp);
    select_ranks(left, offset, &ranks[..mid]);
    select_ranks(right, offset + k + 1, &ranks[mid + 1..]);
}

/// Decibels per doubling of power (10·log10 2).
const DB_PER_OCTAVE: f64 = 3.010_299_956_639_812;

/// 10·log10 of a power (> 0, normal), dB, to about 1e-5 dB: a polynomial on the mantissa, as
/// the solver takes millions of these.
#[inline]
pub fn power_db(power: f32) -> f64 {
    f64::from(fast_log2(power)) * DB_PER_OCTAVE
}

/// log2 of a positive normal f32, to about 1e-7 (absolute): exponent plus the atanh series of
/// the mantissa normalised to [√½, √2).
#[inline]
pub fn fast_log2(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // Branch-free (selects), so that loops of it vectorise.
    let high = m > std::f32::consts::SQRT_2;
    let m = if high { m * 0.5 } else { m };
    e += i32::from(high);
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let ln_m = 2.0 * z * (1.0 + z2 * (1.0 / 3.0 + z2 * (1.0 / 5.0 + z2 * (1.0 / 7.0 + z2 / 9.0))));
    e as f32 + ln_m * std::f32::consts::LOG2_E
}

/// 2^x for x in [−126, 0] (clamped into it), relative error about 2e-7: the power of two of the
/// nearest integer times a Taylor series of the rest (branch-free, so loops of it vectorise).
#[inline]
pub fn fast_exp2(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer in the low bits
    let x = x.clamp(-126.0, 0.0);
    let shifted = x + ROUND;
    let i = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let y = (x - (shifted - ROUND)) * std::f32::consts::LN_2;
    let p = 1.0 + y * (1.0 + y / 2.0 * (1.0 + y / 3.0 * (1.0 + y / 4.0 * (1.0 + y / 5.0 * (1.0 + y / 6.0)))));
    f32::from_bits(((i + 127) as u32) << 23) * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_log_and_exp_match_the_library_to_well_under_a_thousandth_of_a_db() {
        let mut x = 1e-30f32;
        while x < 1e6 {
            assert!((power_db(x) - 10.0 * f64::from(x).log10()).abs() < 1e-4, "{x}");
            x *= 1.37;
        }
        let mut e = -120.0f32;
        while e <= 0.0 {
            let want = 2f64.powf(f64::from(e));
            assert!((f64::from(fast_exp2(e)) / want - 1.0).abs() < 1e-6, "{e}");
            e += 0.0137;
        }
    }

    #[test]
    fn selected_percentiles_equal_the_sorted_ones() {
        let mut v: Vec<f64> = (0..997).map(|i| ((i * 7919) % 1009) as f64 * 0.37 - 50.0).collect();
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        let qs = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.0, 1.0];
        let mut out = [0f64; 8];
        percentiles_unsorted(&mut v, &qs, &mut out);
        for (&q, &o) in qs.iter().zip(&out) {
            assert_eq!(o, percentile_sorted(&sorted, q), "q = {q}");
        }
    }

    #[test]
    fn chunked_statistics_equal_the_block_by_block_windows() {
        // 6.2 s of a level that steps and wobbles, with a partial last chunk.
        let series: Vec<f32> = (0..1243)
            .map(|i| 1e-3 * (1.0 + 0.8 * ((i as f32) * 0.013).sin()) * if i % 700 < 350 { 1.0 } else { 0.1 })
            .collect();
        let mut scratch = MotionScratch::default();
        let got = motion_stats(&series, &mut scratch);
        // The windows computed directly from the blocks.
        for (scale, (&win, &hop)) in MOTION_SCALES_BLOCKS.iter().zip(&MOTION_HOPS_BLOCKS).enumerate() {
            let levels: Vec<f64> = (0..=series.len() - win)
                .step_by(hop)
                .map(|s| series[s..s + win].iter().map(|&v| f64::from(v)).sum::<f64>() / win as f64)
                .collect();
            let mut db: Vec<f64> = levels.iter().map(|l| 10.0 * l.log10()).collect();
            db.sort_by(f64::total_cmp);
            let median = percentile_sorted(&db, 0.5);
            for (&q, &p) in MOTION_PERCENTILES.iter().zip(&got.percentiles_db[scale]) {
                assert!((percentile_sorted(&db, q) - median - p).abs() < 1e-3, "scale {scale} q {q}");
            }
        }
    }
}
