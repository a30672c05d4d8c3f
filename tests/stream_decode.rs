//! Specifications of `StreamDecoder`, the chunk-by-chunk reader behind `decode_file`: read in
//! chunks of any size it gives exactly the samples `decode_file` gives, pass after pass, and
//! refuses exactly what `decode_file` refuses, with the same one-line message naming the file,
//! as soon as it knows.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{ffmpeg, in_dir, kellet_pink, run_ffmpeg, sine, temp_dir, write_wav_f32, write_wav_i16};
use refmaster::decode::{decode_file, StreamDecoder};

const RATE: u32 = 44_100;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("references").join(name)
}

/// A 3 s stereo 16-bit WAV of pink noise at −20 dBFS RMS.
fn pink_wav(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let path = in_dir(dir, name);
    let n = 3 * RATE as usize;
    write_wav_i16(&path, RATE, &[kellet_pink(1, n, -20.0), kellet_pink(2, n, -20.0)]);
    path
}

/// Every chunk of one pass, concatenated per channel, with the size of each chunk: or the error
/// the pass ended with (after the frames it had already handed out).
struct Pass {
    planes: Vec<Vec<f32>>,
    chunks: Vec<usize>,
    error: Option<String>,
}

fn stream(path: &Path, min_frames: usize) -> Pass {
    let (mut s, _) = StreamDecoder::open(path).unwrap_or_else(|e| panic!("open: {e}"));
    let mut planes = vec![Vec::new(); s.channel_count()];
    let mut chunks = Vec::new();
    let mut out = Vec::new();
    loop {
        match s.read(&mut out, min_frames) {
            Ok(0) => return Pass { planes, chunks, error: None },
            Ok(n) => {
                assert_eq!(out.len(), s.channel_count(), "one Vec per channel");
                assert!(out.iter().all(|c| c.len() == n), "every channel holds the {n} frames returned");
                for (p, c) in planes.iter_mut().zip(&out) {
                    p.extend_from_slice(c);
                }
                chunks.push(n);
            }
            Err(e) => return Pass { planes, chunks, error: Some(e.to_string()) },
        }
    }
}

fn decoded_planes(path: &Path) -> Vec<Vec<f32>> {
    decode_file(path).unwrap_or_else(|e| panic!("{e}")).0.channels
}

fn decode_error(path: &Path) -> String {
    decode_file(path).err().unwrap_or_else(|| panic!("{} should be refused", path.display())).to_string()
}

/// Bit-for-bit equality (NaN-safe, and -0.0 is not 0.0).
fn same_bits(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.iter().map(|v| v.to_bits()).eq(y.iter().map(|v| v.to_bits())))
}

// ---- the samples -----------------------------------------------------------------------------

#[test]
fn a_wav_read_in_1000_frame_chunks_gives_exactly_the_samples_decode_file_gives() {
    let dir = temp_dir();
    let path = pink_wav(&dir, "pink.wav");
    let pass = stream(&path, 1000);
    assert_eq!(pass.error, None);
    assert!(same_bits(&pass.planes, &decoded_planes(&path)));
    // Every chunk but the last holds at least the frames asked for.
    let (last, rest) = pass.chunks.split_last().expect("some chunks");
    assert!(rest.iter().all(|&n| n >= 1000), "chunks {:?}", pass.chunks);
    assert!(*last > 0);
}

#[test]
fn a_float_wav_read_in_chunks_keeps_every_sample_bit_exact() {
    let dir = temp_dir();
    let path = in_dir(&dir, "float.wav");
    let n = RATE as usize;
    // Values a 16-bit path would round: the float WAV must come through untouched.
    write_wav_f32(&path, RATE, &[kellet_pink(3, n, -6.0), sine(RATE, 997.0, -0.1, 0.3, n)]);
    let pass = stream(&path, 1000);
    assert_eq!(pass.error, None);
    assert!(same_bits(&pass.planes, &decoded_planes(&path)));
}

#[test]
fn a_flac_read_in_1000_frame_chunks_gives_exactly_the_samples_decode_file_gives() {
    let dir = temp_dir();
    let wav = pink_wav(&dir, "pink.wav");
    let flac = in_dir(&dir, "pink.flac");
    run_ffmpeg(ffmpeg().args(["-v", "error", "-i"]).arg(&wav).args(["-c:a", "flac"]).arg(&flac));
    let pass = stream(&flac, 1000);
    assert_eq!(pass.error, None);
    assert!(same_bits(&pass.planes, &decoded_planes(&flac)));
    // Lossless: the very samples of the WAV it was made from.
    assert!(same_bits(&pass.planes, &decoded_planes(&wav)));
}

#[test]
fn the_shipped_lossy_and_lossless_demos_stream_to_exactly_what_decode_file_gives() {
    for name in ["demo_mix.flac", "demo_ref.ogg"] {
        let path = shipped(name);
        let whole = decoded_planes(&path);
        for min_frames in [0, 1000, 1 << 20] {
            let pass = stream(&path, min_frames);
            assert_eq!(pass.error, None, "{name}");
            assert!(same_bits(&pass.planes, &whole), "{name}, min_frames {min_frames}");
        }
    }
}

#[test]
fn two_passes_over_the_same_file_give_identical_samples() {
    let path = shipped("demo_ref.ogg");
    let first = stream(&path, 4096);
    let second = stream(&path, 4096);
    assert_eq!(first.error, None);
    assert_eq!(first.chunks, second.chunks);
    assert!(same_bits(&first.planes, &second.planes));
}

#[test]
fn open_knows_rate_channels_and_the_headers_length_before_any_read() {
    let dir = temp_dir();
    let path = in_dir(&dir, "mono48k.wav");
    write_wav_i16(&path, 48_000, &[sine(48_000, 440.0, -12.0, 0.0, 30_000)]);
    let (s, info) = StreamDecoder::open(&path).expect("opens");
    assert_eq!(s.path(), path.as_path());
    assert_eq!(s.sample_rate_hz(), 48_000);
    assert_eq!(s.channel_count(), 1);
    assert_eq!(s.frames_hint(), Some(30_000));
    assert_eq!(info, decode_file(&path).expect("decodes").1);
}

#[test]
fn after_the_end_every_read_gives_zero_frames_and_an_empty_chunk() {
    let dir = temp_dir();
    let path = pink_wav(&dir, "pink.wav");
    let (mut s, _) = StreamDecoder::open(&path).expect("opens");
    let mut out = Vec::new();
    while s.read(&mut out, 1 << 16).expect("reads") > 0 {}
    for _ in 0..3 {
        assert_eq!(s.read(&mut out, 1000).expect("still fine"), 0);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(Vec::is_empty));
    }
}

#[test]
fn read_replaces_the_chunk_reusing_its_allocations() {
    let dir = temp_dir();
    let path = pink_wav(&dir, "pink.wav");
    let (mut s, _) = StreamDecoder::open(&path).expect("opens");
    // Too many channels, stale contents: read fixes both.
    let mut out = vec![vec![9.0f32; 10]; 5];
    let n = s.read(&mut out, 1000).expect("reads");
    assert_eq!(out.len(), 2);
    let ptrs: Vec<*const f32> = out.iter().map(|c| c.as_ptr()).collect();
    let caps: Vec<usize> = out.iter().map(Vec::capacity).collect();
    let m = s.read(&mut out, 1000).expect("reads");
    assert!(
        m > 0 && m <= caps[0],
        "a second chunk of {m} frames fits the first's capacity {} (first held {n})",
        caps[0]
    );
    assert_eq!(out.iter().map(|c| c.as_ptr()).collect::<Vec<_>>(), ptrs, "same allocations");
    assert!(same_bits(&out, &decoded_planes(&path).iter().map(|c| c[n..n + m].to_vec()).collect::<Vec<_>>()));
}

// ---- the refusals ----------------------------------------------------------------------------

#[test]
fn nan_in_the_middle_errors_on_read_naming_the_file_with_decode_files_message() {
    let dir = temp_dir();
    let path = in_dir(&dir, "nan.wav");
    let mut l = sine(RATE, 1000.0, -20.0, 0.0, 2 * RATE as usize);
    let mut r = l.clone();
    // Three non-finite samples; the first at frame 50000 (1.134 s), on both channels.
    r[50_000] = f32::NAN;
    l[50_000] = f32::INFINITY;
    r[70_000] = f32::NEG_INFINITY;
    write_wav_f32(&path, RATE, &[l, r]);
    let expected = decode_error(&path);
    assert!(expected.contains("3 NaN/infinite samples (first at 1.134 s, frame 50000, channel 1)"), "{expected}");

    let (mut s, _) = StreamDecoder::open(&path).expect("the header is fine: open succeeds");
    let mut out = Vec::new();
    let mut handed_out = 0;
    let err = loop {
        match s.read(&mut out, 1000) {
            Ok(0) => panic!("the NaN went through"),
            Ok(n) => handed_out += n,
            Err(e) => break e.to_string(),
        }
    };
    assert_eq!(err, expected);
    assert!(err.contains(&path.display().to_string()) && !err.contains('\n'), "{err}");
    assert!(handed_out > 0 && handed_out <= 50_000, "clean frames before the NaN come out first ({handed_out})");
    assert!(out.iter().all(Vec::is_empty), "no chunk with the error");
    assert_eq!(s.read(&mut out, 1000).expect_err("the error sticks").to_string(), expected);
}

#[test]
fn a_truncated_wav_errors_at_its_end_after_handing_out_what_it_holds() {
    let dir = temp_dir();
    let full = pink_wav(&dir, "full.wav");
    let bytes = fs::read(&full).expect("read");
    let path = in_dir(&dir, "cut.wav");
    fs::write(&path, &bytes[..bytes.len() * 6 / 10]).expect("write");
    let expected = decode_error(&path);
    assert!(expected.contains("truncated: header promises 132300 frames"), "{expected}");
    let pass = stream(&path, 1000);
    assert_eq!(pass.error.as_deref(), Some(expected.as_str()));
    // The error comes with the end of the file, after the frames it does hold.
    let held: usize = pass.chunks.iter().sum();
    assert!(held > 70_000, "{held} frames handed out before the error");
}

#[test]
fn a_truncated_flac_errors_as_decode_file_does() {
    let dir = temp_dir();
    let wav = pink_wav(&dir, "full.wav");
    let flac = in_dir(&dir, "full.flac");
    run_ffmpeg(ffmpeg().args(["-v", "error", "-i"]).arg(&wav).args(["-c:a", "flac"]).arg(&flac));
    let bytes = fs::read(&flac).expect("read");
    let path = in_dir(&dir, "half.flac");
    fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    assert_eq!(stream(&path, 1000).error, Some(decode_error(&path)));
}

#[test]
fn a_file_too_short_to_measure_errors_at_its_end() {
    let dir = temp_dir();
    let path = in_dir(&dir, "short.wav");
    write_wav_i16(&path, RATE, &[sine(RATE, 440.0, -12.0, 0.0, RATE as usize / 10)]);
    let expected = decode_error(&path);
    assert!(expected.contains("too short to measure: 0.100 s"), "{expected}");
    assert_eq!(stream(&path, 1000).error, Some(expected));
}

#[test]
fn a_header_with_no_samples_errors_on_the_first_read() {
    let dir = temp_dir();
    let path = in_dir(&dir, "nothing.wav");
    write_wav_i16(&path, RATE, &[Vec::new(), Vec::new()]);
    let expected = decode_error(&path);
    assert!(expected.ends_with("contains no audio samples"), "{expected}");
    let (mut s, _) = StreamDecoder::open(&path).expect("opens");
    assert_eq!(s.read(&mut Vec::new(), 1000).expect_err("no audio").to_string(), expected);
}

#[test]
fn open_refuses_what_decode_file_refuses_up_front_with_the_same_message() {
    let dir = temp_dir();
    let empty = in_dir(&dir, "empty.wav");
    fs::write(&empty, b"").expect("write");
    let text = in_dir(&dir, "notes.wav");
    fs::write(&text, "this is not audio\n").expect("write");
    let low = in_dir(&dir, "4k.wav");
    write_wav_i16(&low, 4_000, &[sine(4_000, 440.0, -12.0, 0.0, 4_000)]);
    for path in [in_dir(&dir, "missing.wav"), dir.path().to_path_buf(), empty, text, low] {
        let expected = decode_error(&path);
        let got = StreamDecoder::open(&path).expect_err("refused by open").to_string();
        assert_eq!(got, expected);
    }
}

/// The fuzzer finds under tests/regressions/ (decoder panics, huge allocations, lying headers)
/// give the stream exactly decode_file's clean result or clean error, from `open` or `read`.
#[test]
fn saved_regression_inputs_stream_to_decode_files_result() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("regressions");
    let mut files: Vec<PathBuf> =
        fs::read_dir(&dir).expect("regressions folder").map(|e| e.expect("entry").path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e != "md" && e != "json"));
    files.sort();
    assert!(!files.is_empty());
    for path in &files {
        let whole = decode_file(path);
        let streamed = match StreamDecoder::open(path) {
            Err(e) => Err(e.to_string()),
            Ok(_) => {
                let pass = stream(path, 1000);
                pass.error.map_or(Ok(pass.planes), Err)
            }
        };
        match (whole, streamed) {
            (Ok((a, _)), Ok(planes)) => assert!(same_bits(&a.channels, &planes), "{}", path.display()),
            (Err(e), Err(line)) => {
                assert_eq!(line, e.to_string());
                assert!(!line.contains('\n'), "{line}");
            }
            (a, b) => panic!("{}: decode_file {:?} but streaming {:?}", path.display(), a.err(), b.err()),
        }
    }
}
