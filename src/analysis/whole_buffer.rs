//! The whole-buffer analysis as it was before the streaming [`super::Analyzer`] (commit 4a0317a),
//! kept (only paths adjusted, and the `ebur128` crate's integrated loudness and true peak
//! replaced by BS.1770 gating of the K-weighted energy and the precise true-peak detector, as
//! the analyser now measures them) as the specification the analyser is tested against: the
//! same profile, with the signal held whole. A change to what the analysis measures must be made
//! here too (or this reference retired for property tests).

use super::dynamics::{BandEnvelope, BandEnvelopes, BLOCK_S};
use super::loudness::{
    block_energies, gated_loudness, k_weighted_energy, loudness_range_lu, short_term_percentiles, Loudness,
    ABSOLUTE_GATE_LUFS,
};
use super::spectrum::{band_levels_db, content_cutoff_hz, fft_len, grid_hz, power_to_db, PowerSpectrum};
use super::{dynamics, Profile, Spectrum, Stereo, WidthBand, PROFILE_SCHEMA_VERSION, WIDTH_BAND_EDGES_HZ};
use crate::audio::{lin_to_db, AudioBuffer};
use crate::dsp::crossover::{crossovers_for_rate, Crossover4, DEFAULT_CROSSOVERS_HZ};
use crate::dsp::truepeak::precise_true_peak_db;
use realfft::RealFftPlanner;

pub fn analyze(audio: &AudioBuffer, source: &str, lossy: bool) -> Profile {
    let rate = audio.sample_rate_hz;
    let (mid, side) = audio.mid_side();
    // Loudness (the costliest part, because of true peak) runs beside spectrum and dynamics.
    let (loudness, (spectra, envelopes)) = std::thread::scope(|s| {
        let loud = s.spawn(|| measure(audio));
        let env = s.spawn(|| envelopes(&mid, rate, DEFAULT_CROSSOVERS_HZ));
        let spectra = welch(&[&mid, &side], rate);
        let loudness = loud.join().unwrap_or_else(|_| measure(audio));
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
        level_motion: Some(dynamics::level_motion(&envelopes)),
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

pub fn measure(audio: &AudioBuffer) -> Loudness {
    let rate = audio.sample_rate_hz;
    // Integrated loudness from the same per-sample K-weighted energy as the sliding windows
    // (BS.1770 gating), true peak by the precise detector, sample peak the largest |sample|.
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    let (true_peak_db, energy) = std::thread::scope(|s| {
        let energy = s.spawn(|| k_weighted_energy(audio));
        let tp = precise_true_peak_db(&planes);
        (tp, energy.join().unwrap_or_default())
    });
    let hop = (rate / 10).max(1) as usize;
    let mut prefix = Vec::with_capacity(energy.len() / hop + 2);
    prefix.push(0f64);
    let mut acc = 0f64;
    for c in energy.chunks(hop) {
        acc += c.iter().map(|&e| f64::from(e)).sum::<f64>();
        prefix.push(acc);
    }
    let window = |blocks: usize| -> Vec<f64> {
        if prefix.len() <= blocks {
            // Shorter than the window: the one value over what there is.
            let n = energy.len().max(1) as f64;
            return vec![-0.691 + 10.0 * (acc / n).log10()];
        }
        (blocks..prefix.len())
            .map(|j| -0.691 + 10.0 * ((prefix[j] - prefix[j - blocks]) / (blocks * hop) as f64).log10())
            .collect()
    };
    let momentary = window(4);
    let short_term = window(30);
    let max_m = momentary.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let max_s = short_term.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let integrated = gated_loudness(&block_energies(&energy, rate, |_| 1.0));
    let range = loudness_range_lu(&short_term);
    let true_peak = true_peak_db;
    let sample_peak = lin_to_db(f64::from(audio.channels.iter().flatten().fold(0f32, |a, x| a.max(x.abs()))));
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

pub fn welch(signals: &[&[f32]], sample_rate_hz: u32) -> Vec<PowerSpectrum> {
    let frames = signals.first().map_or(0, |s| s.len());
    let n = fft_len(sample_rate_hz, frames);
    let hop = n / 2;
    let window: Vec<f32> =
        (0..n).map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32).collect();
    let w2: f64 = window.iter().map(|w| f64::from(*w) * f64::from(*w)).sum();
    let mut planner = RealFftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(n);
    let mut input = fft.make_input_vec();
    let mut output = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let bins = n / 2 + 1;
    let mut result = Vec::with_capacity(signals.len());
    for signal in signals {
        let mut acc = vec![0f64; bins];
        let mut count = 0usize;
        let mut start = 0usize;
        loop {
            let end = (start + n).min(signal.len());
            if start >= end {
                break;
            }
            for (i, slot) in input.iter_mut().enumerate() {
                *slot = signal.get(start + i).map_or(0.0, |x| x * window[i]);
            }
            if fft.process_with_scratch(&mut input, &mut output, &mut scratch).is_err() {
                break;
            }
            for (a, c) in acc.iter_mut().zip(&output) {
                *a += f64::from(c.norm_sqr());
            }
            count += 1;
            if end == signal.len() {
                break;
            }
            start += hop;
        }
        let norm = 1.0 / (n as f64 * w2 * count.max(1) as f64);
        let power =
            acc.iter().enumerate().map(|(k, p)| p * norm * if k == 0 || k == bins - 1 { 1.0 } else { 2.0 }).collect();
        result.push(PowerSpectrum { bin_hz: f64::from(sample_rate_hz) / n as f64, power });
    }
    result
}

pub fn envelopes(mid: &[f32], sample_rate_hz: u32, crossovers_hz: [f64; 3]) -> BandEnvelopes {
    let block = ((f64::from(sample_rate_hz) * BLOCK_S).round() as usize).max(1);
    let n_blocks = mid.len().div_ceil(block);
    let mut bands: Vec<BandEnvelope> = (0..4)
        .map(|_| BandEnvelope { peak: Vec::with_capacity(n_blocks), mean_square: Vec::with_capacity(n_blocks) })
        .collect();
    let mut xo = Crossover4::new(crossovers_hz, sample_rate_hz);
    for chunk in mid.chunks(block) {
        let mut peak = [0f64; 4];
        let mut ms = [0f64; 4];
        xo.split_each(chunk, |_, b| {
            for i in 0..4 {
                peak[i] = peak[i].max(b[i].abs());
                ms[i] += b[i] * b[i];
            }
        });
        for i in 0..4 {
            bands[i].peak.push(peak[i] as f32);
            bands[i].mean_square.push((ms[i] / chunk.len() as f64) as f32);
        }
    }
    let [f1, f2, f3] = crossovers_for_rate(crossovers_hz, sample_rate_hz);
    BandEnvelopes { edges_hz: [0.0, f1, f2, f3, f64::from(sample_rate_hz) / 2.0], bands }
}

#[cfg(test)]
mod tests {
    use super::super::test_audio::music;
    use super::super::{analyze as streaming_analyze, Analyzer};
    use super::*;

    /// `audio` pushed `chunk` frames at a time.
    fn chunked(audio: &AudioBuffer, chunk: usize, hint: Option<usize>) -> Profile {
        let mut a = Analyzer::new(audio.sample_rate_hz, audio.channel_count(), hint);
        let frames = audio.frames();
        for start in (0..frames).step_by(chunk.max(1)) {
            let end = frames.min(start + chunk);
            let planes: Vec<&[f32]> = audio.channels.iter().map(|c| &c[start..end]).collect();
            a.push(&planes);
        }
        a.push(&vec![&[][..]; audio.channel_count()]);
        a.finish("test", false)
    }

    /// Every number of a profile (envelopes included) by name; null (−inf) as −inf.
    fn numbers(p: &Profile) -> Vec<(String, f64)> {
        fn walk(v: &serde_json::Value, path: String, out: &mut Vec<(String, f64)>) {
            match v {
                serde_json::Value::Null => out.push((path, f64::NEG_INFINITY)),
                serde_json::Value::Number(n) => out.push((path, n.as_f64().unwrap_or(f64::NAN))),
                serde_json::Value::Array(a) => {
                    a.iter().enumerate().for_each(|(i, v)| walk(v, format!("{path}[{i}]"), out));
                }
                serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| walk(v, format!("{path}.{k}"), out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&serde_json::to_value(p).expect("profile serialises"), String::new(), &mut out);
        if let Some(env) = &p.envelopes {
            for (b, band) in env.bands.iter().enumerate() {
                for (i, (pk, ms)) in band.peak.iter().zip(&band.mean_square).enumerate() {
                    out.push((format!("env[{b}].peak[{i}]"), f64::from(*pk)));
                    out.push((format!("env[{b}].ms[{i}]"), f64::from(*ms)));
                }
            }
        }
        out
    }

    /// Largest difference between the two profiles' numbers, per kind of figure.
    fn differences(a: &Profile, b: &Profile) -> Vec<(String, f64)> {
        let (na, nb) = (numbers(a), numbers(b));
        assert_eq!(na.len(), nb.len(), "profiles hold different numbers of figures");
        let mut worst: Vec<(String, f64)> = Vec::new();
        for ((pa, va), (pb, vb)) in na.iter().zip(&nb) {
            assert_eq!(pa, pb);
            let d = if va == vb { 0.0 } else { (va - vb).abs() };
            let kind: String = pa.split('[').next().unwrap_or(pa).to_string();
            match worst.iter_mut().find(|(k, _)| *k == kind) {
                Some(w) => w.1 = w.1.max(d),
                None => worst.push((kind, d)),
            }
        }
        worst
    }

    /// Largest difference allowed between the streaming and the whole-buffer figures. The
    /// streaming momentary and short-term loudness sum the K-weighted energy per 100 ms in f64
    /// ([`super::super::loudness::KMeter`]) where the whole-buffer one stored it per sample in f32:
    /// up to 3.1e-9 LU apart on these signals. Everything else is bit-identical.
    fn tolerance(figure: &str) -> f64 {
        let k_weighted = [
            ".loudness.integrated_lufs",
            ".loudness.plr_db",
            ".loudness.max_momentary_lufs",
            ".loudness.max_short_term_lufs",
            ".loudness.range_lu",
            ".loudness.short_term_percentiles_lufs",
            ".loudness.short_term_series_lufs",
        ];
        if k_weighted.contains(&figure) {
            1e-6
        } else {
            0.0
        }
    }

    /// The streaming analyser gives the whole-buffer profile, bit for bit the same whatever the
    /// chunking and whether or not it was told the length.
    #[test]
    fn streaming_matches_the_whole_buffer_analysis() {
        let shipped = |name: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(name);
            crate::decode::decode_file(&path).map(|(audio, _)| audio).expect("shipped demo decodes")
        };
        let cases = [
            ("demo mix (FLAC)", shipped("demo_mix.flac")),
            ("demo reference (Ogg Vorbis)", shipped("demo_ref.ogg")),
            ("stereo 48k", music(48_000, 2, 20.0, 1)),
            ("mono 44.1k", music(44_100, 1, 12.0, 2)),
            ("stereo 96k", music(96_000, 2, 6.0, 3)),
            ("0.5 s", music(48_000, 2, 0.5, 4)),
            ("0.3 s 44.1k", music(44_100, 2, 0.3, 5)),
            ("5.1 48k", music(48_000, 6, 4.0, 6)),
            ("exactly one FFT window", music(48_000, 2, 32_768.0 / 48_000.0, 7)),
            ("silence", AudioBuffer::silent(48_000, 2, 5 * 48_000)),
            ("empty", AudioBuffer::silent(48_000, 2, 0)),
        ];
        for (name, audio) in &cases {
            let old = analyze(audio, "test", false);
            let new = streaming_analyze(audio, "test", false);
            for (figure, d) in differences(&old, &new) {
                if d > 0.0 {
                    println!("{name}: {figure} differs by {d:e}");
                }
                assert!(d <= tolerance(&figure), "{name}: {figure} differs by {d:e}");
            }
            for chunk in [1, 1000, 65_536, audio.frames().max(1)] {
                for hint in [Some(audio.frames()), None] {
                    if chunk == 1 && hint.is_some() {
                        continue;
                    }
                    let p = chunked(audio, chunk, hint);
                    assert!(p == new, "{name}: chunks of {chunk} frames (length hint {hint:?}) changed the profile");
                }
            }
        }
    }
}
