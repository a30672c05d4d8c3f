//! Where a mix's samples come from, pass after pass: the mastering loop reads the mix several
//! times (measure, render, verify, write), either from memory or by decoding the file again, so a
//! mix longer than the memory budget never has to be held whole.

use std::path::Path;

use crate::analysis::{Analyzer, Profile};
use crate::audio::AudioBuffer;
use crate::decode::{SourceInfo, StreamDecoder};
use crate::error::{Error, Result};

/// Frames per chunk handed on by the sources.
pub const CHUNK_FRAMES: usize = 1 << 16;

/// A mix that can be read from its start as often as needed, in chunks.
pub trait FrameSource: Sync {
    /// Sample rate, Hz.
    fn sample_rate_hz(&self) -> u32;
    /// Number of channels.
    fn channel_count(&self) -> usize;
    /// Number of frames.
    fn frames(&self) -> usize;
    /// Calls `f` with consecutive planar chunks (one slice per channel) from the first frame to
    /// the last.
    fn stream(&self, f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()>;
    /// Bytes of samples this source holds in memory (0 for one that decodes its file again).
    fn resident_bytes(&self) -> usize {
        0
    }
}

impl FrameSource for AudioBuffer {
    fn resident_bytes(&self) -> usize {
        self.channels.iter().map(|c| c.len() * 4).sum()
    }

    fn sample_rate_hz(&self) -> u32 {
        self.sample_rate_hz
    }

    fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn frames(&self) -> usize {
        AudioBuffer::frames(self)
    }

    fn stream(&self, f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()> {
        let n = AudioBuffer::frames(self);
        let mut start = 0;
        while start < n {
            let end = (start + CHUNK_FRAMES).min(n);
            let chunk: Vec<&[f32]> = self.channels.iter().map(|c| &c[start..end]).collect();
            f(&chunk)?;
            start = end;
        }
        Ok(())
    }
}

/// A mix read from its file again for every pass (decoded chunk by chunk, never whole).
#[derive(Debug, Clone)]
pub struct FileSource {
    path: std::path::PathBuf,
    sample_rate_hz: u32,
    channel_count: usize,
    frames: usize,
}

impl FrameSource for FileSource {
    fn sample_rate_hz(&self) -> u32 {
        self.sample_rate_hz
    }

    fn channel_count(&self) -> usize {
        self.channel_count
    }

    fn frames(&self) -> usize {
        self.frames
    }

    fn stream(&self, f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()> {
        let (mut decoder, _) = StreamDecoder::open(&self.path)?;
        let mut buf: Vec<Vec<f32>> = Vec::new();
        let mut seen = 0usize;
        loop {
            let n = decoder.read(&mut buf, CHUNK_FRAMES)?;
            if n == 0 {
                break;
            }
            // A file changed between reads would give a different master than the one measured.
            let n = n.min(self.frames - seen);
            let chunk: Vec<&[f32]> = buf.iter().map(|c| &c[..n]).collect();
            f(&chunk)?;
            seen += n;
            if seen == self.frames {
                break;
            }
        }
        if seen != self.frames || decoder.channel_count() != self.channel_count {
            return Err(Error::input(&self.path, "changed while being mastered (a different length on a second read)"));
        }
        Ok(())
    }
}

/// A mix ready to master: its samples in memory when they fit the budget, else its file.
#[derive(Debug, Clone)]
pub enum Mix {
    /// Decoded samples.
    Memory(AudioBuffer),
    /// Read again from the file for every pass.
    File(FileSource),
}

impl FrameSource for Mix {
    fn resident_bytes(&self) -> usize {
        match self {
            Mix::Memory(a) => a.resident_bytes(),
            Mix::File(_) => 0,
        }
    }

    fn sample_rate_hz(&self) -> u32 {
        match self {
            Mix::Memory(a) => a.sample_rate_hz,
            Mix::File(f) => f.sample_rate_hz,
        }
    }

    fn channel_count(&self) -> usize {
        match self {
            Mix::Memory(a) => a.channel_count(),
            Mix::File(f) => f.channel_count,
        }
    }

    fn frames(&self) -> usize {
        match self {
            Mix::Memory(a) => a.frames(),
            Mix::File(f) => f.frames,
        }
    }

    fn stream(&self, f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()> {
        match self {
            Mix::Memory(a) => a.stream(f),
            Mix::File(s) => s.stream(f),
        }
    }
}

/// Decodes and analyses the file at `path` in one read, keeping its samples when they fit
/// `keep_bytes` (0: never). Returns the mix, its profile and what the decoder learned.
pub fn open_mix(path: &Path, keep_bytes: usize) -> Result<(Mix, Profile, SourceInfo)> {
    let (mut decoder, info) = StreamDecoder::open(path)?;
    let (rate, channels) = (decoder.sample_rate_hz(), decoder.channel_count());
    let fits = |frames: usize| frames.saturating_mul(channels.max(1)).saturating_mul(4) <= keep_bytes;
    let hint = decoder.frames_hint().and_then(|n| usize::try_from(n).ok());
    let mut kept: Option<Vec<Vec<f32>>> = match hint {
        Some(n) if !fits(n) => None,
        _ if keep_bytes == 0 => None,
        // The reservation is capped: a header's frame count is a promise, not a fact.
        Some(n) => Some((0..channels).map(|_| Vec::with_capacity(n.min(1 << 24))).collect()),
        None => Some(vec![Vec::new(); channels]),
    };
    let mut analyzer = Analyzer::new(rate, channels, hint);
    let mut buf: Vec<Vec<f32>> = Vec::new();
    let mut frames = 0usize;
    loop {
        let n = decoder.read(&mut buf, CHUNK_FRAMES)?;
        if n == 0 {
            break;
        }
        let chunk: Vec<&[f32]> = buf.iter().map(|c| &c[..n]).collect();
        analyzer.push(&chunk);
        frames += n;
        if let Some(k) = kept.as_mut() {
            if fits(frames) {
                for (c, x) in k.iter_mut().zip(&chunk) {
                    c.extend_from_slice(x);
                }
            } else {
                kept = None;
            }
        }
    }
    if let Some(offset_dbfs) = analyzer.constant_offset_dbfs() {
        return Err(Error::input(
            path,
            format!("has no audible content: only a constant (DC) offset at {offset_dbfs:.1} dBFS"),
        ));
    }
    let profile = analyzer.finish(&path.display().to_string(), info.lossy);
    let mix = match kept {
        Some(channels) => Mix::Memory(AudioBuffer { sample_rate_hz: rate, channels }),
        None => {
            Mix::File(FileSource { path: path.to_path_buf(), sample_rate_hz: rate, channel_count: channels, frames })
        }
    };
    Ok((mix, profile, info))
}

/// The profile of the file at `path`, measured as it decodes (the samples are never held).
pub fn profile_file(path: &Path) -> Result<Profile> {
    Ok(open_mix(path, 0)?.1)
}

/// Frames `start .. start + len` of `source` (fewer at its end), read in one pass.
pub fn read_range(source: &dyn FrameSource, start: usize, len: usize) -> Result<AudioBuffer> {
    let channels = source.channel_count();
    let mut out =
        AudioBuffer { sample_rate_hz: source.sample_rate_hz(), channels: vec![Vec::with_capacity(len); channels] };
    let end = start + len;
    let mut pos = 0usize;
    source.stream(&mut |chunk| {
        let n = chunk.first().map_or(0, |c| c.len());
        let (a, b) = (start.max(pos), end.min(pos + n));
        if a < b {
            for (o, c) in out.channels.iter_mut().zip(chunk) {
                o.extend_from_slice(&c[a - pos..b - pos]);
            }
        }
        pos += n;
        Ok(())
    })?;
    Ok(out)
}
