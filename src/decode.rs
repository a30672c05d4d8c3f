//! Stage 1: decode any supported file (WAV, FLAC, MP3, Ogg Vorbis, AAC/M4A, ALAC, AIFF) into a
//! planar f32 [`AudioBuffer`] at the file's own sample rate.
//!
//! Errors always name the file. A decode error in the middle of a file is an error, not a
//! silently shortened buffer, and so is a file that ends before the length its header promises.
//! Non-finite samples (NaN, ±inf, possible in float WAVs) are refused with their count and the
//! position of the first, because passing them on would poison every later measurement.
//!
//! [`StreamDecoder`] decodes a file chunk by chunk (bounded memory, one pass per open) with the
//! same guards and messages; [`decode_file`] is that stream read to its end into one buffer.

use std::fs::File;
use std::path::{Path, PathBuf};

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::audio::{AudioBuffer, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ};
use crate::error::{Error, Result};

/// Shortest audio refmaster will measure, in seconds. EBU R128 integrated loudness needs at least
/// one 400 ms gating block; anything shorter has no meaningful loudness.
pub const MIN_DURATION_S: f64 = 0.4;

/// Most frames reserved per channel before decoding on the strength of the header's frame count
/// (2^24: 6.3 minutes at 44.1 kHz, 64 MB per channel).
const MAX_RESERVE_FRAMES: usize = 1 << 24;

/// What the decoder learned about a file besides its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Codec name as symphonia reports it (e.g. "flac", "vorbis", "pcm_s24le").
    pub codec: String,
    /// True for lossy codecs (MP3, Vorbis, AAC, Opus), whose top octave is often empty.
    pub lossy: bool,
}

/// Decodes the whole file at `path` into memory: [`StreamDecoder`] read to its end into one
/// buffer, so the two give the same samples and the same errors.
///
/// A demuxer or codec that panics on malformed data (symphonia 0.5 did, e.g. on some broken
/// Matroska headers; the guard stays for 0.6) gives a clean error naming the file, not a crash:
/// the panic is caught here and its message kept out of the terminal.
pub fn decode_file(path: &Path) -> Result<(AudioBuffer, SourceInfo)> {
    // The rate is checked at the end, as it always was (after "no audio" and "truncated"), so a
    // file wrong in two ways keeps giving the same error.
    let (mut stream, info) = StreamDecoder::open_checking_rate(path, false)?;
    // Reserve up front, but never more than MAX_RESERVE_FRAMES on the header's word: a corrupt
    // header can promise 2^31 frames in a 1 kB file, and a failed allocation aborts the process.
    // Longer files grow past the reservation as they decode.
    let reserve = stream.frames_hint().map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(MAX_RESERVE_FRAMES));
    let mut channels: Vec<Vec<f32>> = (0..stream.channel_count()).map(|_| Vec::with_capacity(reserve)).collect();
    // Appending straight into the whole-file buffer: no chunk to copy through.
    while stream.read_more(&mut channels, usize::MAX)? > 0 {}
    Ok((AudioBuffer { sample_rate_hz: stream.sample_rate_hz(), channels }, info))
}

/// A file being decoded chunk by chunk (planar f32 at the file's own rate), so a 90-minute file
/// can be measured or rendered in bounded memory: one decoded packet plus the caller's chunk.
/// A second pass over the file opens it again ([`StreamDecoder::open`]); every pass gives the
/// same samples.
///
/// [`StreamDecoder::read`] refuses what [`decode_file`] refuses, with the same messages, as soon
/// as it knows: mid-file read and decode errors when they are met; non-finite samples, a file
/// with no audio, one shorter than its header promises or than [`MIN_DURATION_S`] when the end of
/// the file is reached. Frames already handed out before such an error stay handed out: a
/// caller must treat its pass as failed, not the chunk.
pub struct StreamDecoder {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    /// Hz: the codec parameters' rate, else the first decoded packet's (always known after open).
    rate: Option<u32>,
    /// Channels every chunk has: those of the first packet holding frames. Packets with another
    /// count later on are skipped (as decode_file always did): a stream cannot change layout.
    layout: usize,
    /// The header's frame count, if any, and how far short of it the file may end (frames) before
    /// it counts as truncated: a missing final packet's worth is tolerated (some encoders count
    /// padding).
    frames_hint: Option<u64>,
    truncation_slack: u64,
    /// The last decoded packet as f32, one plane per channel (reused for every packet).
    planes: Vec<Vec<f32>>,
    /// Frames of the last decoded packet still waiting in `planes`: the packet `open` decodes to
    /// learn the layout, handed out by the first read.
    pending: usize,
    /// Frames decoded so far (handed out, pending or, after a non-finite sample, only counted).
    decoded: u64,
    /// The format reader reported the end of the file.
    source_done: bool,
    /// Non-finite samples met so far and where the first was; once set, the rest of the file is
    /// decoded only to count them.
    non_finite: Option<NonFinite>,
    state: StreamState,
}

/// Non-finite samples found while streaming: how many, and the first one's frame and channel
/// (0-based; the earliest frame, the lowest channel at that frame).
#[derive(Debug, Clone, Copy)]
struct NonFinite {
    count: usize,
    frame: u64,
    channel: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum StreamState {
    Reading,
    /// The end was reached and passed every check: reads give 0 frames.
    Ended,
    /// A read failed (reason without the path): every later read gives the same error, since the
    /// decoder may be in any state after an error or a caught panic.
    Failed(String),
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("path", &self.path)
            .field("sample_rate_hz", &self.rate)
            .field("channels", &self.layout)
            .field("frames_decoded", &self.decoded)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl StreamDecoder {
    /// Opens `path` with every guard [`decode_file`] has up front (missing file, directory, empty
    /// file, the MP4/FLAC table checks, probe, codec) and validates its sample rate.
    ///
    /// The first packet is decoded here (its frames are kept for the first read): its layout,
    /// not the header's, is what every read delivers, and some containers leave the rate or the
    /// channel count out of their codec parameters (e.g. MP3 in Matroska). A read or decode
    /// error in that first packet is therefore reported by `open`.
    ///
    /// The rate is checked here, before any end-of-file check: a file both truncated and at an
    /// unsupported rate is refused for its rate here, where [`decode_file`] calls it truncated.
    pub fn open(path: &Path) -> Result<(StreamDecoder, SourceInfo)> {
        Self::open_checking_rate(path, true)
    }

    /// [`StreamDecoder::open`], with the rate check up front (`check_rate`) or left to the end of
    /// the file, where decode_file has always made it.
    fn open_checking_rate(path: &Path, check_rate: bool) -> Result<(StreamDecoder, SourceInfo)> {
        without_decoder_panics(|| Self::open_unguarded(path, check_rate))
            .unwrap_or_else(|reason| Err(Error::input(path, reason)))
    }

    fn open_unguarded(path: &Path, check_rate: bool) -> Result<(StreamDecoder, SourceInfo)> {
        let meta = std::fs::metadata(path).map_err(|e| Error::input(path, describe_io(&e)))?;
        if meta.is_dir() {
            return Err(Error::input(path, "is a directory, not an audio file"));
        }
        if meta.len() == 0 {
            return Err(Error::input(path, "empty file (0 bytes)"));
        }
        let mut file = File::open(path).map_err(|e| Error::input(path, describe_io(&e)))?;
        check_containers(&mut file, meta.len()).map_err(|reason| Error::input(path, reason))?;
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        // FormatOptions::default() trims the encoder delay and padding an MP3 declares (gapless
        // playback), so an MP3 decodes to the same frames, aligned the same, as ffmpeg gives.
        let format = symphonia::default::get_probe()
            .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
            .map_err(|e| Error::input(path, format!("not a readable audio file ({})", short_sym(&e))))?;
        // The first audio track with a known codec (as symphonia 0.5's "codec is not null" did).
        let track = format
            .first_track_known_codec(TrackType::Audio)
            .ok_or_else(|| Error::input(path, "no audio track found"))?;
        let track_id = track.id;
        let frames_hint = track.num_frames;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .cloned()
            .ok_or_else(|| Error::input(path, "no audio track found"))?;
        let codec_name = symphonia::default::get_codecs()
            .get_audio_decoder(params.codec)
            .map_or_else(|| "unknown".to_string(), |d| d.codec.info.short_name.to_string());
        let lossy = matches!(codec_name.as_str(), "mp3" | "mp2" | "mp1" | "vorbis" | "aac" | "opus");
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| Error::input(path, format!("unsupported codec `{codec_name}` ({})", short_sym(&e))))?;

        let mut stream = StreamDecoder {
            path: path.to_path_buf(),
            format,
            decoder,
            track_id,
            rate: params.sample_rate,
            layout: 0,
            frames_hint,
            truncation_slack: params.max_frames_per_packet.unwrap_or(4096).max(4096),
            planes: Vec::new(),
            pending: 0,
            decoded: 0,
            source_done: false,
            non_finite: None,
            state: StreamState::Reading,
        };
        stream.pending = stream.decode_packet()?.unwrap_or(0);
        let rate = stream.rate.ok_or_else(|| Error::input(path, "sample rate unknown"))?;
        if check_rate {
            validate_rate(path, rate)?;
        }
        if stream.decoded == 0 {
            // No frames at all: the first read says so. Until then, the header's layout.
            stream.layout = params.channels.map_or(0, |c| c.count());
        }
        Ok((stream, SourceInfo { codec: codec_name, lossy }))
    }

    /// The file being decoded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sample rate in Hz (validated by [`StreamDecoder::open`]: 8–192 kHz).
    pub fn sample_rate_hz(&self) -> u32 {
        self.rate.unwrap_or(0)
    }

    /// Channels in every chunk [`StreamDecoder::read`] returns.
    pub fn channel_count(&self) -> usize {
        self.layout
    }

    /// The header's frame count (per channel), if it has one: a hint for progress and
    /// reservations, not a promise (a corrupt header can claim anything; a file ending well
    /// short of it is refused as truncated when the end is reached).
    pub fn frames_hint(&self) -> Option<u64> {
        self.frames_hint
    }

    /// Replaces `out`'s contents with the next decoded frames: one `Vec` per channel
    /// ([`StreamDecoder::channel_count`] of them), their allocations reused. Returns the number of
    /// frames per channel, 0 once the file has ended (and every time after).
    ///
    /// Whole packets are handed out: at least `min_frames` frames (at least one packet when
    /// `min_frames` is 0) unless the file ends first, and often more (up to one packet beyond,
    /// e.g. 4095 frames for FLAC, 1151 for MP3), rather than keeping a remainder back. Size
    /// buffers by the frames returned, not by `min_frames`.
    ///
    /// Errors name the file and are those [`decode_file`] gives, as soon as they are known;
    /// `out` is left empty then, and every later read gives the same error. The read that meets
    /// the first non-finite sample decodes the rest of the file (only counting them, keeping no
    /// samples) so that its error gives their total, as decode_file's does.
    pub fn read(&mut self, out: &mut Vec<Vec<f32>>, min_frames: usize) -> Result<usize> {
        out.iter_mut().for_each(Vec::clear);
        self.read_more(out, min_frames)
    }

    /// [`StreamDecoder::read`] appending to `out` instead of replacing its contents (`out` is
    /// given [`StreamDecoder::channel_count`] channels first), panics caught.
    fn read_more(&mut self, out: &mut Vec<Vec<f32>>, min_frames: usize) -> Result<usize> {
        if let StreamState::Failed(reason) = &self.state {
            return Err(Error::input(&self.path, reason.clone()));
        }
        out.resize_with(self.layout, Vec::new);
        let result = without_decoder_panics(|| self.read_unguarded(out, min_frames))
            .unwrap_or_else(|reason| Err(Error::input(&self.path, reason)));
        if let Err(e) = &result {
            let reason = match e {
                Error::Input { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            self.state = StreamState::Failed(reason);
            out.iter_mut().for_each(Vec::clear);
        }
        result
    }

    fn read_unguarded(&mut self, out: &mut [Vec<f32>], min_frames: usize) -> Result<usize> {
        if self.state == StreamState::Ended {
            return Ok(0);
        }
        let want = min_frames.max(1);
        let mut got = 0usize;
        loop {
            got += self.take_pending(out);
            if got >= want && self.non_finite.is_none() {
                return Ok(got);
            }
            match self.decode_packet()? {
                Some(frames) => self.pending = frames,
                None => {
                    self.check_end()?;
                    self.state = StreamState::Ended;
                    return Ok(got);
                }
            }
        }
    }

    /// Hands the pending packet's frames to `out` (returns how many), or, from the first
    /// non-finite sample on, only counts its non-finite samples (returns 0).
    fn take_pending(&mut self, out: &mut [Vec<f32>]) -> usize {
        let frames = std::mem::take(&mut self.pending);
        if frames == 0 {
            return 0;
        }
        let data = || self.planes.iter().flatten();
        if let Some(found) = self.non_finite.as_mut() {
            found.count += data().filter(|x| !x.is_finite()).count();
            return 0;
        }
        if !data().all(|x| x.is_finite()) {
            // The packet's planes are `frames` long; its first frame is `decoded - frames`.
            let mut first: Option<(usize, usize)> = None;
            for (ch, plane) in self.planes.iter().enumerate() {
                if let Some(i) = plane.iter().position(|x| !x.is_finite()) {
                    if first.is_none_or(|(f, _)| i < f) {
                        first = Some((i, ch));
                    }
                }
            }
            let (i, channel) = first.unwrap_or((0, 0));
            let count = data().filter(|x| !x.is_finite()).count();
            self.non_finite = Some(NonFinite { count, frame: self.decoded - frames as u64 + i as u64, channel });
            return 0;
        }
        for (dest, plane) in out.iter_mut().zip(&self.planes) {
            dest.extend_from_slice(plane);
        }
        frames
    }

    /// Decodes packets until one holds frames in the stream's layout and leaves them in
    /// `planes`, returning how many (`None` at the end of the file). The first packet holding
    /// frames fixes the layout (and, when the codec parameters lack it, the rate).
    fn decode_packet(&mut self) -> Result<Option<usize>> {
        while !self.source_done {
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(SymError::ResetRequired) => break,
                Err(e) => {
                    return Err(Error::input(
                        &self.path,
                        format!("read error after {} frames ({})", self.decoded, short_sym(&e)),
                    ))
                }
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let decoded = match self.decoder.decode(&packet) {
                Ok(d) => d,
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    let at = self.decoded as f64 / f64::from(self.rate.unwrap_or(44_100).max(1));
                    return Err(Error::input(&self.path, format!("corrupt audio at {at:.2} s ({})", short_sym(&e))));
                }
            };
            let n_ch = decoded.spec().channels().count();
            if self.rate.is_none() {
                self.rate = Some(decoded.spec().rate());
            }
            if n_ch != self.layout {
                if self.decoded > 0 {
                    continue; // a stream that changes its channel count mid-way: keep the first layout
                }
                self.layout = n_ch;
            }
            let frames = decoded.frames();
            if frames == 0 || n_ch == 0 {
                continue;
            }
            // One plane per channel, each `frames` long (allocations reused across packets).
            decoded.copy_to_vecs_planar(&mut self.planes);
            self.decoded += frames as u64;
            return Ok(Some(frames));
        }
        self.source_done = true;
        Ok(None)
    }

    /// The checks only the end of the file allows, in decode_file's order: some audio, not
    /// truncated, a supported rate, long enough, every sample finite.
    fn check_end(&self) -> Result<()> {
        let path = &self.path;
        let frames = self.decoded;
        if frames == 0 {
            return Err(Error::input(path, "contains no audio samples"));
        }
        if let Some(expected) = self.frames_hint {
            if frames + self.truncation_slack < expected {
                return Err(Error::input(
                    path,
                    format!("truncated: header promises {expected} frames, file holds {frames}"),
                ));
            }
        }
        let rate = self.sample_rate_hz();
        validate_rate(path, rate)?;
        let duration = frames as f64 / f64::from(rate);
        if duration < MIN_DURATION_S {
            return Err(Error::input(
                path,
                format!("too short to measure: {duration:.3} s (refmaster needs at least {MIN_DURATION_S} s of audio)"),
            ));
        }
        match self.non_finite {
            Some(found) => Err(non_finite_error(path, found, rate)),
            None => Ok(()),
        }
    }
}

thread_local! {
    /// True while this thread runs the decoder, whose panics [`without_decoder_panics`] turns into
    /// errors.
    static IN_DECODER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, which drives symphonia, catching its panics: `Err` holds the one-line reason
/// ("corrupt or malformed file (the decoder gave up: ...)") for the caller to pair with the
/// file's path. The panic's message is kept out of the terminal.
fn without_decoder_panics<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<Result<T>, String> {
    quiet_decoder_panics();
    let was = IN_DECODER.with(|flag| flag.replace(true));
    // AssertUnwindSafe: after a panic the decoder is never used again (a StreamDecoder is marked
    // failed; decode_file returns).
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_DECODER.with(|flag| flag.set(was));
    result.map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        // One line: assertion messages span several.
        let what = what.split_whitespace().collect::<Vec<_>>().join(" ");
        format!("corrupt or malformed file (the decoder gave up: {what})")
    })
}

/// Installs (once) a panic hook that stays silent for panics inside [`without_decoder_panics`]
/// (they become its error) and hands every other panic to the hook that was there before.
fn quiet_decoder_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_DECODER.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

/// How far symphonia's probe looks for a format marker, bytes.
const PROBE_SEARCH_LIMIT: u64 = 1 << 20;

/// Checks the container structures symphonia 0.5 trusted before it allocated (see
/// [`check_mp4_tables`] and [`check_flac_metadata`]), finding each format's marker in one read of
/// the part of the file the probe searches. Leaves `file` rewound.
fn check_containers(file: &mut File, len: u64) -> std::result::Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| e.to_string();
    let mut head = Vec::new();
    file.by_ref().take(PROBE_SEARCH_LIMIT + 16).read_to_end(&mut head).map_err(io)?;
    let result = check_mp4_tables(file, len, &head).and_then(|()| check_flac_metadata(file, &head));
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    result
}

/// Refuses MP4/M4A files whose sample tables cannot fit in the file. symphonia 0.5's MP4 reader
/// sized its `stsc`, `stco`, `co64`, `stts` and `stsz` tables from the entry count in the file
/// before reading a single entry, so a corrupt count asked for up to 64 GB at once, and a failed
/// allocation aborts the whole process (it cannot be caught). The boxes are walked from the
/// first `ftyp` marker in `head` (where the probe would start) through moov/trak/mdia/minf/stbl;
/// every table must fit in what is left of its box. Other formats pass untouched. (symphonia 0.6
/// caps those first allocations, but the check stays: it names the bad table in one line.)
fn check_mp4_tables(file: &mut File, len: u64, head: &[u8]) -> std::result::Result<(), String> {
    let start = head.windows(4).position(|w| w == b"ftyp").filter(|&p| p >= 4).map(|p| (p - 4) as u64);
    match start {
        Some(start) => walk_mp4_boxes(file, start, len, 0, None),
        None => Ok(()),
    }
}

/// Refuses FLAC files whose metadata claims more bytes than its block holds. symphonia 0.5 read
/// a Vorbis comment's or a picture's length from the file and allocated that much (up to 4 GB)
/// before reading it (found by fuzzing: a 61 kB file asked for 2.7 GB). Every FLAC metadata block
/// is at most 16 MB, so each inner length is checked against what is left of its block. The
/// stream starts at the first `fLaC` marker in `head`; other formats pass untouched.
fn check_flac_metadata(file: &mut File, head: &[u8]) -> std::result::Result<(), String> {
    match head.windows(4).position(|w| w == b"fLaC") {
        Some(start) => walk_flac_blocks(file, start as u64 + 4),
        None => Ok(()),
    }
}

fn walk_flac_blocks(file: &mut File, mut pos: u64) -> std::result::Result<(), String> {
    for _ in 0..1024 {
        let mut h = [0u8; 4];
        if read_at(file, pos, &mut h) < 4 {
            return Ok(());
        }
        let (last, kind) = (h[0] & 0x80 != 0, h[0] & 0x7f);
        let len = u64::from(u32::from_be_bytes([0, h[1], h[2], h[3]]));
        let body = pos + 4;
        let mut block = vec![0u8; len as usize];
        let got = read_at(file, body, &mut block);
        block.truncate(got);
        let bad = |what: &str| Err(format!("corrupt FLAC metadata: a {what} length runs past its {len}-byte block"));
        match kind {
            4 => {
                // Vorbis comment: little-endian vendor length and string, count, then each
                // comment's length and text.
                let le = |b: &[u8], at: usize| {
                    b.get(at..at + 4).map(|x| u64::from(u32::from_le_bytes([x[0], x[1], x[2], x[3]])))
                };
                let mut at = 0usize;
                let Some(vendor) = le(&block, at) else { return Ok(()) };
                if vendor > (block.len() - 4) as u64 {
                    return bad("comment vendor");
                }
                at += 4 + vendor as usize;
                let Some(count) = le(&block, at) else { return Ok(()) };
                at += 4;
                for _ in 0..count.min(1 << 20) {
                    let Some(n) = le(&block, at) else { break };
                    if n > (block.len() - at - 4) as u64 {
                        return bad("comment");
                    }
                    at += 4 + n as usize;
                }
            }
            6 => {
                // Picture: type, then big-endian MIME length and string, description length
                // and string, four numbers, data length and data.
                let be = |b: &[u8], at: usize| {
                    b.get(at..at + 4).map(|x| u64::from(u32::from_be_bytes([x[0], x[1], x[2], x[3]])))
                };
                let mut at = 4usize;
                for (what, extra) in [("picture MIME type", 0usize), ("picture description", 16), ("picture", 0)] {
                    let Some(n) = be(&block, at) else { return Ok(()) };
                    if n > block.len().saturating_sub(at + 4) as u64 {
                        return bad(what);
                    }
                    at += 4 + n as usize + extra;
                }
            }
            _ => {}
        }
        if last {
            return Ok(());
        }
        pos = body + len;
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `pos`; returns how many were read (short at the end).
fn read_at(file: &mut File, pos: u64, buf: &mut [u8]) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    if file.seek(SeekFrom::Start(pos)).is_err() {
        return 0;
    }
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

fn walk_mp4_boxes(
    file: &mut File,
    start: u64,
    end: u64,
    depth: u32,
    parent: Option<[u8; 4]>,
) -> std::result::Result<(), String> {
    let be32 = |b: &[u8]| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let mut pos = start;
    while pos.saturating_add(8) <= end {
        let mut h = [0u8; 16];
        if read_at(file, pos, &mut h) < 8 {
            break;
        }
        let (header, size) = match be32(&h[0..4]) {
            1 => (16, u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]])),
            0 => (8, end - pos),
            s => (8, s),
        };
        if size < header {
            break; // malformed: symphonia says so
        }
        let kind = [h[4], h[5], h[6], h[7]];
        // Inside a container a box may not claim more than its parent holds: symphonia reads
        // some boxes (metadata `data` atoms) whole into memory sized by that claim, up to 4 GB
        // for a 60 kB file (found by fuzzing). At the top level a box running past the end is
        // a truncated file, which the decoder reports itself.
        if depth > 0 && pos.saturating_add(size) > end {
            return Err(format!(
                "corrupt MP4/M4A: its `{}` box claims {size} bytes but its parent holds {}",
                String::from_utf8_lossy(&kind).escape_default(),
                end - pos
            ));
        }
        let box_end = pos.saturating_add(size).min(end);
        let in_ilst = parent == Some(*b"ilst");
        match &kind {
            b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"udta" | b"ilst" | b"edts" | b"dinf" if depth < 8 => {
                walk_mp4_boxes(file, pos + header, box_end, depth + 1, Some(kind))?;
            }
            b"meta" if depth < 8 => {
                // ISO meta is a full box (4 bytes of version and flags first); QuickTime's is not.
                let mut v = [0u8; 4];
                let full = read_at(file, pos + header, &mut v) == 4 && v == [0, 0, 0, 0];
                walk_mp4_boxes(file, pos + header + if full { 4 } else { 0 }, box_end, depth + 1, Some(kind))?;
            }
            // Each metadata tag in `ilst` holds `data` (and `mean`, `name`) boxes.
            _ if in_ilst && depth < 8 => {
                walk_mp4_boxes(file, pos + header, box_end, depth + 1, Some(kind))?;
            }
            b"stsc" | b"stco" | b"co64" | b"stts" | b"stsz" => {
                // Version and flags, then the count (stsz: a constant size, then the count).
                let mut t = [0u8; 12];
                if read_at(file, pos + header, &mut t) == 12 {
                    let (count, entry_bytes, fixed) = match &kind {
                        b"stsc" => (be32(&t[4..8]), 12, 8),
                        b"stco" => (be32(&t[4..8]), 4, 8),
                        b"co64" | b"stts" => (be32(&t[4..8]), 8, 8),
                        _ if be32(&t[4..8]) == 0 => (be32(&t[8..12]), 4, 12),
                        _ => (0, 4, 12),
                    };
                    let room = box_end.saturating_sub(pos + header + fixed);
                    if count * entry_bytes > room {
                        return Err(format!(
                            "corrupt MP4/M4A: its `{}` table claims {count} entries but {room} bytes hold at most {}",
                            String::from_utf8_lossy(&kind),
                            room / entry_bytes
                        ));
                    }
                }
            }
            _ => {}
        }
        pos = pos.saturating_add(size);
    }
    Ok(())
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
    let mut found: Option<NonFinite> = None;
    for (channel, samples) in buffer.channels.iter().enumerate() {
        for (i, x) in samples.iter().enumerate() {
            if !x.is_finite() {
                let f = found.get_or_insert(NonFinite { count: 0, frame: i as u64, channel });
                f.count += 1;
                if (i as u64) < f.frame {
                    (f.frame, f.channel) = (i as u64, channel);
                }
            }
        }
    }
    match found {
        Some(found) => Err(non_finite_error(path, found, buffer.sample_rate_hz)),
        None => Ok(()),
    }
}

/// The one message for non-finite samples ([`check_finite`] and [`StreamDecoder::read`]).
fn non_finite_error(path: &Path, found: NonFinite, rate_hz: u32) -> Error {
    let NonFinite { count, frame, channel } = found;
    Error::input(
        path,
        format!(
            "{count} NaN/infinite samples (first at {:.3} s, frame {frame}, channel {}); refusing to process them",
            frame as f64 / f64::from(rate_hz.max(1)),
            channel + 1
        ),
    )
}

/// A reading error in words ("no such file", "permission denied").
pub fn io_reason(e: &std::io::Error) -> String {
    describe_io(e)
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
