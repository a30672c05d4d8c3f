//! Stage 2: measure a file into a serialisable [`Profile`]: loudness, the long-term spectrum of
//! mid and side, dynamics per band, and the stereo image. A profile is all the solver needs of a
//! reference, so a saved profile can stand in for the audio.

pub mod dynamics;
pub mod loudness;
pub mod spectrum;

use serde::{Deserialize, Serialize};

use crate::audio::AudioBuffer;
use crate::dsp::crossover::DEFAULT_CROSSOVERS_HZ;
pub use dynamics::{BandDynamics, BandEnvelopes};
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
    /// Dynamics in the four compressor bands.
    pub dynamics: Vec<BandDynamics>,
    /// Stereo image.
    pub stereo: Stereo,
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

/// Analyses `audio` (any channel count; mid/side use the first two channels).
pub fn analyze(audio: &AudioBuffer, source: &str, lossy: bool) -> Profile {
    let rate = audio.sample_rate_hz;
    let (mid, side) = audio.mid_side();
    // Loudness (the costliest part, because of true peak) runs beside spectrum and dynamics.
    let (loudness, (spectra, envelopes)) = std::thread::scope(|s| {
        let loud = s.spawn(|| loudness::measure(audio));
        let env = s.spawn(|| dynamics::envelopes(&mid, rate, DEFAULT_CROSSOVERS_HZ));
        let spectra = spectrum::welch(&[&mid, &side], rate);
        let loudness = loud.join().unwrap_or_else(|_| loudness::measure(audio));
        let env = env.join().unwrap_or_default();
        (loudness, (spectra, env))
    });
    let grid = grid_hz();
    let nyquist = f64::from(rate) / 2.0;
    let mid_db = band_levels_db(&spectra[0], &grid);
    let side_db = band_levels_db(&spectra[1], &grid);
    let cutoff = content_cutoff_hz(&grid, &mid_db, nyquist);
    let stereo = stereo(audio, &spectra[0], &spectra[1]);
    Profile {
        schema_version: PROFILE_SCHEMA_VERSION,
        source: source.to_string(),
        sample_rate_hz: rate,
        channels: audio.channel_count(),
        duration_s: audio.duration_s(),
        lossy,
        loudness,
        spectrum: Spectrum { frequencies_hz: grid, mid_db, side_db, content_cutoff_hz: cutoff },
        dynamics: dynamics::band_dynamics(&envelopes),
        stereo,
        envelopes: Some(envelopes),
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

fn stereo(audio: &AudioBuffer, mid: &PowerSpectrum, side: &PowerSpectrum) -> Stereo {
    let (mut ll, mut rr, mut lr) = (0f64, 0f64, 0f64);
    if let [l, r, ..] = audio.channels.as_slice() {
        for (a, b) in l.iter().zip(r) {
            let (a, b) = (f64::from(*a), f64::from(*b));
            ll += a * a;
            rr += b * b;
            lr += a * b;
        }
    }
    let (correlation, balance_db) = if audio.channel_count() < 2 {
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
    Ok(p)
}
