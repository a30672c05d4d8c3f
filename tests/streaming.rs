//! The mastering loop as a stream: where the mix's samples live (memory or its file, decoded
//! again for every pass) and whether the rendered signal is kept between reads or rendered again
//! change the memory used, never the master; and memory does not grow with the mix's length.

mod common;

use std::path::Path;

use common::{kellet_pink, temp_dir, write_wav_i16, Rng};
use refmaster::analysis::analyze;
use refmaster::master::{master_stream, CollectSink, MasterOptions, MasterSink, WriteInfo};
use refmaster::source::{open_mix, FrameSource, Mix};
use refmaster::AudioBuffer;

const RATE: u32 = 44_100;

/// A dynamic stereo "song": pink noise with a kick-like envelope, panned differently per channel,
/// and a quiet bridge, so the loop compresses, saturates and limits.
fn song(seconds: f64, seed: u64) -> Vec<Vec<f32>> {
    let n = (seconds * f64::from(RATE)) as usize;
    let base_l = kellet_pink(seed, n, -20.0);
    let base_r = kellet_pink(seed + 1, n, -20.0);
    let mut rng = Rng::new(seed + 2);
    let beat = (0.5 * f64::from(RATE)) as usize;
    let accent: Vec<f32> = (0..n / beat + 1).map(|_| (1.0 + 2.5 * rng.unit()) as f32).collect();
    let shape = |i: usize| {
        let t = (i % beat) as f32 / beat as f32;
        let kick = accent[i / beat] * (-t * 12.0).exp();
        let bridge = if (i / RATE as usize) % 40 >= 30 { 0.3 } else { 1.0 };
        (0.4 + kick) * bridge
    };
    let l = base_l.iter().enumerate().map(|(i, x)| x * shape(i)).collect();
    let r = base_r.iter().enumerate().map(|(i, x)| 0.7 * x * shape(i)).collect();
    vec![l, r]
}

fn master_of(source: &Mix, mix_profile: &refmaster::analysis::Profile, opts: &MasterOptions) -> AudioBuffer {
    let target = {
        // A denser, brighter reference: the loop EQs, compresses, saturates and limits.
        let mut t = song(20.0, 99);
        for c in t.iter_mut() {
            let mut prev = 0f32;
            for x in c.iter_mut() {
                let y = *x - 0.6 * prev;
                prev = *x;
                *x = (y * 2.5).clamp(-0.95, 0.95);
            }
        }
        analyze(&AudioBuffer { sample_rate_hz: RATE, channels: t }, "reference", false)
    };
    let mut sink = CollectSink::default();
    master_stream(source, mix_profile, &target, opts, &|_| {}, &mut sink).expect("masters");
    sink.audio.expect("the master was written")
}

#[test]
fn a_mix_read_again_from_its_file_masters_to_the_same_bits_as_one_held_in_memory() {
    let dir = temp_dir();
    let path = dir.path().join("mix.wav");
    write_wav_i16(&path, RATE, &song(25.0, 1));
    let (in_memory, profile_a, _) = open_mix(&path, usize::MAX).expect("opens");
    let (from_file, profile_b, _) = open_mix(&path, 0).expect("opens");
    assert!(matches!(in_memory, Mix::Memory(_)) && matches!(from_file, Mix::File(_)));
    assert_eq!(profile_a, profile_b, "the profile does not depend on keeping the samples");
    let opts = MasterOptions::default();
    let a = master_of(&in_memory, &profile_a, &opts);
    let b = master_of(&from_file, &profile_b, &opts);
    assert_eq!(a.frames(), 25 * RATE as usize);
    assert!(a == b, "the master differs when the mix is decoded again for every pass");
}

#[test]
fn keeping_the_render_in_a_temporary_file_or_rendering_it_again_for_every_read_gives_the_master_kept_in_memory_gives() {
    let dir = temp_dir();
    let path = dir.path().join("mix.wav");
    write_wav_i16(&path, RATE, &song(25.0, 3));
    let (mix, profile, _) = open_mix(&path, usize::MAX).expect("opens");
    let kept = master_of(&mix, &profile, &MasterOptions::default());
    // Over the memory budget the last pass's render goes to an unnamed file in the spool folder.
    let spool_dir = temp_dir();
    let on_disk = master_of(
        &mix,
        &profile,
        &MasterOptions {
            memory_budget_bytes: 0,
            spool_dir: Some(spool_dir.path().to_path_buf()),
            ..MasterOptions::default()
        },
    );
    assert!(kept == on_disk, "the master differs when the render is kept in a temporary file between reads");
    let unnamed_only = std::fs::read_dir(spool_dir.path()).expect("lists").count();
    assert_eq!(unnamed_only, 0, "the temporary files have no name and vanish with the run");
    // Without spooling, every reading renders the chain again from the mix.
    let rendered_again =
        master_of(&mix, &profile, &MasterOptions { memory_budget_bytes: 0, spool: false, ..MasterOptions::default() });
    assert!(kept == rendered_again, "the master differs when the render is not kept between reads");
}

/// Peak resident memory (KiB) of `refmaster MIX --ref REF -o OUT --memory-budget 0`, as the
/// process itself reports it (`REFMASTER_TIMING`: VmHWM, which starts afresh at exec; a parent's
/// rusage would count the test process's own pages that the child shared before exec).
fn peak_rss_kib(mix: &Path, reference: &Path, out: &Path) -> i64 {
    let o = common::refmaster()
        .env("REFMASTER_TIMING", "1")
        .arg(mix)
        .arg("--ref")
        .arg(reference)
        .arg("-o")
        .arg(out)
        .args(["--memory-budget", "0", "--quiet"])
        .output()
        .expect("refmaster runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "refmaster failed on {}: {stderr}", mix.display());
    let line =
        stderr.lines().find(|l| l.contains("peak memory")).unwrap_or_else(|| panic!("no peak memory line:\n{stderr}"));
    line.split_whitespace().rev().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("unreadable: {line}"))
}

#[test]
fn with_no_memory_budget_peak_memory_does_not_grow_with_the_mix_length() {
    let dir = temp_dir();
    let reference = dir.path().join("ref.wav");
    write_wav_i16(&reference, RATE, &song(30.0, 7));
    let (short, long) = (dir.path().join("short.wav"), dir.path().join("long.wav"));
    write_wav_i16(&short, RATE, &song(60.0, 5));
    write_wav_i16(&long, RATE, &song(240.0, 5));
    let rss_short = peak_rss_kib(&short, &reference, &dir.path().join("a.wav"));
    let rss_long = peak_rss_kib(&long, &reference, &dir.path().join("b.wav"));
    // Three more minutes of decoded stereo f32 is 62 MiB; holding the song (or any whole-length
    // copy of it) would grow by at least that. Per-block figures (analysis envelopes, the
    // decimated envelope the drive search aims on) may grow by a fraction of it.
    let copy_kib = (180 * RATE as i64 * 2 * 4) / 1024;
    let growth = rss_long - rss_short;
    eprintln!("peak RSS with --memory-budget 0: 1 min {rss_short} KiB, 4 min {rss_long} KiB");
    assert!(
        growth < copy_kib / 3,
        "peak RSS grew by {growth} KiB from 1 to 4 minutes (one decoded copy of the extra 3 minutes is {copy_kib} KiB); short {rss_short} KiB, long {rss_long} KiB"
    );
}

/// The master is written from the last pass's accepted reading, kept on disk (its limiter gains
/// when the render is kept in memory, the limited output when it is rendered again from the
/// mix), times the safety trim, and the master's profile is that reading's analysis when no
/// trim follows: the same bits as limiting the render again, and the profile must be the
/// analysis of the master as written (without the band dynamics, which a master's leaves out). Checked with the render kept and rendered again, on a
/// master written as read (a low-passed song: no treble near Nyquist for the limiter's 4x
/// detector to under-read) and on one a safety trim lowers after the reading (clipped
/// full-band noise, which the precise meter trims).
#[test]
fn the_master_written_from_the_kept_reading_is_the_master_limited_again_and_its_profile_is_its_analysis() {
    let mut dull = song(25.0, 11);
    for c in dull.iter_mut() {
        for _ in 0..2 {
            let mut y = 0f32;
            c.iter_mut().for_each(|x| {
                y += 0.25 * (*x - y);
                *x = y;
            });
        }
    }
    let (mix, profile, _) = {
        let dir = temp_dir();
        let path = dir.path().join("mix.wav");
        write_wav_i16(&path, RATE, &dull);
        open_mix(&path, usize::MAX).expect("opens")
    };
    let mut rng = Rng::new(5);
    let n = 20 * RATE as usize;
    let clipped: Vec<Vec<f32>> =
        (0..2).map(|_| (0..n).map(|_| (3.0 * (rng.unit() as f32 - 0.5)).clamp(-0.5, 0.5)).collect()).collect();
    let clipped = AudioBuffer { sample_rate_hz: RATE, channels: clipped };
    let clipped_profile = analyze(&clipped, "clipped", false);
    // Its reference: the same noise 6 dB louder (clipped at 0.99), so the master is driven into
    // the limiter at the ceiling.
    let louder = AudioBuffer {
        sample_rate_hz: RATE,
        channels: clipped.channels.iter().map(|c| c.iter().map(|x| 2.0 * x * 0.99).collect()).collect(),
    };
    let song_reference = analyze(&AudioBuffer { sample_rate_hz: RATE, channels: song(20.0, 99) }, "reference", false);
    let cases = [
        ("low-passed song", &mix as &dyn FrameSource, &profile, song_reference),
        ("clipped noise", &clipped, &clipped_profile, analyze(&louder, "reference", false)),
    ];
    let mut trims = Vec::new();
    for (what, source, mix_profile, target) in cases {
        for budget in [MasterOptions::default().memory_budget_bytes, 0] {
            let run = |spool: bool| {
                let opts = MasterOptions { spool, memory_budget_bytes: budget, ..MasterOptions::default() };
                let mut sink = CollectSink::default();
                let m = master_stream(source, mix_profile, &target, &opts, &|_| {}, &mut sink).expect("masters");
                (m, sink.audio.expect("the master was written"))
            };
            let (kept, kept_audio) = run(true);
            let (again, again_audio) = run(false);
            assert!(
                kept_audio == again_audio,
                "{what}, budget {budget}: the master differs from the one limited again"
            );
            assert_eq!(kept.settings, again.settings, "{what}: the settings differ");
            // A master's profile leaves out the band envelopes and what is measured on them
            // (`Analyzer::without_dynamics`: nothing reads a master's); the rest is the full
            // analysis of the master as written, bit for bit.
            let mut written = analyze(&kept_audio, "master", false);
            (written.dynamics, written.level_motion, written.envelopes) = (Vec::new(), None, None);
            assert!(kept.profile == written, "{what}, budget {budget}: the profile is not the written master's");
            assert!(kept.profile == again.profile, "{what}: the profile differs from the one analysed as written");
            trims.push(kept.profile.loudness.true_peak_dbtp);
        }
    }
    eprintln!("true peaks of the masters (dBTP): {trims:?}");
}

/// A sink that collects the master and counts how often it was begun. One that cannot be
/// begun again (`rewindable` false, as the job's sink while previews are kept) has the master
/// written after the last pass's readings instead of as they measure it.
#[derive(Default)]
struct Counting {
    inner: CollectSink,
    begun: usize,
    rewindable: bool,
}

impl MasterSink for Counting {
    fn rewindable(&self) -> bool {
        self.rewindable
    }
    fn begin(&mut self, info: &WriteInfo) -> refmaster::Result<()> {
        self.begun += 1;
        self.inner.begin(info)
    }
    fn write(&mut self, first_frame: usize, chunk: &[&[f32]]) -> refmaster::Result<()> {
        self.inner.write(first_frame, chunk)
    }
}

#[test]
fn writing_the_master_as_it_is_measured_or_after_gives_the_same_master_and_profile() {
    let dir = temp_dir();
    let path = dir.path().join("mix.wav");
    write_wav_i16(&path, RATE, &song(25.0, 7));
    let (mix, profile, _) = open_mix(&path, usize::MAX).expect("opens");
    let target = analyze(&AudioBuffer { sample_rate_hz: RATE, channels: song(20.0, 99) }, "reference", false);
    for budget in [MasterOptions::default().memory_budget_bytes, 0] {
        let opts = MasterOptions { memory_budget_bytes: budget, ..MasterOptions::default() };
        let mut speculative = CollectSink::default();
        let a = master_stream(&mix, &profile, &target, &opts, &|_| {}, &mut speculative).expect("masters");
        let mut after = Counting::default();
        let b = master_stream(&mix, &profile, &target, &opts, &|_| {}, &mut after).expect("masters");
        assert_eq!(after.begun, 1, "a sink that cannot start over is begun once");
        assert!(speculative.audio == after.inner.audio, "budget {budget}: the masters differ");
        assert!(a.profile == b.profile && a.settings == b.settings, "budget {budget}: the outcome differs");
    }
}

/// The shipped demo pair drives its mix hard into the saturator, and the limiter's 4x detector
/// under-reads what the clipper makes near Nyquist: the master needs a small safety trim. The
/// last intermediate pass measures it and the master's render carries it
/// (`limiter.output_trim_db`), so the master is written once, as its last reading measures it:
/// its true peak is under the trim's limit by the precise meter, its loudness on the target, and
/// the saved settings render it again bit for bit.
#[test]
fn a_safety_trim_foreseen_on_the_last_intermediate_pass_is_carried_into_the_masters_render() {
    let shipped = |name: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(name);
    // Looped to 5 minutes, as the pipeline bench does: long enough for the proxy.
    let (excerpt, _) = refmaster::decode::decode_file(&shipped("demo_mix.flac")).expect("decodes");
    let channels =
        excerpt.channels.iter().map(|c| c.repeat(300 * excerpt.sample_rate_hz as usize / c.len() + 1)).collect();
    let mix = AudioBuffer { sample_rate_hz: excerpt.sample_rate_hz, channels };
    let profile = analyze(&mix, "mix", false);
    let target = refmaster::source::profile_file(&shipped("demo_ref.ogg")).expect("profiles");
    for budget in [MasterOptions::default().memory_budget_bytes, 0] {
        let opts = MasterOptions { memory_budget_bytes: budget, ..MasterOptions::default() };
        let mut sink = Counting { rewindable: true, ..Counting::default() };
        let m = master_stream(&mix, &profile, &target, &opts, &|_| {}, &mut sink).expect("masters");
        let trim = m.settings.limiter.output_trim_db;
        assert!(trim < 0.0, "budget {budget}: no trim was carried into the render");
        assert_eq!(sink.begun, 1, "budget {budget}: the master was written again after its readings");
        let audio = sink.inner.audio.expect("written");
        let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
        // The trim's own limit: the ceiling less the writer's net margin and 0.01 dB.
        let limit = m.settings.limiter.ceiling_dbtp - refmaster::ceiling::NET_MARGIN_DB - 0.01;
        let tp = refmaster::dsp::truepeak::precise_true_peak_db(&planes);
        assert!(tp <= limit + 1e-6, "budget {budget}: true peak {tp:.4} dBTP over {limit:.4}");
        let lufs = m.profile.loudness.integrated_lufs;
        assert!(
            (lufs - m.settings.limiter.target_lufs).abs() <= refmaster::master::LOUDNESS_TOLERANCE_LU,
            "budget {budget}: {lufs:.3} LUFS for a target of {:.3}",
            m.settings.limiter.target_lufs
        );
        let mut again: Vec<Vec<f32>> = vec![Vec::new(); audio.channels.len()];
        refmaster::render::stream::render_stream(&mix, &m.settings, &mut |_, chunk| {
            again.iter_mut().zip(chunk).for_each(|(a, c)| a.extend_from_slice(c));
            Ok(())
        })
        .expect("renders");
        assert!(again == audio.channels, "budget {budget}: the saved settings render another master");
    }
}
