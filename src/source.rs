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

/// Sample peak above which a mix is read lower before mastering, dBFS. Floating-point files may
/// peak over full scale (a hot float bounce at +6 or +12 dBFS is ordinary and is mastered as
/// it is), but a mix at 1e20 or 3e38 has had a gain bug upstream: its energies overflow the
/// 32-bit float chain (3e38 rendered to silence) and its loudness is beyond any drive the
/// limiter can pull (a 1e20 sine ended 2.2 LU over target after 120 dB of limiting).
pub const HUGE_INPUT_DBFS: f64 = 24.0;

/// The gain (an exact power of two, so the samples lose nothing) that brings `source` to at
/// most 0 dBFS when its analysed sample peak `sample_peak_dbfs` is over [`HUGE_INPUT_DBFS`] or
/// could not be measured (NaN or +∞: a meter overflowed near the largest float); `None`
/// otherwise. The peak itself is found by reading the source once.
pub fn huge_input_gain(source: &dyn FrameSource, sample_peak_dbfs: f64) -> Result<Option<f64>> {
    if sample_peak_dbfs <= HUGE_INPUT_DBFS || sample_peak_dbfs == f64::NEG_INFINITY {
        return Ok(None);
    }
    let mut peak = 0f32;
    source.stream(&mut |chunk| {
        for c in chunk {
            peak = c.iter().fold(peak, |a, v| a.max(v.abs()));
        }
        Ok(())
    })?;
    if f64::from(peak) <= crate::audio::db_to_lin(HUGE_INPUT_DBFS) || !peak.is_finite() {
        return Ok(None);
    }
    // In f64: 2^-128, what the largest floats need, is below f32's normal range.
    Ok(Some(2f64.powi(-(peak.log2().ceil() as i32))))
}

/// A source read at a fixed gain (see [`huge_input_gain`]).
pub struct ScaledSource<'a> {
    /// The source read.
    pub inner: &'a dyn FrameSource,
    /// Linear gain applied to every sample (in f64: see [`huge_input_gain`]).
    pub gain: f64,
}

impl FrameSource for ScaledSource<'_> {
    fn sample_rate_hz(&self) -> u32 {
        self.inner.sample_rate_hz()
    }

    fn channel_count(&self) -> usize {
        self.inner.channel_count()
    }

    fn frames(&self) -> usize {
        self.inner.frames()
    }

    fn stream(&self, f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()> {
        let mut planes: Vec<Vec<f32>> = vec![Vec::new(); self.inner.channel_count()];
        self.inner.stream(&mut |chunk| {
            for (p, c) in planes.iter_mut().zip(chunk) {
                p.clear();
                p.extend(c.iter().map(|&v| (f64::from(v) * self.gain) as f32));
            }
            let slices: Vec<&[f32]> = planes.iter().map(Vec::as_slice).collect();
            f(&slices)
        })
    }

    fn resident_bytes(&self) -> usize {
        self.inner.resident_bytes()
    }
}
