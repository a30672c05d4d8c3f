//! Property tests (proptest): the engine's promises hold for arbitrary inputs, not only for the
//! music and test signals the other specifications use.
//!
//! - the rendered master (solved settings rendered once, and the whole closed-loop `master`) is
//!   finite everywhere and never over the true-peak ceiling, by the `ebur128` crate's meter and
//!   by refmaster's own interpolator, for silence, DC, full-scale squares, impulses, white noise
//!   up to +12 dBFS, one-sample buffers and mixes of those, mono and stereo, 8–192 kHz;
//!   `master` refuses what it cannot master with an `Err`, never a panic;
//! - the solver's settings stay inside their documented bounds for arbitrary target profiles;
//! - settings JSON round-trips exactly;
//! - NaN and infinite samples in float WAVs are refused with their count and first position;
//! - every input saved under `tests/regressions/` (fuzzer finds) gives a clean result or a clean
//!   error.
//!
//! Every property runs 256 cases from a fixed seed, so CI sees the same cases on every run; a
//! failing case is saved in `tests/properties.proptest-regressions` and replayed first next time.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

use refmaster::analysis::loudness::true_peak_dbtp;
use refmaster::analysis::{analyze, Profile};
use refmaster::audio::AudioBuffer;
use refmaster::decode::decode_file;
use refmaster::dsp::biquad::FilterKind;
use refmaster::dsp::truepeak::{precise_true_peak_db, true_peak_db};
use refmaster::master::{master, MasterOptions};
use refmaster::settings::{
    limits, CompressorBand, DynamicsSettings, EqRender, EqSettings, LimiterSettings, SaturationSettings, Settings,
    WidthBandGain, WidthSettings, SETTINGS_VERSION,
};
use refmaster::solve::parametric::{ParametricBand, ParametricEq};
use refmaster::solve::{solve, SolveOptions, NO_WIDENING_BELOW_HZ};

/// 256 cases from a fixed seed (the same cases in CI and on every machine; `PROPTEST_RNG_SEED`
/// is not needed), failures persisted beside this file.
fn config() -> Config {
    Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x5EED_2024_0008),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/properties.proptest-regressions"))),
        // A failing render case is expensive: shrink, but not forever.
        max_shrink_iters: 200,
        ..Config::default()
    }
}

// ---- signals --------------------------------------------------------------------------------

/// One component of a test signal.
#[derive(Debug, Clone)]
enum Part {
    Silence,
    /// Constant offset (linear, may exceed full scale).
    Dc(f32),
    /// Square wave: period in samples, amplitude (1.0 = full scale).
    Square(usize, f32),
    /// A single sample of `amplitude` at `position` (fraction of the length).
    Impulse(f64, f32),
    /// Uniform white noise with this peak amplitude (up to +12 dBFS = 3.98) and seed.
    Noise(f32, u64),
    /// A sine at a quarter of the sample rate with 45° phase: every sample at 0.707 of its
    /// amplitude, so its true peak is 3 dB over its sample peak.
    QuarterRateSine(f32),
    /// A logarithmic sweep from 20 Hz to Nyquist, this amplitude.
    SweepToNyquist(f32),
    /// Pulses: period and width in samples, amplitude.
    Pulses(usize, usize, f32),
    /// Noise of this peak amplitude (seed) hard-clipped at full scale: a clipped master.
    Clipped(f32, u64),
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        1 => Just(Part::Silence),
        1 => prop_oneof![Just(1.0f32), Just(-1.0f32), -2.0f32..2.0].prop_map(Part::Dc),
        2 => (2usize..400, prop_oneof![Just(1.0f32), 0.0f32..1.0]).prop_map(|(p, a)| Part::Square(p, a)),
        2 => (0.0f64..1.0, prop_oneof![Just(1.0f32), Just(-1.0f32), -4.0f32..4.0]).prop_map(|(p, a)| Part::Impulse(p, a)),
        2 => (prop_oneof![Just(3.981_072f32), 0.0f32..3.981_072], any::<u64>()).prop_map(|(a, s)| Part::Noise(a, s)),
        1 => prop_oneof![Just(1.0f32), 0.0f32..1.5].prop_map(Part::QuarterRateSine),
        1 => prop_oneof![Just(1.0f32), 0.0f32..1.0].prop_map(Part::SweepToNyquist),
        1 => (2usize..2000, 1usize..50, prop_oneof![Just(1.0f32), -1.0f32..1.0]).prop_map(|(p, w, a)| Part::Pulses(p, w, a)),
        1 => (1.0f32..8.0, any::<u64>()).prop_map(|(a, s)| Part::Clipped(a, s)),
    ]
}

/// A channel: the sum of one to three parts.
fn channel() -> impl Strategy<Value = Vec<Part>> {
    prop::collection::vec(part(), 1..=3)
}

fn render_parts(parts: &[Part], frames: usize) -> Vec<f32> {
    let mut out = vec![0f32; frames];
    for p in parts {
        match *p {
            Part::Silence => {}
            Part::Dc(v) => out.iter_mut().for_each(|x| *x += v),
            Part::Square(period, a) => {
                for (i, x) in out.iter_mut().enumerate() {
                    *x += if (i % period) < period / 2 { a } else { -a };
                }
            }
            Part::Impulse(pos, a) => {
                let i = ((pos * frames as f64) as usize).min(frames - 1);
                out[i] += a;
            }
            Part::Noise(a, seed) => {
                let mut rng = common::Rng::new(seed);
                out.iter_mut().for_each(|x| *x += a * (2.0 * rng.unit() as f32 - 1.0));
            }
            Part::QuarterRateSine(a) => {
                for (i, x) in out.iter_mut().enumerate() {
                    *x += a * (std::f32::consts::FRAC_PI_2 * (i % 4) as f32 + std::f32::consts::FRAC_PI_4).sin();
                }
            }
            Part::SweepToNyquist(a) => {
                // From 20 Hz-equivalent (at 48 kHz) to Nyquist over the signal, in cycles per sample.
                let (f0, f1) = (20.0 / 48_000.0, 0.5f64);
                let k = (f1 / f0).ln() / frames.max(1) as f64;
                for (i, x) in out.iter_mut().enumerate() {
                    let phase = 2.0 * std::f64::consts::PI * f0 * ((k * i as f64).exp() - 1.0) / k;
                    *x += a * phase.sin() as f32;
                }
            }
            Part::Pulses(period, width, a) => {
                for (i, x) in out.iter_mut().enumerate() {
                    if i % period < width.min(period) {
                        *x += a;
                    }
                }
            }
            Part::Clipped(a, seed) => {
                let mut rng = common::Rng::new(seed);
                out.iter_mut().for_each(|x| *x += (a * (2.0 * rng.unit() as f32 - 1.0)).clamp(-1.0, 1.0));
            }
        }
    }
    out
}

/// How a stereo mix's right channel relates to its left.
#[derive(Debug, Clone)]
enum Stereo {
    Mono,
    DualMono,
    Inverted,
    Independent(Vec<Part>),
}

/// An arbitrary short mix: rate, length (1 sample to 1 s), mono or stereo.
#[derive(Debug, Clone)]
struct Mix {
    rate: u32,
    /// Length as a fraction of one second (at least one sample).
    length: f64,
    left: Vec<Part>,
    stereo: Stereo,
}

impl Mix {
    fn buffer(&self) -> AudioBuffer {
        let frames = ((self.length * f64::from(self.rate)) as usize).max(1);
        let left = render_parts(&self.left, frames);
        let channels = match &self.stereo {
            Stereo::Mono => vec![left],
            Stereo::DualMono => vec![left.clone(), left],
            Stereo::Inverted => {
                let right = left.iter().map(|x| -x).collect();
                vec![left, right]
            }
            Stereo::Independent(parts) => vec![left, render_parts(parts, frames)],
        };
        AudioBuffer { sample_rate_hz: self.rate, channels }
    }
}

fn rate() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![8_000u32, 11_025, 16_000, 22_050, 44_100, 48_000, 88_200, 96_000, 176_400, 192_000]),
        8_000u32..=192_000,
    ]
}

fn mix() -> impl Strategy<Value = Mix> {
    let length = prop_oneof![
        1 => Just(0.0),           // one sample
        1 => 0.0f64..0.01,        // a few samples to 10 ms
        2 => 0.3f64..0.45,        // around the 400 ms loudness block
        4 => 0.45f64..=1.0,       // long enough to be measured
    ];
    let stereo = prop_oneof![
        1 => Just(Stereo::Mono),
        1 => Just(Stereo::DualMono),
        1 => Just(Stereo::Inverted),
        3 => channel().prop_map(Stereo::Independent),
    ];
    (rate(), length, channel(), stereo).prop_map(|(rate, length, left, stereo)| Mix { rate, length, left, stereo })
}

// ---- profiles -------------------------------------------------------------------------------

/// A real stereo reference profile (2 s of the shipped demo reference, analysed once).
fn base_target() -> &'static Profile {
    static P: OnceLock<Profile> = OnceLock::new();
    P.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join("demo_ref.ogg");
        let (mut audio, info) = decode_file(&path).expect("the shipped demo reference decodes");
        let keep = 4 * audio.sample_rate_hz as usize;
        audio.channels.iter_mut().for_each(|c| c.truncate(keep));
        analyze(&audio, "demo_ref.ogg", info.lossy)
    })
}

/// A real stereo mix profile with envelopes (3 s of the shipped demo mix, analysed once).
fn base_mix() -> &'static Profile {
    static P: OnceLock<Profile> = OnceLock::new();
    P.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join("demo_mix.flac");
        let (mut audio, info) = decode_file(&path).expect("the shipped demo mix decodes");
        let keep = 4 * audio.sample_rate_hz as usize;
        audio.channels.iter_mut().for_each(|c| c.truncate(keep));
        analyze(&audio, "demo_mix.flac", info.lossy)
    })
}

/// Any finite f64, realistic or extreme.
fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -60.0f64..60.0,
        1 => -1e6f64..1e6,
        1 => prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        1 => prop::sample::select(vec![f64::MAX, f64::MIN, f64::MIN_POSITIVE, -f64::MIN_POSITIVE, 0.0, -0.0]),
    ]
}

/// How a target profile differs from the real one.
#[derive(Debug, Clone)]
struct Perturbation {
    mid: Vec<f64>,
    side: Vec<f64>,
    lufs: f64,
    range_lu: f64,
    cutoff_hz: f64,
    width_db: f64,
    crest: Vec<f64>,
    spread: Vec<f64>,
}

fn perturbation() -> impl Strategy<Value = Perturbation> {
    let n = base_target().spectrum.mid_db.len();
    let bands = base_target().dynamics.len();
    (
        prop::collection::vec(finite(), n),
        prop::collection::vec(finite(), n),
        -70.0f64..=0.0,
        finite(),
        prop_oneof![20.0f64..100_000.0, finite()],
        finite(),
        prop::collection::vec(finite(), bands),
        prop::collection::vec(finite(), bands),
    )
        .prop_map(|(mid, side, lufs, range_lu, cutoff_hz, width_db, crest, spread)| Perturbation {
            mid,
            side,
            lufs,
            range_lu,
            cutoff_hz,
            width_db,
            crest,
            spread,
        })
}

fn perturbed(base: &Profile, p: &Perturbation) -> Profile {
    let mut t = base.clone();
    t.source = "perturbed target".into();
    for (v, d) in t.spectrum.mid_db.iter_mut().zip(&p.mid) {
        *v += d;
    }
    for (v, d) in t.spectrum.side_db.iter_mut().zip(&p.side) {
        *v += d;
    }
    t.loudness.integrated_lufs = p.lufs;
    t.loudness.range_lu = p.range_lu;
    t.spectrum.content_cutoff_hz = p.cutoff_hz;
    t.stereo.width_db = p.width_db;
    for ((b, c), s) in t.dynamics.iter_mut().zip(&p.crest).zip(&p.spread) {
        b.crest_db = *c;
        b.spread_db = *s;
    }
    t.envelopes = None;
    t
}

/// Arbitrary user options within what the CLI accepts.
fn solve_options() -> impl Strategy<Value = SolveOptions> {
    (
        0.0f64..=1.0,
        0.02f64..=3.0,
        0.0f64..=limits::EQ_GAIN_DB,
        0.0f64..=limits::WIDTH_GAIN_DB,
        prop_oneof![Just(-1.0), Just(0.0), Just(-20.0), -20.0f64..=0.0],
        prop::option::of(-70.0f64..=0.0),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(amount, smoothing_octaves, max_eq_db, max_width_db, ceiling_dbtp, target_lufs, (eq, dynamics, width))| {
                SolveOptions {
                    amount,
                    smoothing_octaves,
                    max_eq_db,
                    max_width_db,
                    ceiling_dbtp,
                    target_lufs,
                    eq,
                    dynamics,
                    width,
                    limiter: true,
                }
            },
        )
}

// ---- checks ---------------------------------------------------------------------------------

/// Finite everywhere, and at or under `ceiling` by both true-peak meters.
fn check_master_audio(audio: &AudioBuffer, ceiling: f64, what: &str) -> Result<(), TestCaseError> {
    for (c, ch) in audio.channels.iter().enumerate() {
        if let Some(i) = ch.iter().position(|x| !x.is_finite()) {
            return Err(TestCaseError::fail(format!("{what}: non-finite sample {} at frame {i}, channel {c}", ch[i])));
        }
    }
    let ebu = true_peak_dbtp(audio);
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    let ours = true_peak_db(&planes);
    let precise = precise_true_peak_db(&planes);
    prop_assert!(ebu <= ceiling, "{what}: ebur128 true peak {ebu:.4} dBTP over the {ceiling:.4} dBTP ceiling");
    prop_assert!(ours <= ceiling, "{what}: refmaster true peak {ours:.4} dBTP over the {ceiling:.4} dBTP ceiling");
    // The detector the safety trim and the writer's guard hold to the ceiling (cut at Nyquist,
    // stricter than the two above on full-band content).
    prop_assert!(precise <= ceiling, "{what}: precise true peak {precise:.4} dBTP over the {ceiling:.4} dBTP ceiling");
    Ok(())
}

/// Settings must not hold NaN or infinity anywhere: serde_json writes those as `null`, and no
/// settings field is optional.
fn check_no_null(s: &Settings) -> Result<(), TestCaseError> {
    fn walk(v: &serde_json::Value, path: &str) -> Result<(), String> {
        match v {
            serde_json::Value::Null => Err(format!("{path} is null (NaN or infinite)")),
            serde_json::Value::Array(a) => a.iter().enumerate().try_for_each(|(i, x)| walk(x, &format!("{path}[{i}]"))),
            serde_json::Value::Object(o) => o.iter().try_for_each(|(k, x)| walk(x, &format!("{path}.{k}"))),
            _ => Ok(()),
        }
    }
    let v = serde_json::to_value(s).map_err(|e| TestCaseError::fail(e.to_string()))?;
    walk(&v, "settings").map_err(TestCaseError::fail)
}

// ---- (a) the rendered master is finite and under the ceiling ----------------------------------

proptest! {
    #![proptest_config(config())]

    /// Settings solved against an arbitrary target, rendered once: finite, under the ceiling.
    #[test]
    fn rendered_output_is_finite_and_under_the_ceiling(m in mix(), p in perturbation(), opts in solve_options()) {
        let audio = m.buffer();
        let profile = analyze(&audio, "mix", false);
        let target = perturbed(base_target(), &p);
        let (settings, _) = solve(&profile, &target, &opts);
        prop_assert!(settings.validate("solved").is_ok(), "{:?}", settings.validate("solved"));
        let rendered = refmaster::render::render(&audio, &settings).expect("mono or stereo renders");
        prop_assert_eq!(rendered.audio.frames(), audio.frames());
        prop_assert_eq!(rendered.audio.sample_rate_hz, audio.sample_rate_hz);
        prop_assert_eq!(rendered.audio.channel_count(), audio.channel_count());
        check_master_audio(&rendered.audio, opts.ceiling_dbtp, "render")?;
    }

    /// The whole closed loop: a clean `Err` for what cannot be mastered, otherwise finite and
    /// under the ceiling, with valid settings that render back to the same samples.
    #[test]
    fn master_is_finite_and_under_the_ceiling_or_a_clean_error(m in mix(), p in perturbation(), opts in solve_options()) {
        let audio = m.buffer();
        let profile = analyze(&audio, "mix", false);
        let target = perturbed(base_target(), &p);
        let options = MasterOptions { solve: opts.clone(), ..MasterOptions::default() };
        match master(&audio, &profile, &target, &options, &|_| {}) {
            Err(e) => {
                let line = e.to_string();
                prop_assert!(!line.is_empty() && !line.contains('\n'), "error is not one line: {line:?}");
            }
            Ok((done, done_audio)) => {
                prop_assert!(done.settings.validate("mastered").is_ok(), "{:?}", done.settings.validate("mastered"));
                check_no_null(&done.settings)?;
                prop_assert_eq!(done_audio.frames(), audio.frames());
                check_master_audio(&done_audio, opts.ceiling_dbtp, "master")?;
            }
        }
    }
}

// ---- (b) the solver stays inside its bounds ---------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn solved_settings_stay_within_their_bounds(p in perturbation(), q in perturbation(), opts in solve_options(), perturb_mix in any::<bool>()) {
        let mix = if perturb_mix {
            let mut m = perturbed(base_mix(), &q);
            m.envelopes = base_mix().envelopes.clone();
            m.loudness = base_mix().loudness.clone();
            m
        } else {
            base_mix().clone()
        };
        let target = perturbed(base_target(), &p);
        let (s, notes) = solve(&mix, &target, &opts);
        prop_assert!(s.validate("solved").is_ok(), "{:?}", s.validate("solved"));
        check_no_null(&s)?;
        // (A note may say "+inf dB" when the profile holds values near f64::MAX: cosmetic.)
        for n in &notes {
            prop_assert!(!n.contains("NaN"), "note shows NaN: {n}");
        }
        for (i, g) in s.eq.mid_gain_db.iter().chain(&s.eq.side_gain_db).enumerate() {
            prop_assert!(g.abs() <= opts.max_eq_db, "EQ gain [{i}] {g} dB beyond ±{} dB", opts.max_eq_db);
        }
        for b in &s.width.bands {
            prop_assert!(b.side_gain_db.abs() <= opts.max_width_db, "width {} dB beyond ±{} dB", b.side_gain_db, opts.max_width_db);
            let centre = (b.low_hz * b.high_hz).sqrt();
            prop_assert!(
                centre > NO_WIDENING_BELOW_HZ || b.side_gain_db <= 0.0,
                "band centred at {centre:.1} Hz widens by {} dB below {NO_WIDENING_BELOW_HZ} Hz", b.side_gain_db
            );
        }
        prop_assert!(s.limiter.drive_db.is_finite());
        prop_assert_eq!(s.limiter.ceiling_dbtp, opts.ceiling_dbtp);
        if !opts.eq {
            prop_assert!(s.eq.mid_gain_db.iter().chain(&s.eq.side_gain_db).all(|g| *g == 0.0));
        }
        if !opts.width {
            prop_assert!(!s.width.enabled);
        }
        if !opts.dynamics {
            prop_assert!(!s.dynamics.enabled);
        }
    }
}

// ---- (c) settings JSON round-trips exactly ----------------------------------------------------

/// A number in `lo..=hi` that is sometimes exactly an end, a round number, -0.0 or subnormal.
fn in_range(lo: f64, hi: f64) -> impl Strategy<Value = f64> + Clone {
    let mut specials =
        vec![lo, hi, lo.midpoint(hi), 0.0, -0.0, f64::MIN_POSITIVE, -f64::MIN_POSITIVE, 4.9e-324, -4.9e-324];
    specials.retain(|v| (lo..=hi).contains(v));
    prop_oneof![6 => lo..=hi, 1 => prop::sample::select(specials)]
}

fn parametric() -> impl Strategy<Value = ParametricEq> {
    let band = (
        prop::sample::select(vec![FilterKind::LowShelf, FilterKind::HighShelf, FilterKind::Peaking]),
        in_range(1.0, 100_000.0),
        in_range(-48.0, 48.0),
        in_range(0.01, 100.0),
    )
        .prop_map(|(kind, freq_hz, gain_db, q)| ParametricBand { kind, freq_hz, gain_db, q });
    (in_range(-48.0, 48.0), prop::collection::vec(band, 0..=12), in_range(0.0, 1e3), in_range(0.0, 1e3)).prop_map(
        |(preamp_db, bands, fit_rms_error_db, fit_max_error_db)| ParametricEq {
            preamp_db,
            bands,
            fit_rms_error_db,
            fit_max_error_db,
        },
    )
}

fn eq_settings() -> impl Strategy<Value = EqSettings> {
    prop::collection::btree_set((1.0f64..=100_000.0).prop_map(f64::to_bits), 2..80)
        .prop_flat_map(|bits| {
            let mut f: Vec<f64> = bits.into_iter().map(f64::from_bits).collect();
            f.sort_by(f64::total_cmp);
            let n = f.len();
            let g = in_range(-limits::EQ_GAIN_DB, limits::EQ_GAIN_DB);
            (
                any::<bool>(),
                Just(f),
                prop::collection::vec(g.clone(), n),
                prop::collection::vec(g, n),
                parametric(),
                parametric(),
                any::<bool>(),
                in_range(8_000.0, 768_000.0),
            )
        })
        .prop_map(
            |(enabled, frequencies_hz, mid_gain_db, side_gain_db, parametric_mid, parametric_side, filters, rate)| {
                EqSettings {
                    enabled,
                    frequencies_hz,
                    mid_gain_db,
                    side_gain_db,
                    parametric_mid,
                    parametric_side,
                    render: if filters { EqRender::Filters } else { EqRender::Curve },
                    filter_sample_rate_hz: rate,
                }
            },
        )
}

fn compressor() -> impl Strategy<Value = CompressorBand> {
    (
        in_range(limits::THRESHOLD_DBFS.0, limits::THRESHOLD_DBFS.1),
        in_range(limits::RATIO.0, limits::RATIO.1),
        in_range(limits::KNEE_DB.0, limits::KNEE_DB.1),
        in_range(limits::ATTACK_MS.0, limits::ATTACK_MS.1),
        in_range(limits::RELEASE_MS.0, limits::RELEASE_MS.1),
        in_range(limits::MAKEUP_DB.0, limits::MAKEUP_DB.1),
    )
        .prop_map(|(threshold_dbfs, ratio, knee_db, attack_ms, release_ms, makeup_db)| CompressorBand {
            threshold_dbfs,
            ratio,
            knee_db,
            attack_ms,
            release_ms,
            makeup_db,
        })
}

fn dynamics_settings() -> impl Strategy<Value = DynamicsSettings> {
    (
        any::<bool>(),
        prop::collection::btree_set((20.0f64..=20_000.0).prop_map(f64::to_bits), 3..=3),
        prop::collection::vec(compressor(), 4),
    )
        .prop_map(|(enabled, xo, bands)| {
            let mut f: Vec<f64> = xo.into_iter().map(f64::from_bits).collect();
            f.sort_by(f64::total_cmp);
            DynamicsSettings { enabled, crossovers_hz: [f[0], f[1], f[2]], bands, linked: false, feedback: false }
        })
}

/// Width bands in any number, ascending and never overlapping (as the settings require), each
/// with any gain in bounds.
fn width_settings() -> impl Strategy<Value = WidthSettings> {
    let edges = prop::collection::btree_set((0.0f64..=100_000.0).prop_map(f64::to_bits), 0..71);
    let gains = prop::collection::vec(in_range(-limits::WIDTH_GAIN_DB, limits::WIDTH_GAIN_DB), 70);
    (any::<bool>(), edges, gains).prop_map(|(enabled, edges, gains)| {
        let mut e: Vec<f64> = edges.into_iter().map(f64::from_bits).collect();
        e.sort_by(f64::total_cmp);
        let bands = e
            .windows(2)
            .zip(gains)
            .map(|(w, side_gain_db)| WidthBandGain { low_hz: w[0], high_hz: w[1], side_gain_db })
            .collect();
        WidthSettings { enabled, bands }
    })
}

fn limiter_settings() -> impl Strategy<Value = LimiterSettings> {
    (
        any::<bool>(),
        in_range(limits::DRIVE_DB.0, limits::DRIVE_DB.1),
        in_range(limits::CEILING_DBTP.0, limits::CEILING_DBTP.1),
        in_range(limits::LOOKAHEAD_MS.0, limits::LOOKAHEAD_MS.1),
        in_range(limits::RELEASE_MS.0, limits::RELEASE_MS.1),
        in_range(-70.0, 0.0),
        prop_oneof![Just(0.0), in_range(limits::OUTPUT_TRIM_DB.0, limits::OUTPUT_TRIM_DB.1)],
    )
        .prop_map(|(enabled, drive_db, ceiling_dbtp, lookahead_ms, release_ms, target_lufs, output_trim_db)| {
            LimiterSettings { enabled, drive_db, ceiling_dbtp, lookahead_ms, release_ms, target_lufs, output_trim_db }
        })
}

fn saturation_settings() -> impl Strategy<Value = SaturationSettings> {
    (
        any::<bool>(),
        in_range(limits::DRIVE_DB.0, limits::DRIVE_DB.1),
        in_range(limits::SATURATION_KNEE_DB.0, limits::SATURATION_KNEE_DB.1),
        in_range(0.0, 1.0),
    )
        .prop_map(|(enabled, drive_db, knee_db, mix)| SaturationSettings { enabled, drive_db, knee_db, mix })
}

fn settings() -> impl Strategy<Value = Settings> {
    (eq_settings(), dynamics_settings(), width_settings(), saturation_settings(), limiter_settings(), any::<u64>())
        .prop_map(|(eq, dynamics, width, saturation, limiter, dither_seed)| Settings {
            version: SETTINGS_VERSION,
            eq,
            dynamics,
            width,
            saturation,
            limiter,
            dither_seed,
            mix_notes: Vec::new(),
        })
}

/// Bit-level equality (PartialEq would call -0.0 and 0.0 equal).
fn same_bits(a: &Settings, b: &Settings) -> bool {
    let bits = |s: &Settings| -> Vec<u64> {
        fn walk(v: &serde_json::Value, out: &mut Vec<u64>) {
            match v {
                serde_json::Value::Number(n) => out.push(n.as_f64().map_or(0, f64::to_bits)),
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&serde_json::to_value(s).unwrap_or_default(), &mut out);
        out
    };
    bits(a) == bits(b)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn settings_json_round_trips_exactly(s in settings()) {
        prop_assert!(s.validate("generated").is_ok(), "generator made invalid settings: {:?}", s.validate("generated"));
        let json = s.to_json();
        let back = Settings::from_json(&json, "round-trip.json");
        prop_assert!(back.is_ok(), "valid settings refused: {:?}", back.as_ref().err());
        let back = back.unwrap();
        if back != s {
            // Name the first field that changed, with both values' bits.
            let (a, b) = (serde_json::to_value(&s).unwrap(), serde_json::to_value(&back).unwrap());
            prop_assert!(false, "round trip changed the settings: {}", first_difference(&a, &b, "settings"));
        }
        prop_assert!(same_bits(&s, &back), "round trip changed the sign of a zero");
        // And the text is stable: writing the parsed settings gives the same text.
        prop_assert_eq!(back.to_json(), json);
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any settings a file may hold (hand-edited to the limits) render an arbitrary mix to
    /// finite samples, the limiter holding its ceiling by refmaster's own meter. (The ebur128
    /// meter's view of the ceiling is the first property's job.)
    #[test]
    fn any_valid_settings_render_finite_and_under_the_ceiling(s in settings(), m in mix()) {
        let audio = m.buffer();
        let rendered = refmaster::render::render(&audio, &s).expect("mono or stereo renders");
        prop_assert_eq!(rendered.audio.frames(), audio.frames());
        for (c, ch) in rendered.audio.channels.iter().enumerate() {
            if let Some(i) = ch.iter().position(|x| !x.is_finite()) {
                return Err(TestCaseError::fail(format!("non-finite sample {} at frame {i}, channel {c}", ch[i])));
            }
        }
        if s.limiter.enabled {
            let planes: Vec<&[f32]> = rendered.audio.channels.iter().map(Vec::as_slice).collect();
            let ours = true_peak_db(&planes);
            prop_assert!(ours <= s.limiter.ceiling_dbtp, "true peak {ours:.4} dBTP over the {:.4} dBTP ceiling", s.limiter.ceiling_dbtp);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The same, focused on the numbers: 512 arbitrary gains per case in one settings file (a
    /// misread float is rare per number, so the whole-settings property may miss it).
    #[test]
    fn settings_numbers_round_trip_exactly(gains in prop::collection::vec(-limits::EQ_GAIN_DB..=limits::EQ_GAIN_DB, 512)) {
        let mut s = settings_template();
        s.eq.frequencies_hz = (0..gains.len()).map(|i| 20.0 + i as f64).collect();
        s.eq.mid_gain_db = gains.clone();
        s.eq.side_gain_db = gains;
        let back = Settings::from_json(&s.to_json(), "numbers.json").expect("valid settings read back");
        for (i, (a, b)) in s.eq.mid_gain_db.iter().zip(&back.eq.mid_gain_db).enumerate() {
            prop_assert!(a.to_bits() == b.to_bits(), "mid_gain_db[{i}]: {a:?} was read back as {b:?} (written as {})", serde_json::to_string(a).unwrap());
        }
    }
}

/// A small valid settings value to edit.
fn settings_template() -> Settings {
    let (s, _) = solve(base_mix(), base_target(), &SolveOptions::default());
    s
}

fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> String {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.iter()
                .find_map(|(k, v)| (y.get(k) != Some(v)).then(|| first_difference(v, &y[k], &format!("{path}.{k}"))))
        }
        .unwrap_or_default(),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| (v != w).then(|| first_difference(v, w, &format!("{path}[{i}]"))))
            .unwrap_or_default(),
        _ => {
            let bits = |v: &Value| v.as_f64().map(|f| format!("{f:e} (bits {:#018x})", f.to_bits()));
            format!("{path}: {} became {}", bits(a).unwrap_or(a.to_string()), bits(b).unwrap_or(b.to_string()))
        }
    }
}

// ---- (d) NaN and infinite samples are refused, counted and located ------------------------------

/// Writes a 64-bit float WAV (hound writes 32-bit float only).
fn write_wav_f64(path: &Path, rate: u32, channels: &[Vec<f64>]) {
    let ch = channels.len() as u16;
    let frames = channels[0].len();
    let data_len = (frames * channels.len() * 8) as u32;
    let mut b = Vec::with_capacity(data_len as usize + 64);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(4 + 26 + 12 + 8 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&18u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes()); // WAVE_FORMAT_IEEE_FLOAT
    b.extend_from_slice(&ch.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * u32::from(ch) * 8).to_le_bytes());
    b.extend_from_slice(&(ch * 8).to_le_bytes());
    b.extend_from_slice(&64u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(b"fact");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&(frames as u32).to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        for c in channels {
            b.extend_from_slice(&c[i].to_le_bytes());
        }
    }
    std::fs::write(path, b).expect("write f64 WAV");
}

#[derive(Debug, Clone, Copy)]
enum Bad {
    Nan,
    NegativeNan,
    PayloadNan(u32),
    Inf,
    NegInf,
}

impl Bad {
    fn f32(self) -> f32 {
        match self {
            Bad::Nan => f32::NAN,
            Bad::NegativeNan => -f32::NAN,
            Bad::PayloadNan(p) => f32::from_bits(0x7F80_0000 | (p & 0x007F_FFFF).max(1)),
            Bad::Inf => f32::INFINITY,
            Bad::NegInf => f32::NEG_INFINITY,
        }
    }
    fn f64(self) -> f64 {
        match self {
            Bad::Nan => f64::NAN,
            Bad::NegativeNan => -f64::NAN,
            Bad::PayloadNan(p) => f64::from_bits(0x7FF0_0000_0000_0000 | u64::from(p.max(1))),
            Bad::Inf => f64::INFINITY,
            Bad::NegInf => f64::NEG_INFINITY,
        }
    }
}

fn bad() -> impl Strategy<Value = Bad> {
    prop_oneof![
        Just(Bad::Nan),
        Just(Bad::NegativeNan),
        any::<u32>().prop_map(Bad::PayloadNan),
        Just(Bad::Inf),
        Just(Bad::NegInf)
    ]
}

fn scratch_dir() -> &'static tempfile::TempDir {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(common::temp_dir)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn non_finite_samples_in_float_wavs_are_refused_with_count_and_position(
        rate in rate(),
        channels in 1usize..=6,
        extra in 0.0f64..0.3,
        bads in prop::collection::vec((0.0f64..1.0, 0usize..6, bad()), 1..20),
        double in any::<bool>(),
        case in any::<u64>(),
    ) {
        let frames = (f64::from(rate) * (0.401 + extra)) as usize;
        let mut planes: Vec<Vec<f64>> = (0..channels)
            .map(|c| common::sine(rate, 997.0 + 100.0 * c as f64, -12.0, 0.0, frames).into_iter().map(f64::from).collect())
            .collect();
        let mut hit = std::collections::BTreeSet::new();
        for &(pos, ch, b) in &bads {
            let (i, c) = (((pos * frames as f64) as usize).min(frames - 1), ch % channels);
            planes[c][i] = if double { b.f64() } else { f64::from(b.f32()) };
            hit.insert((i, c));
        }
        let path = scratch_dir().path().join(format!("nan-{case:016x}.wav"));
        if double {
            write_wav_f64(&path, rate, &planes);
        } else {
            let p32: Vec<Vec<f32>> = planes.iter().map(|c| c.iter().map(|&v| v as f32).collect()).collect();
            common::write_wav_f32(&path, rate, &p32);
        }
        let result = decode_file(&path);
        let _ = std::fs::remove_file(&path);
        let Err(e) = result else {
            return Err(TestCaseError::fail(format!("{} non-finite samples were passed through", hit.len())));
        };
        let line = e.to_string();
        let &(frame, ch) = hit.iter().next().expect("at least one");
        prop_assert!(line.contains(&path.display().to_string()), "error does not name the file: {line}");
        prop_assert!(line.contains(&format!("{} NaN/infinite samples", hit.len())), "wrong count (want {}): {line}", hit.len());
        prop_assert!(line.contains(&format!("frame {frame}, channel {}", ch + 1)), "wrong first position (want frame {frame}, channel {}): {line}", ch + 1);
    }
}

// ---- fuzzer finds: each saved input gives a clean result or a clean error ---------------------

fn regression_inputs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files.retain(|p| p.file_name().is_some_and(|n| n != "README.md"));
    files
}

/// Inputs the fuzzers found (or that once crashed something), replayed through the same entry
/// points: `decode_file` (then analyse, solve and render what decodes), `Settings::from_json`.
#[test]
fn saved_regression_inputs_give_a_clean_result_or_a_clean_error() {
    let files = regression_inputs();
    for path in &files {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "json" {
            let text = String::from_utf8_lossy(&std::fs::read(path).expect("read regression input")).into_owned();
            match Settings::from_json(&text, "regression.json") {
                Ok(s) => assert!(s.validate("x").is_ok()),
                Err(e) => assert!(!e.to_string().contains('\n'), "{}: {e}", path.display()),
            }
            continue;
        }
        match decode_file(path) {
            Err(e) => {
                let line = e.to_string();
                assert!(line.contains(&path.display().to_string()) && !line.contains('\n'), "{line}");
            }
            Ok((audio, info)) => {
                assert!(audio.channels.iter().flatten().all(|x| x.is_finite()));
                let p = analyze(&audio, "regression", info.lossy);
                if audio.channel_count() <= 2 {
                    let (s, _) = solve(&p, base_target(), &SolveOptions::default());
                    let r = refmaster::render::render(&audio, &s).expect("renders");
                    check_master_audio(&r.audio, -1.0, "regression render").expect("under the ceiling");
                }
            }
        }
    }
    println!("replayed {} saved regression inputs from tests/regressions/", files.len());
}
