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
            for &x in now {
                let b = self.crossover.split(f64::from(x));
                for i in 0..4 {
                    peak[i] = peak[i].max(b[i].abs());
                    energy[i] += b[i] * b[i];
                }
            }
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

/// Reusable buffers for [`motion_stats`] (the solver measures hundreds of candidates).
#[derive(Debug, Default)]
pub struct MotionScratch {
    prefix: Vec<f64>,
    levels: Vec<f64>,
    sorted: Vec<f64>,
}

/// [`MotionStats`] of a series of 5 ms mean squares.
pub fn motion_stats(mean_square: &[f32], scratch: &mut MotionScratch) -> MotionStats {
    let n = mean_square.len();
    scratch.prefix.clear();
    scratch.prefix.push(0.0);
    let mut acc = 0f64;
    for &m in mean_square {
        acc += f64::from(m);
        scratch.prefix.push(acc);
    }
    let mut out = MotionStats { median_dbfs: -150.0, ..MotionStats::default() };
    for (scale, (&win, &hop)) in MOTION_SCALES_BLOCKS.iter().zip(&MOTION_HOPS_BLOCKS).enumerate() {
        let win = win.min(n.max(1));
        scratch.levels.clear();
        if n > 0 {
            let p = &scratch.prefix;
            scratch.levels.extend((0..=n - win).step_by(hop).map(|s| (p[s + win] - p[s]) / win as f64));
        }
        let mean = scratch.levels.iter().sum::<f64>() / scratch.levels.len().max(1) as f64;
        let gate = (mean * 10f64.powf(-MOTION_GATE_DB / 10.0)).max(1e-7);
        let (mut swing, mut steps, mut prev) = (0f64, 0usize, None::<f64>);
        scratch.sorted.clear();
        for &l in &scratch.levels {
            if l >= gate {
                let db = 10.0 * l.log10();
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
        scratch.sorted.sort_by(f64::total_cmp);
        if scratch.sorted.is_empty() {
            out.percentiles_db.push(vec![0.0; MOTION_PERCENTILES.len()]);
            out.swing_db.push(0.0);
            continue;
        }
        let median = percentile_sorted(&scratch.sorted, 0.5);
        if scale == 1 {
            out.median_dbfs = median;
        }
        out.percentiles_db
            .push(MOTION_PERCENTILES.iter().map(|&q| percentile_sorted(&scratch.sorted, q) - median).collect());
        out.swing_db.push(if steps > 0 { swing / steps as f64 } else { 0.0 });
    }
    out
}
