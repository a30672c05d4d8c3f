//! Arbitrary bytes through `refmaster::decode::decode_file` (and `analyze` when they decode).
//!
//! Input layout: the first byte picks the file name's extension (symphonia's format hint), the
//! rest is the file. Whatever the bytes, the result is audio that honours decode's promises
//! (finite samples, 8-192 kHz, at least 0.4 s, equal-length channels) or a one-line error.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Extensions the first byte selects from (its value modulo the count).
const EXTENSIONS: [&str; 9] = ["wav", "flac", "mp3", "ogg", "m4a", "aiff", "caf", "mkv", "bin"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let ext = EXTENSIONS[usize::from(selector) % EXTENSIONS.len()];
    // One scratch file per process, rewritten each run (cheaper than a new temp file each time).
    let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    let path = dir.join(format!("refmaster-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&path, bytes).expect("write the scratch file");
    let result = refmaster::decode::decode_file(&path);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok((audio, info)) => {
            let frames = audio.frames();
            assert!(audio.channel_count() > 0 && frames > 0);
            assert!(audio.channels.iter().all(|c| c.len() == frames), "channels of unequal length");
            assert!(audio.channels.iter().flatten().all(|x| x.is_finite()), "non-finite sample passed through");
            assert!((8_000..=192_000).contains(&audio.sample_rate_hz), "rate {}", audio.sample_rate_hz);
            assert!(audio.duration_s() >= refmaster::decode::MIN_DURATION_S);
            assert!(!info.codec.is_empty());
            let profile = refmaster::analysis::analyze(&audio, "fuzz", info.lossy);
            assert!(profile.spectrum.mid_db.iter().all(|v| v.is_finite()));
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "multi-line error: {line}");
        }
    }
});
