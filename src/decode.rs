//! Stage 1: decode any supported file (WAV, FLAC, MP3, Ogg Vorbis, AAC/M4A, ALAC, AIFF) into a
//! planar f32 [`AudioBuffer`] at the file's own sample rate.
//!
//! Errors always name the file. A decode error in the middle of a file is an error, not a
//! silently shortened buffer, and so is a file that ends before the length its header promises.
//! Non-finite samples (NaN, ±inf, possible in float WAVs) are refused with their count and the
//! position of the first, because passing them on would poison every later measurement.

use std::fs::File;
use std::path::Path;

use symphonia::core::audio::{AudioBufferRef, SampleBuffer};
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::audio::{AudioBuffer, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ};
use crate::error::{Error, Result};

/// Shortest audio refmaster will measure, in seconds. EBU R128 integrated loudness needs at least
/// one 400 ms gating block; anything shorter has no meaningful loudness.
pub const MIN_DURATION_S: f64 = 0.4;

/// What the decoder learned about a file besides its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Codec name as symphonia reports it (e.g. "flac", "vorbis", "pcm_s24le").
    pub codec: String,
    /// True for lossy codecs (MP3, Vorbis, AAC, Opus), whose top octave is often empty.
    pub lossy: bool,
}

/// Decodes the whole file at `path` into memory.
pub fn decode_file(path: &Path) -> Result<(AudioBuffer, SourceInfo)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::input(path, describe_io(&e)))?;
    if meta.is_dir() {
        return Err(Error::input(path, "is a directory, not an audio file"));
    }
    if meta.len() == 0 {
        return Err(Error::input(path, "empty file (0 bytes)"));
    }
    let file = File::open(path).map_err(|e| Error::input(path, describe_io(&e)))?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| Error::input(path, format!("not a readable audio file ({})", short_sym(&e))))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| Error::input(path, "no audio track found"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let codec_name = symphonia::default::get_codecs()
        .get_codec(params.codec)
        .map_or_else(|| "unknown".to_string(), |d| d.short_name.to_string());
    let lossy = matches!(codec_name.as_str(), "mp3" | "mp2" | "mp1" | "vorbis" | "aac" | "opus");
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| Error::input(path, format!("unsupported codec `{codec_name}` ({})", short_sym(&e))))?;

    let mut sample_rate = params.sample_rate;
    let mut channels: Vec<Vec<f32>> = Vec::new();
    if let Some(n) = params.n_frames {
        let ch = params.channels.map_or(0, |c| c.count());
        // Reserve up front when the header is plausible (guards against absurd headers).
        if ch > 0 && n < (1 << 31) {
            channels = (0..ch).map(|_| Vec::with_capacity(n as usize)).collect();
        }
    }
    let mut sample_buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => {
                return Err(Error::input(
                    path,
                    format!("read error after {} frames ({})", channels.first().map_or(0, Vec::len), short_sym(&e)),
                ))
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                let at = channels.first().map_or(0, Vec::len) as f64 / f64::from(sample_rate.unwrap_or(44_100).max(1));
                return Err(Error::input(path, format!("corrupt audio at {at:.2} s ({})", short_sym(&e))));
            }
        };
        append_planar(&decoded, &mut sample_buf, &mut channels, &mut sample_rate);
    }

    let rate = sample_rate.ok_or_else(|| Error::input(path, "sample rate unknown"))?;
    let frames = channels.first().map_or(0, Vec::len);
    if frames == 0 {
        return Err(Error::input(path, "contains no audio samples"));
    }
    if let Some(expected) = params.n_frames {
        // A file that stops well short of its header's length was truncated (a missing final
        // packet's worth of frames is tolerated: some encoders count padding).
        let slack = params.max_frames_per_packet.unwrap_or(4096).max(4096);
        if (frames as u64) + slack < expected {
            return Err(Error::input(
                path,
                format!("truncated: header promises {expected} frames, file holds {frames}"),
            ));
        }
    }
    validate_rate(path, rate)?;
    let duration = frames as f64 / f64::from(rate);
    if duration < MIN_DURATION_S {
        return Err(Error::input(
            path,
            format!("too short to measure: {duration:.3} s (refmaster needs at least {MIN_DURATION_S} s of audio)"),
        ));
    }
    let buffer = AudioBuffer { sample_rate_hz: rate, channels };
    check_finite(path, &buffer)?;
    Ok((buffer, SourceInfo { codec: codec_name, lossy }))
}

/// Refuses sample rates outside 8–192 kHz.
pub fn validate_rate(path: &Path, rate: u32) -> Result<()> {
    if !(MIN_SAMPLE_RATE_HZ..=MAX_SAMPLE_RATE_HZ).contains(&rate) {
        return Err(Error::input(path, format!("sample rate {rate} Hz is outside the supported 8000-192000 Hz")));
    }
    Ok(())
}

/// Refuses buffers holding NaN or infinite samples, saying how many and where the first is.
pub fn check_finite(path: &Path, buffer: &AudioBuffer) -> Result<()> {
    let mut count = 0usize;
    let mut first: Option<(usize, usize)> = None;
    for (ch, samples) in buffer.channels.iter().enumerate() {
        for (i, x) in samples.iter().enumerate() {
            if !x.is_finite() {
                count += 1;
                if first.is_none_or(|(f, _)| i < f) {
                    first = Some((i, ch));
                }
            }
        }
    }
    if let Some((frame, ch)) = first {
        return Err(Error::input(
            path,
            format!(
                "{count} NaN/infinite samples (first at {:.3} s, frame {frame}, channel {}); refusing to process them",
                frame as f64 / f64::from(buffer.sample_rate_hz.max(1)),
                ch + 1
            ),
        ));
    }
    Ok(())
}

fn append_planar(
    decoded: &AudioBufferRef<'_>,
    sample_buf: &mut Option<SampleBuffer<f32>>,
    channels: &mut Vec<Vec<f32>>,
    sample_rate: &mut Option<u32>,
) {
    let spec = *decoded.spec();
    let n_ch = spec.channels.count();
    if sample_rate.is_none() {
        *sample_rate = Some(spec.rate);
    }
    if channels.len() != n_ch {
        if channels.iter().all(Vec::is_empty) {
            *channels = (0..n_ch).map(|_| Vec::new()).collect();
        } else {
            // A stream that changes its channel count mid-way: keep the first layout.
            return;
        }
    }
    let frames = decoded.frames();
    if frames == 0 {
        return;
    }
    let needs_new = sample_buf.as_ref().is_none_or(|b| b.capacity() < frames * n_ch);
    if needs_new {
        *sample_buf = Some(SampleBuffer::<f32>::new(decoded.capacity().max(frames) as u64, spec));
    }
    if let Some(buf) = sample_buf.as_mut() {
        buf.copy_planar_ref(decoded.clone());
        let data = buf.samples();
        for (ch, dest) in channels.iter_mut().enumerate() {
            dest.extend_from_slice(&data[ch * frames..(ch + 1) * frames]);
        }
    }
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn short_sym(e: &SymError) -> String {
    match e {
        SymError::Unsupported(what) => format!("unsupported: {what}"),
        SymError::DecodeError(what) => format!("decode error: {what}"),
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "unexpected end of file".into(),
        SymError::IoError(io) => io.to_string(),
        other => other.to_string(),
    }
}
