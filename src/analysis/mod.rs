//! Stage 2: measure a file into a serialisable [`Profile`]: loudness, the long-term spectrum of
//! mid and side, dynamics per band, and the stereo image. A profile is all the solver needs of a
//! reference, so a saved profile can stand in for the audio.
//!
//! [`Analyzer`] measures audio pushed chunk by chunk in bounded memory (it never holds the
//! signal); [`analyze`] feeds it an in-memory buffer.

pub mod dynamics;
pub mod loudness;
pub mod spectrum;
#[cfg(test)]
pub(crate) mod test_audio;
#[cfg(test)]
mod whole_buffer;

use serde::{Deserialize, Serialize};

use crate::audio::AudioBuffer;
use crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ;
use crate::dsp::truepeak::TruePeakDetector;
pub use dynamics::{BandDynamics, BandEnvelopes, LevelMotion};
pub use loudness::Loudness;
use spectrum::{band_levels_db, content_cutoff_hz, grid_hz, power_to_db, PowerSpectrum};

/// Version of the profile's JSON schema; bumped on any incompatible change.
pub const PROFILE_SCHEMA_VERSION: u32 = 1;

/// Upper edges in Hz of the stereo-width bands (the first starts at 20 Hz).
pub const WIDTH_BAND_EDGES_HZ: [f64; 6] = [20.0, 120.0, 500.0, 2000.0, 8000.0, 20000.0];

/// Everything refmaster measures about one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Schema version ([`PROFILE_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Where the profile came from (file name, or a description for averaged profiles).
    pub source: String,
    /// Sample rate of the analysed audio in Hz.
    pub sample_rate_hz: u32,
    /// Channel count of the analysed audio.
    pub channels: usize,
    /// Duration in seconds.
    pub duration_s: f64,
    /// True when the file came from a lossy codec.
    pub lossy: bool,
    /// BS.1770 / EBU R128 loudness.
    pub loudness: Loudness,
    /// Long-term spectra on the fixed grid.
    pub spectrum: Spectrum,
    /// Dynamics in the four compressor bands (empty when the analysis left the band envelopes
    /// out: [`Analyzer::without_dynamics`], a master's profile).
    pub dynamics: Vec<BandDynamics>,
    /// Stereo image.
    pub stereo: Stereo,
    /// How the level moves over time, broadband and per dynamics band (absent in profiles saved
    /// before it existed, and in an analysis without the band envelopes: the solver then leaves
    /// dynamics alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_motion: Option<LevelMotion>,
    /// The mix's 5 ms band envelopes, kept in memory for the solver's compressor simulation; not
    /// serialised (a saved profile is a reference, and references need no envelopes).
    #[serde(skip)]
    pub envelopes: Option<BandEnvelopes>,
}

/// Long-term average spectra of mid and side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spectrum {
    /// Band centres in Hz (1/6 octave, 20 Hz to 20.5 kHz).
    pub frequencies_hz: Vec<f64>,
    /// Mid (L+R)/2 band levels in dB re a full-scale sine.
    pub mid_db: Vec<f64>,
    /// Side (L−R)/2 band levels in dB re a full-scale sine.
    pub side_db: Vec<f64>,
    /// Frequency above which the file has no content, in Hz.
    pub content_cutoff_hz: f64,
}

/// Stereo image figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stereo {
    /// Inter-channel correlation of L and R (1 = mono, 0 = unrelated, −1 = out of phase).
    pub correlation: f64,
    /// Left-to-right energy ratio in dB (positive = left louder).
    pub balance_db: f64,
    /// Side-to-mid energy ratio over 20 Hz–20 kHz in dB (−inf-like −150 for mono).
    pub width_db: f64,
    /// Side-to-mid energy ratio per band.
    pub bands: Vec<WidthBand>,
}

/// Side-to-mid ratio of one band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WidthBand {
    /// Lower edge in Hz.
    pub low_hz: f64,
    /// Upper edge in Hz.
    pub high_hz: f64,
    /// Side energy over mid energy in dB.
    pub side_to_mid_db: f64,
}

/// Frames per internal measuring block (1.5 s at 44.1 kHz). Pushed chunks are regrouped into
/// blocks of this size, each handed to the meters' two threads at a negligible cost whatever
/// the chunking (one frame at a time included).
pub const BLOCK_FRAMES: usize = 1 << 16;

/// Analyses `audio` (any channel count; mid/side use the first two channels): an [`Analyzer`]
/// fed the buffer block by block.
pub fn analyze(audio: &AudioBuffer, source: &str, lossy: bool) -> Profile {
    let frames = audio.frames();
    let mut analyzer = Analyzer::new(audio.sample_rate_hz, audio.channel_count(), Some(frames));
    for start in (0..frames).step_by(BLOCK_FRAMES) {
        let end = frames.min(start + BLOCK_FRAMES);
        let chunk: Vec<&[f32]> = audio.channels.iter().map(|c| &c[start..end]).collect();
        analyzer.push(&chunk);
    }
    analyzer.finish(source, lossy)
}

/// Measures audio pushed to it chunk by chunk into a [`Profile`], holding only per-block figures,
/// never the signal.
///
/// Memory: a few blocks of [`BLOCK_FRAMES`] frames (staging, and the blocks queued for the
/// meters), one FFT window of mid and side (about 0.7 s), and the series the profile keeps (5 ms
/// band envelopes, 100 ms loudness sub-blocks: about 35 MB for 90 minutes at 48 kHz,
/// independent of the channel count).
///
/// Every meter runs sample by sample over fixed blocks, so the profile is the same bit for bit
/// however the audio was cut into chunks. The meters run on two threads of their own, of about
/// equal cost, fed each block in order through a short queue: the K-weighting (every loudness
/// figure), the true-peak detector, the stereo sums and the side's spectrum on one, the band
/// envelopes (the crossover) and the mid's spectrum on the other. So the caller (a decoder) goes on with the next
/// chunk while a block is measured, and a file decodes and analyses on both cores.
pub struct Analyzer {
    sample_rate_hz: u32,
    channel_count: usize,
    /// Frames pushed so far.
    frames: usize,
    /// Frames pushed but not yet measured (fewer than [`BLOCK_FRAMES`]), one vector per channel.
    staging: Vec<Vec<f32>>,
    /// (lowest, highest) sample per channel, of everything pushed.
    extremes: Vec<(f32, f32)>,
    levels: Worker<LevelMeters>,
    envelopes: Worker<EnvelopeMeter>,
}

/// Level figures of an [`Analyzer`]'s pass in the form the closed loop's readings take them
/// (from the same meters, so the same bits as a [`loudness::KMeter`] and a
/// [`TruePeakDetector`] fed the same samples in any chunking).
#[derive(Debug, Clone, PartialEq)]
pub struct LevelReadings {
    /// Gated integrated loudness, LUFS ([`loudness::KMeter::integrated_lufs`]).
    pub integrated_lufs: f64,
    /// True peak, linear ([`TruePeakDetector::peak`]).
    pub true_peak: f32,
    /// The complete 100 ms sub-blocks' weighted energy sums ([`loudness::KMeter::sub_blocks`]).
    pub sub_blocks: Vec<f64>,
}

/// One block of planar frames, shared by the meters' threads.
type Block = std::sync::Arc<Vec<Vec<f32>>>;

/// A meter on its own thread, fed blocks in order through a bounded queue (two blocks: enough to
/// keep it busy, little memory), handed back when the stream ends.
struct Worker<M> {
    queue: std::sync::mpsc::SyncSender<Block>,
    thread: std::thread::JoinHandle<M>,
}

impl<M: Meter + Send + 'static> Worker<M> {
    fn spawn(mut meter: M) -> Self {
        let (queue, blocks) = std::sync::mpsc::sync_channel::<Block>(2);
        let thread = std::thread::spawn(move || {
            for block in blocks {
                let planes: Vec<&[f32]> = block.iter().map(Vec::as_slice).collect();
                meter.push(&planes);
            }
            meter
        });
        Self { queue, thread }
    }

    fn send(&self, block: &Block) {
        // Fails only when the thread has died (a panic), which `finish` re-raises.
        let _ = self.queue.send(block.clone());
    }

    fn finish(self) -> M {
        drop(self.queue);
        self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// What a [`Worker`] runs on each block.
trait Meter {
    fn push(&mut self, block: &[&[f32]]);
}

/// K-weighting, true peak, the stereo sums and (with the band envelopes) the side's spectrum.
struct LevelMeters {
    k: loudness::KMeter,
    true_peak: TruePeakDetector,
    stereo: StereoSums,
    side_welch: Option<spectrum::Welch>,
    side: Vec<f32>,
}

/// The mid's band envelopes (unless left out) and spectrum, and without the envelopes the
/// side's spectrum too (which keeps the two threads' work closer to equal).
struct EnvelopeMeter {
    follower: Option<dynamics::EnvelopeFollower>,
    mid_welch: spectrum::Welch,
    side_welch: Option<spectrum::Welch>,
    mid: Vec<f32>,
    side: Vec<f32>,
}

/// Peak-to-peak swing under which a signal holds nothing audible, as a linear amplitude
/// (-80 dBFS: under the dither of a 16-bit file's quietest passage).
const INAUDIBLE_SWING: f32 = 1e-4;

/// Σ L², Σ R², Σ L·R over the first two channels, for correlation and balance.
#[derive(Debug, Clone, Copy, Default)]
struct StereoSums {
    ll: f64,
    rr: f64,
    lr: f64,
}

impl Analyzer {
    /// An analyser for `channel_count` channels at `sample_rate_hz`. `total_frames`: the length if
    /// known (in-memory buffers, file headers); None = unknown. It only matters for audio shorter
    /// than one FFT window (a power of two near 0.74 s), whose spectrum uses a shorter FFT:
    /// without it the first window of mid and side is held back until it is clear the audio is
    /// longer (see [`spectrum::Welch`]).
    pub fn new(sample_rate_hz: u32, channel_count: usize, total_frames: Option<usize>) -> Self {
        Self::with_dynamics(sample_rate_hz, channel_count, total_frames, true)
    }

    /// An analyser like [`Self::new`] that leaves out the band envelopes (the 4-band crossover
    /// and its 5 ms envelope followers, the costliest meter): the profile's
    /// [`Profile::dynamics`] is empty, its [`Profile::level_motion`] and
    /// [`Profile::envelopes`] are `None`, and everything else is the same, bit for bit.
    ///
    /// For a master's profile: only a mix's envelopes (the solver's compressor simulation) and
    /// a reference's dynamics and level motion (the solver's targets) are ever read; a master's
    /// are read by nothing (the reports show its loudness, peaks, spectrum and width), and the
    /// closed loop's last pass analyses every reading of the master it tries.
    pub fn without_dynamics(sample_rate_hz: u32, channel_count: usize, total_frames: Option<usize>) -> Self {
        Self::with_dynamics(sample_rate_hz, channel_count, total_frames, false)
    }

    fn with_dynamics(sample_rate_hz: u32, channel_count: usize, total_frames: Option<usize>, dynamics: bool) -> Self {
        Self {
            sample_rate_hz,
            channel_count,
            frames: 0,
            staging: vec![Vec::new(); channel_count],
            extremes: vec![(f32::INFINITY, f32::NEG_INFINITY); channel_count],
            levels: Worker::spawn(LevelMeters {
                k: loudness::KMeter::new(sample_rate_hz, channel_count),
                true_peak: TruePeakDetector::new(channel_count),
                stereo: StereoSums::default(),
                side_welch: dynamics.then(|| spectrum::Welch::new(sample_rate_hz, 1, total_frames)),
                side: Vec::new(),
            }),
            envelopes: Worker::spawn(EnvelopeMeter {
                follower: dynamics.then(|| dynamics::EnvelopeFollower::new(sample_rate_hz, DEFAULT_CROSSOVERS_HZ)),
                mid_welch: spectrum::Welch::new(sample_rate_hz, 1, total_frames),
                side_welch: (!dynamics).then(|| spectrum::Welch::new(sample_rate_hz, 1, total_frames)),
                mid: Vec::new(),
                side: Vec::new(),
            }),
        }
    }

    /// Feeds a planar chunk: one slice per channel, equal lengths, any length (including 1 or 0).
    ///
    /// # Panics
    /// If `chunk` does not hold `channel_count` slices of equal length.
    pub fn push(&mut self, chunk: &[&[f32]]) {
        let len = chunk.first().map_or(0, |c| c.len());
        assert!(
            chunk.len() == self.channel_count && chunk.iter().all(|c| c.len() == len),
            "Analyzer::push: one slice per channel, all of the same length"
        );
        self.frames += len;
        for (e, c) in self.extremes.iter_mut().zip(chunk) {
            *e = c.iter().fold(*e, |(lo, hi), &x| (lo.min(x), hi.max(x)));
        }
        let mut start = 0;
        while start < len {
            let take = (len - start).min(BLOCK_FRAMES - self.staging.first().map_or(0, Vec::len));
            self.staging.iter_mut().zip(chunk).for_each(|(s, c)| s.extend_from_slice(&c[start..start + take]));
            start += take;
            if self.staging.first().is_some_and(|s| s.len() == BLOCK_FRAMES) {
                self.measure_staging();
            }
        }
    }

    /// When every channel holds one constant value that is not zero (a DC offset and nothing
    /// audible: it swings less than -80 dBFS peak to peak), that offset's level, dBFS. Mastering
    /// it would only turn a click up; digital silence is `None` (the loudness gate names it).
    pub fn constant_offset_dbfs(&self) -> Option<f64> {
        let e = &self.extremes;
        let swing = e.iter().map(|(lo, hi)| hi - lo).fold(0.0f32, f32::max);
        let offset = e.iter().map(|(lo, hi)| lo.abs().max(hi.abs())).fold(0.0f32, f32::max);
        (self.frames > 0 && swing.is_finite() && swing < INAUDIBLE_SWING && offset >= INAUDIBLE_SWING)
            .then(|| 20.0 * f64::from(offset).log10())
    }

    /// The profile of everything pushed.
    pub fn finish(self, source: &str, lossy: bool) -> Profile {
        self.finish_with_levels(source, lossy).0
    }

    /// [`Self::finish`], with the level figures a loudness search reads off the same pass
    /// ([`LevelReadings`]): the closed loop's last reading of a master is also its analysis.
    pub fn finish_with_levels(mut self, source: &str, lossy: bool) -> (Profile, LevelReadings) {
        self.measure_staging();
        let Self { sample_rate_hz: rate, channel_count, frames, extremes, levels, envelopes, .. } = self;
        let (levels, envelopes) = (levels.finish(), envelopes.finish());
        // Each signal's spectrum is its own sum (a Welch of one signal is that signal's part of
        // a Welch of several), so mid and side are measured on the two threads.
        let side_welch = levels.side_welch.or(envelopes.side_welch);
        let spectra: Vec<PowerSpectrum> = envelopes
            .mid_welch
            .finish()
            .into_iter()
            .chain(side_welch.map(spectrum::Welch::finish).into_iter().flatten())
            .collect();
        let envelopes = envelopes.follower.map(dynamics::EnvelopeFollower::finish);
        let sample_peak = extremes.iter().fold(0f32, |a, (lo, hi)| a.max(lo.abs()).max(hi.abs()));
        let true_peak = levels.true_peak.peak();
        let loudness = loudness::loudness_of(&levels.k, true_peak, sample_peak);
        let readings = LevelReadings {
            integrated_lufs: levels.k.integrated_lufs(),
            true_peak,
            sub_blocks: levels.k.sub_blocks().to_vec(),
        };
        let grid = grid_hz();
        let nyquist = f64::from(rate) / 2.0;
        let mid_db = band_levels_db(&spectra[0], &grid);
        let side_db = band_levels_db(&spectra[1], &grid);
        let cutoff = content_cutoff_hz(&grid, &mid_db, nyquist);
        let stereo = stereo(levels.stereo, channel_count, &spectra[0], &spectra[1]);
        let profile = Profile {
            schema_version: PROFILE_SCHEMA_VERSION,
            source: source.to_string(),
            sample_rate_hz: rate,
            channels: channel_count,
            duration_s: frames as f64 / f64::from(rate.max(1)),
            lossy,
            loudness,
            spectrum: Spectrum { frequencies_hz: grid, mid_db, side_db, content_cutoff_hz: cutoff },
            dynamics: envelopes.as_ref().map_or_else(Vec::new, dynamics::band_dynamics),
            stereo,
            level_motion: envelopes.as_ref().map(dynamics::level_motion),
            envelopes,
        };
        (profile, readings)
    }

    /// Hands the staged frames (a full block, or the partial last one) to the meters and starts
    /// a new stage.
    fn measure_staging(&mut self) {
        if self.staging.first().is_none_or(Vec::is_empty) {
            return;
        }
        let fresh = self.staging.iter().map(|_| Vec::with_capacity(BLOCK_FRAMES)).collect();
        let block: Block = std::sync::Arc::new(std::mem::replace(&mut self.staging, fresh));
        self.levels.send(&block);
        self.envelopes.send(&block);
    }
}

/// The block's mid `(L + R) / 2` (for mono: the channel itself), computed into `buf` when it
/// takes computing; `None` for a block without channels. Each meter thread computes only the
/// signal it measures (the same values as [`crate::audio::split_mid_side`]).
fn mid_of<'a>(block: &[&'a [f32]], buf: &'a mut Vec<f32>) -> Option<&'a [f32]> {
    match block {
        [] => None,
        [mono] => Some(mono),
        [l, r, ..] => {
            buf.clear();
            buf.extend(l.iter().zip(r.iter()).map(|(a, b)| 0.5 * (a + b)));
            Some(buf)
        }
    }
}

/// The block's side `(L − R) / 2` (for mono: silence) in `buf`; `None` for a block without
/// channels.
fn side_of<'a>(block: &[&[f32]], buf: &'a mut Vec<f32>) -> Option<&'a [f32]> {
    buf.clear();
    match block {
        [] => return None,
        [mono] => buf.resize(mono.len(), 0.0),
        [l, r, ..] => buf.extend(l.iter().zip(r.iter()).map(|(a, b)| 0.5 * (a - b))),
    }
    Some(buf)
}

impl Meter for LevelMeters {
    fn push(&mut self, block: &[&[f32]]) {
        self.k.push(block);
        self.true_peak.push(block);
        if let [l, r, ..] = block {
            self.stereo.add(l, r);
        }
        if let Some(w) = self.side_welch.as_mut() {
            if let Some(side) = side_of(block, &mut self.side) {
                w.push(&[side]);
            }
        }
    }
}

impl Meter for EnvelopeMeter {
    fn push(&mut self, block: &[&[f32]]) {
        if let Some(mid) = mid_of(block, &mut self.mid) {
            if let Some(f) = self.follower.as_mut() {
                f.push(mid);
            }
            self.mid_welch.push(&[mid]);
        }
        if let Some(w) = self.side_welch.as_mut() {
            if let Some(side) = side_of(block, &mut self.side) {
                w.push(&[side]);
            }
        }
    }
}

impl StereoSums {
    fn add(&mut self, l: &[f32], r: &[f32]) {
        let Self { mut ll, mut rr, mut lr } = *self;
        for (a, b) in l.iter().zip(r) {
            let (a, b) = (f64::from(*a), f64::from(*b));
            ll += a * a;
            rr += b * b;
            lr += a * b;
        }
        *self = Self { ll, rr, lr };
    }
}

fn power_between(s: &PowerSpectrum, lo_hz: f64, hi_hz: f64) -> f64 {
    let lo = (lo_hz / s.bin_hz).round() as usize;
    let hi = ((hi_hz / s.bin_hz).round() as usize).min(s.power.len().saturating_sub(1));
    s.power.get(lo..hi).map_or(0.0, |p| p.iter().sum())
}

fn ratio_db(side: f64, mid: f64) -> f64 {
    (power_to_db(side) - power_to_db(mid)).max(-150.0)
}

/// Stereo figures from the sums over L and R and the mid/side spectra.
fn stereo(sums: StereoSums, channel_count: usize, mid: &PowerSpectrum, side: &PowerSpectrum) -> Stereo {
    let StereoSums { ll, rr, lr } = sums;
    let (correlation, balance_db) = if channel_count < 2 {
        (1.0, 0.0)
    } else if ll > 0.0 && rr > 0.0 {
        (lr / (ll * rr).sqrt(), 10.0 * (ll / rr).log10())
    } else {
        (0.0, 0.0)
    };
    let bands = WIDTH_BAND_EDGES_HZ
        .windows(2)
        .map(|e| WidthBand {
            low_hz: e[0],
            high_hz: e[1],
            side_to_mid_db: ratio_db(power_between(side, e[0], e[1]), power_between(mid, e[0], e[1])),
        })
        .collect();
    Stereo {
        correlation,
        balance_db,
        width_db: ratio_db(power_between(side, 20.0, 20000.0), power_between(mid, 20.0, 20000.0)),
        bands,
    }
}

/// Serde helper: dB/LUFS values that may be −inf (silence) are written as `null` and read back
/// as −inf, because JSON has no infinity.
pub mod db_or_null {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes finite values as numbers, anything else as `null`.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    /// Reads numbers as they are and `null` as −inf.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
    }
}

/// Reads a saved profile (`refmaster analyze --json -o x.json`), checking its schema version
/// and that its spectra sit on the grid this refmaster uses.
pub fn profile_from_json(text: &str, path: &std::path::Path) -> crate::Result<Profile> {
    let p: Profile =
        serde_json::from_str(text).map_err(|e| crate::Error::input(path, format!("not a refmaster profile ({e})")))?;
    if p.schema_version != PROFILE_SCHEMA_VERSION {
        return Err(crate::Error::input(
            path,
            format!("profile schema version {} (this refmaster reads {PROFILE_SCHEMA_VERSION})", p.schema_version),
        ));
    }
    let grid = grid_hz();
    let on_grid = p.spectrum.frequencies_hz.len() == grid.len()
        && p.spectrum.frequencies_hz.iter().zip(&grid).all(|(a, b)| (a - b).abs() < 1e-6 * b)
        && p.spectrum.mid_db.len() == grid.len()
        && p.spectrum.side_db.len() == grid.len();
    if !on_grid || p.dynamics.len() != 4 || p.stereo.bands.len() != WIDTH_BAND_EDGES_HZ.len() - 1 {
        return Err(crate::Error::input(path, "profile does not match this refmaster's analysis grid"));
    }
    let finite = p.spectrum.mid_db.iter().chain(&p.spectrum.side_db).all(|v| v.is_finite());
    if !finite {
        return Err(crate::Error::input(path, "profile spectrum holds non-finite values"));
    }
    check_profile_ranges(&p).map_err(|reason| crate::Error::input(path, reason))?;
    Ok(p)
}

/// Checks that a profile's numbers are ones a real measurement can give, so a hand-edited or
/// corrupt profile is named instead of steering the solver to absurd settings. Levels that are
/// −inf for silent parts (written as `null`) may stay so where the analysis itself gives −inf.
fn check_profile_ranges(p: &Profile) -> std::result::Result<(), String> {
    let check = |field: &str, v: f64, (lo, hi): (f64, f64), may_be_silent: bool| {
        if (may_be_silent && v == f64::NEG_INFINITY) || (v.is_finite() && (lo..=hi).contains(&v)) {
            Ok(())
        } else {
            Err(format!("profile field `{field}` is {v}, outside {lo}..{hi}"))
        }
    };
    let l = &p.loudness;
    check("loudness.integrated_lufs", l.integrated_lufs, (-70.0, 10.0), false)?;
    check("loudness.range_lu", l.range_lu, (0.0, 100.0), false)?;
    check("loudness.true_peak_dbtp", l.true_peak_dbtp, (-200.0, 60.0), false)?;
    check("loudness.sample_peak_dbfs", l.sample_peak_dbfs, (-200.0, 60.0), false)?;
    check("loudness.plr_db", l.plr_db, (-20.0, 200.0), false)?;
    check("loudness.max_momentary_lufs", l.max_momentary_lufs, (-200.0, 20.0), true)?;
    check("loudness.max_short_term_lufs", l.max_short_term_lufs, (-200.0, 20.0), true)?;
    for (i, v) in l.short_term_percentiles_lufs.iter().enumerate() {
        check(&format!("loudness.short_term_percentiles_lufs[{i}]"), *v, (-200.0, 20.0), true)?;
    }
    check("duration_s", p.duration_s, (0.0, 1e7), false)?;
    check("spectrum.content_cutoff_hz", p.spectrum.content_cutoff_hz, (0.0, 1e6), false)?;
    for (i, v) in p.spectrum.mid_db.iter().chain(&p.spectrum.side_db).enumerate() {
        check(&format!("spectrum value {i}"), *v, (-400.0, 100.0), false)?;
    }
    for (i, b) in p.dynamics.iter().enumerate() {
        check(&format!("dynamics[{i}].rms_dbfs"), b.rms_dbfs, (-400.0, 60.0), true)?;
        check(&format!("dynamics[{i}].crest_db"), b.crest_db, (-1.0, 200.0), false)?;
        check(&format!("dynamics[{i}].spread_db"), b.spread_db, (0.0, 200.0), false)?;
    }
    check("stereo.correlation", p.stereo.correlation, (-1.0, 1.0), false)?;
    check("stereo.balance_db", p.stereo.balance_db, (-400.0, 400.0), false)?;
    check("stereo.width_db", p.stereo.width_db, (-400.0, 400.0), true)?;
    for (i, b) in p.stereo.bands.iter().enumerate() {
        check(&format!("stereo.bands[{i}].side_to_mid_db"), b.side_to_mid_db, (-400.0, 400.0), true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::test_audio::music;
    use super::*;

    /// An analysis without the band envelopes is the full analysis with its dynamics, level
    /// motion and envelopes left out, and every other figure the same bit for bit (loudness,
    /// peaks, spectra, stereo): the master's profile loses only what nothing reads of it.
    #[test]
    fn an_analysis_without_dynamics_is_the_full_one_without_its_dynamics() {
        let cases = [
            ("stereo 44.1k", music(44_100, 2, 8.0, 11)),
            ("mono 48k", music(48_000, 1, 3.0, 12)),
            ("5.1 48k", music(48_000, 6, 2.0, 13)),
            ("0.3 s", music(44_100, 2, 0.3, 14)),
            ("silence", AudioBuffer::silent(48_000, 2, 48_000)),
        ];
        for (name, audio) in &cases {
            let mut full = analyze(audio, "test", false);
            assert_eq!(full.dynamics.len(), 4, "{name}");
            let mut lean =
                Analyzer::without_dynamics(audio.sample_rate_hz, audio.channel_count(), Some(audio.frames()));
            for start in (0..audio.frames()).step_by(10_000) {
                let end = audio.frames().min(start + 10_000);
                lean.push(&audio.channels.iter().map(|c| &c[start..end]).collect::<Vec<_>>());
            }
            let (lean, levels) = lean.finish_with_levels("test", false);
            assert!(lean.dynamics.is_empty() && lean.level_motion.is_none() && lean.envelopes.is_none(), "{name}");
            (full.dynamics, full.level_motion, full.envelopes) = (Vec::new(), None, None);
            assert!(lean == full, "{name}: the figures measured without the envelopes changed");
            let same_nan = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
            assert!(same_nan(levels.integrated_lufs, full.loudness.integrated_lufs), "{name}");
        }
    }
}
