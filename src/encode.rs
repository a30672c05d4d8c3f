//! The way out: WAV files (hound's layout, written a chunk at a time), 16/24-bit integer with
//! TPDF dither or 32-bit float.
//!
//! Every file is first written to a temporary file beside its target and renamed into place only
//! once complete, so a failure (disk full, killed process) never leaves a half-written output.
//! Writing over an input file is refused.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::audio::AudioBuffer;
use crate::ceiling::{quantise_with, CeilingNet, NetStats, Quantiser};
use crate::error::{Error, Result};

/// Output sample format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BitDepth {
    /// 16-bit integer PCM with TPDF dither.
    #[serde(rename = "16")]
    Int16,
    /// 24-bit integer PCM with TPDF dither.
    #[serde(rename = "24")]
    Int24,
    /// 32-bit IEEE float, no dither needed.
    #[serde(rename = "32f")]
    Float32,
}

impl std::str::FromStr for BitDepth {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "16" => Ok(BitDepth::Int16),
            "24" => Ok(BitDepth::Int24),
            "32f" | "32" | "float" => Ok(BitDepth::Float32),
            other => Err(format!("unknown bit depth `{other}` (use 16, 24 or 32f)")),
        }
    }
}

/// A small, fast, deterministic PRNG (xorshift64*) so dithered output is bit-identical run to run.
#[derive(Debug, Clone)]
pub struct DitherRng(u64);

impl DitherRng {
    /// Seeds the generator (a zero seed is replaced, xorshift must not start at 0).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }
    /// Uniform in [0, 1).
    #[inline]
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // Through i64: the same value (it is under 2^53), without the slow path that an
        // unsigned 64-bit conversion compiles to on x86-64.
        ((v >> 11) as i64) as f64 / (1u64 << 53) as f64
    }
    /// Triangular (TPDF) noise in (−1, 1) LSB: the sum of two uniform variables.
    #[inline]
    pub fn tpdf(&mut self) -> f64 {
        self.next_unit() - self.next_unit()
    }

    /// Fills `out` with the next `out.len()` values of [`Self::tpdf`], in order: the same
    /// values and the same state after, several times faster on a long buffer. One generator
    /// is a serial chain (each step waits for the last), so the buffer is cut in
    /// [`FILL_LANES`] equal parts, each drawn by its own copy of the generator started where
    /// that part's draws begin (xorshift is linear, so its state any number of steps on is a
    /// fixed matrix times the state: [`jump`]), and the copies step side by side.
    pub fn fill_tpdf(&mut self, out: &mut [f64]) {
        let part = out.len() / FILL_LANES;
        if part < 256 {
            out.iter_mut().for_each(|o| *o = self.tpdf());
            return;
        }
        // Two steps per value.
        let mut states = [self.0; FILL_LANES];
        for k in 1..FILL_LANES {
            states[k] = jump(states[k - 1], 2 * part as u64);
        }
        let (parts, tail) = out.split_at_mut(part * FILL_LANES);
        let mut lanes = parts.chunks_exact_mut(part);
        let (Some(a), Some(b), Some(c), Some(d)) = (lanes.next(), lanes.next(), lanes.next(), lanes.next()) else {
            return;
        };
        let [mut ra, mut rb, mut rc, mut rd] = states.map(DitherRng);
        for (((a, b), c), d) in a.iter_mut().zip(b.iter_mut()).zip(c.iter_mut()).zip(d.iter_mut()) {
            *a = ra.tpdf();
            *b = rb.tpdf();
            *c = rc.tpdf();
            *d = rd.tpdf();
        }
        self.0 = rd.0;
        tail.iter_mut().for_each(|o| *o = self.tpdf());
    }
}

/// Copies of the generator that [`DitherRng::fill_tpdf`] steps side by side.
const FILL_LANES: usize = 4;

/// One xorshift step of [`DitherRng::next_unit`] (without its output multiply).
#[inline]
fn xorshift(mut s: u64) -> u64 {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    s
}

/// The xorshift state `steps` steps after `state`. A step is linear over GF(2) (shifts and
/// exclusive ors), so `steps` of them are the matrix M^steps: applied as the product of the
/// powers M^(2^j) of the bits set in `steps`, each held as its 64 columns (the images of the
/// 64 one-bit states) and applied as the exclusive or of the columns of the state's set bits.
fn jump(state: u64, steps: u64) -> u64 {
    static POWERS: std::sync::OnceLock<Vec<[u64; 64]>> = std::sync::OnceLock::new();
    let powers = POWERS.get_or_init(|| {
        let apply = |m: &[u64; 64], s: u64| (0..64).filter(|i| s >> i & 1 == 1).fold(0u64, |a, i| a ^ m[i]);
        let mut p: Vec<[u64; 64]> = vec![std::array::from_fn(|i| xorshift(1 << i))];
        for j in 1..64 {
            let m = p[j - 1];
            p.push(std::array::from_fn(|i| apply(&m, m[i])));
        }
        p
    });
    let mut s = state;
    for (j, m) in powers.iter().enumerate() {
        if steps >> j & 1 == 1 {
            s = (0..64).filter(|i| s >> i & 1 == 1).fold(0u64, |a, i| a ^ m[i]);
        }
    }
    s
}

/// Quantises one sample to a `bits`-bit integer with TPDF dither, clamped to the integer range.
#[inline]
pub fn quantise(x: f32, bits: u32, rng: &mut DitherRng) -> i32 {
    quantise_with(x, bits, rng.tpdf())
}

/// Refuses to write `output` when it is one of `inputs` (compared after resolving symlinks).
pub fn refuse_overwriting_inputs(output: &Path, inputs: &[&Path]) -> Result<()> {
    let out = canonical_target(output);
    for input in inputs {
        if let Ok(inp) = std::fs::canonicalize(input) {
            if inp == out {
                return Err(Error::output(output, "is an input file; refusing to overwrite it"));
            }
        }
    }
    Ok(())
}

/// Refuses an output that cannot be replaced by a new file safely: a folder, a device, a pipe
/// or a socket (or a symbolic link to one). Writing goes through a temporary file renamed into
/// place, which would turn `/dev/null` or a FIFO into a regular file. The output's folder must
/// exist.
pub fn check_output_path(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::output(path, "empty output path"));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Err(Error::output(path, "is a folder"));
        }
        if !meta.is_file() {
            return Err(Error::output(
                path,
                "is not a regular file (a device, pipe or socket); refusing to replace it",
            ));
        }
    }
    let dir = parent_dir(path);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::output(path, format!("{} is not a folder", dir.display()))),
        Err(_) => Err(Error::output(path, format!("folder {} does not exist", dir.display()))),
    }
}

/// Refuses an audio output whose name asks for a format refmaster does not write: it writes WAV
/// (RIFF) only, and a FLAC or MP3 name over WAV data would mislead every player and tagger.
pub fn check_wav_name(path: &Path) -> Result<()> {
    match path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()) {
        Some(e) if e == "wav" || e == "wave" => Ok(()),
        Some(e) => Err(Error::output(
            path,
            format!("refmaster writes WAV only, not .{e}: name the output .wav (and convert it afterwards, e.g. with ffmpeg or flac)"),
        )),
        None => Err(Error::output(path, "has no extension: name the output .wav")),
    }
}

/// The absolute path `path` would have once written (its folder resolved, the name kept).
pub fn canonical_target(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let dir = parent_dir(path);
    match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => path.to_path_buf(),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes_writer`'s output atomically to `path`: a temporary file in the same folder,
/// renamed into place only when `write` succeeded. On any failure the temporary file is removed.
pub fn write_atomically<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
{
    check_output_path(path)?;
    // A symbolic link to a regular file: write the file it points to and keep the link (a rename
    // onto the link's own name would replace the link).
    let resolved;
    let path = if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        resolved = std::fs::canonicalize(path).map_err(|e| Error::output(path, io_reason(&e)))?;
        resolved.as_path()
    } else {
        path
    };
    let dir = parent_dir(path);
    ignore_file_size_signal();
    let mut write = Some(write);
    #[cfg(target_os = "linux")]
    if let Some(result) = anonymous::write(dir, path, &mut write) {
        return result;
    }
    let write = write.ok_or_else(|| Error::output(path, "internal: writer consumed"))?;
    write_named(dir, path, write)
}

/// The portable path: a named temporary file (`.refmaster-*.part`) beside the target, removed on
/// any error. A process killed outright (SIGKILL, power loss) can leave it behind; on Linux the
/// anonymous path below is used instead so that cannot happen.
fn write_named<F>(dir: &Path, path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
{
    let mut builder = tempfile::Builder::new();
    builder.prefix(".refmaster-").suffix(".part");
    // tempfile creates 0600 files; ask for 0666 so the output gets the usual permissions (the
    // umask still applies, as for any new file), not owner-only ones after the rename.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).map_err(|e| create_error(dir, path, &e))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        write(&mut w).and_then(|()| w.flush()).map_err(|e| Error::output(path, io_reason(&e)))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::output(path, io_reason(&e)))?;
    tmp.persist(path).map_err(|e| Error::output(path, io_reason(&e.error)))?;
    Ok(())
}

fn create_error(dir: &Path, path: &Path, e: &std::io::Error) -> Error {
    // The folder exists (checked above), so "not found" here means it takes no new files
    // (e.g. /proc), not that it is missing.
    let reason = if e.kind() == std::io::ErrorKind::NotFound {
        format!("cannot create files in folder {}", dir.display())
    } else {
        io_reason(e)
    };
    Error::output(path, reason)
}

/// Linux: the output is written into an anonymous file (`O_TMPFILE`) that has no name until it is
/// complete, so a process killed at any moment leaves nothing behind: the kernel frees an unnamed
/// file when its last descriptor closes. Once written and synced it is linked under a unique
/// temporary name and renamed over the target in one step (rename replaces atomically; `linkat`
/// cannot). Returns `None` when the file system does not support `O_TMPFILE` (or `/proc` is not
/// mounted), and the caller falls back to a named temporary file.
#[cfg(target_os = "linux")]
mod anonymous {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;

    pub(super) fn write<F>(dir: &Path, path: &Path, write: &mut Option<F>) -> Option<Result<()>>
    where
        F: FnOnce(&mut BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
    {
        if !Path::new("/proc/self/fd").is_dir() {
            return None;
        }
        let mut file = match std::fs::OpenOptions::new().write(true).mode(0o666).custom_flags(libc::O_TMPFILE).open(dir)
        {
            Ok(f) => f,
            // EOPNOTSUPP (file system without O_TMPFILE), EISDIR/ENOENT (kernel older than 3.11
            // treats the flag bits as O_DIRECTORY): use the named path.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::ENOENT | libc::EINVAL)) =>
            {
                return None;
            }
            Err(e) => return Some(Err(create_error(dir, path, &e))),
        };
        let write = write.take()?;
        Some(fill_and_link(&mut file, dir, path, write))
    }

    fn fill_and_link<F>(file: &mut std::fs::File, dir: &Path, path: &Path, write: F) -> Result<()>
    where
        F: FnOnce(&mut BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
    {
        let err = |e: std::io::Error| Error::output(path, io_reason(&e));
        {
            let mut w = BufWriter::with_capacity(1 << 20, &mut *file);
            write(&mut w).and_then(|()| w.flush()).map_err(err)?;
        }
        file.sync_all().map_err(err)?;
        let source = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|_| Error::output(path, "internal: bad descriptor path"))?;
        // A unique name for the instant between link and rename (pid + counter + clock).
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let mut attempt = 0;
        loop {
            let staging = dir.join(format!(".refmaster-{}-{n}-{nanos:x}-{attempt}.part", std::process::id()));
            let target = CString::new(staging.as_os_str().as_bytes())
                .map_err(|_| Error::output(path, "path contains a NUL byte"))?;
            // SAFETY: both arguments are valid NUL-terminated strings that outlive the call.
            let rc = unsafe {
                libc::linkat(libc::AT_FDCWD, source.as_ptr(), libc::AT_FDCWD, target.as_ptr(), libc::AT_SYMLINK_FOLLOW)
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EEXIST) && attempt < 16 {
                    attempt += 1;
                    continue;
                }
                return Err(err(e));
            }
            return std::fs::rename(&staging, path).map_err(|e| {
                let _ = std::fs::remove_file(&staging);
                err(e)
            });
        }
    }
}

/// Makes a write past the file-size limit (`ulimit -f`, RLIMIT_FSIZE) fail with EFBIG ("file too
/// large") instead of killing the process: SIGXFSZ's default action terminates it on the spot,
/// before the temporary file can be removed or an error printed. Ignoring the signal is what
/// every program that reports write errors itself does (as Rust's runtime does for SIGPIPE).
#[cfg(all(unix, not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64"))))]
fn ignore_file_size_signal() {
    // SIGXFSZ is 25 on Linux (but for MIPS and SPARC, excluded above), macOS and the BSDs.
    const SIGXFSZ: std::os::raw::c_int = 25;
    const SIG_IGN: usize = 1;
    unsafe extern "C" {
        fn signal(signum: std::os::raw::c_int, handler: usize) -> usize;
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: installing SIG_IGN has no handler code to run and touches no Rust state.
    ONCE.call_once(|| unsafe {
        signal(SIGXFSZ, SIG_IGN);
    });
}

#[cfg(not(all(unix, not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))))]
fn ignore_file_size_signal() {}

/// Writes a text file atomically (used for settings, exports and reports).
pub fn write_text_atomically(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, |w| w.write_all(text.as_bytes()))
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    // tempfile wraps the OS error of creating its file with the file's path ("... at path
    // .refmaster-x.part"): the raw code is lost, but the kind is kept, so match both.
    match (e.raw_os_error(), e.kind()) {
        (Some(28), _) | (_, ErrorKind::StorageFull) => "no space left on device".into(),
        (Some(30), _) | (_, ErrorKind::ReadOnlyFilesystem) => "read-only file system".into(),
        (Some(27), _) | (_, ErrorKind::FileTooLarge) => "file too large (size limit reached)".into(),
        (_, ErrorKind::PermissionDenied) => "permission denied".into(),
        (_, ErrorKind::NotFound) => "folder does not exist".into(),
        _ => e.to_string(),
    }
}

/// Writes `audio` as a WAV file at `path` in the given format, atomically. `dither_seed` makes
/// the TPDF dither reproducible.
pub fn write_wav(path: &Path, audio: &AudioBuffer, depth: BitDepth, dither_seed: u64) -> Result<()> {
    write_wav_stream(path, audio.sample_rate_hz, audio.channel_count(), depth, |w| {
        w.set_dither_seed(dither_seed);
        let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
        w.write(&planes)
    })
}

/// Writes a WAV file at `path` atomically whose samples `produce` hands, chunk by chunk, to the
/// [`WavChunks`] it is given: a master streamed from the render never has to be in memory
/// whole. If `produce` fails, nothing is left at `path` and its error is returned.
pub fn write_wav_stream<F>(path: &Path, sample_rate_hz: u32, channels: usize, depth: BitDepth, produce: F) -> Result<()>
where
    F: FnOnce(&mut WavChunks<'_>) -> Result<()>,
{
    let channels = u16::try_from(channels).map_err(|_| Error::output(path, "too many channels"))?;
    if channels == 0 {
        return Err(Error::output(path, "no channels to write"));
    }
    let layout = WavLayout { channels, sample_rate_hz, depth };
    // The producer's own error (a decode failure, say) travels past the io-typed writer here.
    let mut failure: Option<Error> = None;
    let result = write_atomically(path, |w| {
        let w: &mut dyn WriteSeek = w;
        w.write_all(&layout.header(0))?;
        let bits = match depth {
            BitDepth::Int16 => 16,
            BitDepth::Int24 => 24,
            BitDepth::Float32 => 32,
        };
        let mut chunks = WavChunks {
            out: w,
            layout,
            data_bytes: 0,
            depth,
            bits,
            rng: DitherRng::new(0),
            interleaved: Vec::new(),
            bytes: Vec::new(),
            draws: Vec::new(),
            path: path.to_path_buf(),
            sample_rate_hz,
            channels: usize::from(channels),
            net: None,
            net_stats: None,
        };
        if let Err(e) = produce(&mut chunks).and_then(|()| chunks.end().map(|_| ())) {
            failure = Some(e);
            return Err(std::io::Error::other("the master could not be produced"));
        }
        chunks.finalize()
    });
    match (result, failure) {
        (_, Some(e)) => Err(e),
        (r, None) => r,
    }
}

/// A seekable byte sink (what a WAV writer needs to patch its header at the end).
pub trait WriteSeek: Write + std::io::Seek {}
impl<T: Write + std::io::Seek> WriteSeek for T {}

/// The shape of a WAV file as [`write_wav_stream`] writes it: hound's layout (3.5) to the byte,
/// so the files are the ones refmaster wrote with hound sample by sample, written here a chunk
/// at a time (hound's per-sample `write_sample` was a tenth of the writing stage).
#[derive(Debug, Clone, Copy)]
struct WavLayout {
    channels: u16,
    sample_rate_hz: u32,
    depth: BitDepth,
}

/// KSDATAFORMAT_SUBTYPE_PCM, the WAVE_FORMAT_EXTENSIBLE sub-format of integer samples.
const SUBTYPE_PCM: [u8; 16] = [1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xaa, 0, 0x38, 0x9b, 0x71];
/// KSDATAFORMAT_SUBTYPE_IEEE_FLOAT, the sub-format of 32-bit float samples.
const SUBTYPE_IEEE_FLOAT: [u8; 16] = [3, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xaa, 0, 0x38, 0x9b, 0x71];

impl WavLayout {
    fn bytes_per_sample(self) -> u16 {
        match self.depth {
            BitDepth::Int16 => 2,
            BitDepth::Int24 => 3,
            BitDepth::Float32 => 4,
        }
    }

    /// The plain PCMWAVEFORMAT header (16-bit mono or stereo, the most widely read); more
    /// channels or bits take WAVE_FORMAT_EXTENSIBLE, as hound chooses.
    fn extensible(self) -> bool {
        self.channels > 2 || self.bytes_per_sample() > 2
    }

    /// Byte offset of the data chunk's length, the last field of the header.
    fn data_len_offset(self) -> u64 {
        if self.extensible() {
            64
        } else {
            40
        }
    }

    /// The most sample bytes the file can hold: the RIFF chunk's size (the data, plus the
    /// header after its first 8 bytes) is a 32-bit field.
    fn max_data_bytes(self) -> u64 {
        u64::from(u32::MAX) - (self.data_len_offset() + 4 - 8)
    }

    /// The header (RIFF, fmt and the data chunk's start) of a file of `data_bytes` sample bytes.
    fn header(self, data_bytes: u32) -> Vec<u8> {
        let bytes = self.bytes_per_sample();
        let block_align = bytes.wrapping_mul(self.channels);
        let byte_rate = self.sample_rate_hz.wrapping_mul(u32::from(block_align));
        let riff_size = data_bytes.wrapping_add((self.data_len_offset() + 4 - 8) as u32);
        let mut h = Vec::with_capacity(68);
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&riff_size.to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        let float = self.depth == BitDepth::Float32;
        let format_tag: u16 = match (self.extensible(), float) {
            (true, _) => 0xfffe,
            (false, true) => 3,
            (false, false) => 1,
        };
        h.extend_from_slice(&(if self.extensible() { 40u32 } else { 16 }).to_le_bytes());
        h.extend_from_slice(&format_tag.to_le_bytes());
        h.extend_from_slice(&self.channels.to_le_bytes());
        h.extend_from_slice(&self.sample_rate_hz.to_le_bytes());
        h.extend_from_slice(&byte_rate.to_le_bytes());
        h.extend_from_slice(&block_align.to_le_bytes());
        h.extend_from_slice(&(bytes * 8).to_le_bytes());
        if self.extensible() {
            // cbSize, valid bits, channel mask (the first channels, at most 18), sub-format.
            h.extend_from_slice(&22u16.to_le_bytes());
            h.extend_from_slice(&(bytes * 8).to_le_bytes());
            let mask = (0..u32::from(self.channels.min(18))).fold(0u32, |m, c| m | 1 << c);
            h.extend_from_slice(&mask.to_le_bytes());
            h.extend_from_slice(if float { &SUBTYPE_IEEE_FLOAT } else { &SUBTYPE_PCM });
        }
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data_bytes.to_le_bytes());
        h
    }

    /// Appends the little-endian bytes of interleaved samples to `bytes`: integers in the
    /// file's width (the quantiser has clamped them to its range), or the bits of 32-bit
    /// floats as [`CeilingNet`] hands them (`f32::to_bits`).
    fn encode(self, samples: &[i32], bytes: &mut Vec<u8>) {
        let width = usize::from(self.bytes_per_sample());
        let at = bytes.len();
        bytes.resize(at + samples.len() * width, 0);
        let out = &mut bytes[at..];
        match self.depth {
            BitDepth::Int16 => {
                for (b, &v) in out.chunks_exact_mut(2).zip(samples) {
                    b.copy_from_slice(&(v as i16).to_le_bytes());
                }
            }
            BitDepth::Int24 => {
                // Four samples in three little-endian words (a tenth of the time of three
                // bytes at a time), the rest one by one.
                let mut four = out.chunks_exact_mut(12);
                let mut groups = samples.chunks_exact(4);
                for (b, g) in (&mut four).zip(&mut groups) {
                    let [s0, s1, s2, s3] = [g[0], g[1], g[2], g[3]].map(|v| v as u32 & 0x00ff_ffff);
                    b[0..4].copy_from_slice(&(s0 | s1 << 24).to_le_bytes());
                    b[4..8].copy_from_slice(&(s1 >> 8 | s2 << 16).to_le_bytes());
                    b[8..12].copy_from_slice(&(s2 >> 16 | s3 << 8).to_le_bytes());
                }
                for (b, &v) in four.into_remainder().chunks_exact_mut(3).zip(groups.remainder()) {
                    b.copy_from_slice(&v.to_le_bytes()[..3]);
                }
            }
            BitDepth::Float32 => {
                for (b, &v) in out.chunks_exact_mut(4).zip(samples) {
                    b.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// The open WAV file [`write_wav_stream`] hands its producer: planar chunks in, dithered and
/// interleaved samples out.
pub struct WavChunks<'a> {
    out: &'a mut (dyn WriteSeek + 'a),
    layout: WavLayout,
    /// Sample bytes written so far.
    data_bytes: u64,
    depth: BitDepth,
    bits: u32,
    rng: DitherRng,
    interleaved: Vec<i32>,
    /// The file's bytes of the chunk being written.
    bytes: Vec<u8>,
    /// The chunk's dither (without the net, which draws its own).
    draws: Vec<f64>,
    path: PathBuf,
    sample_rate_hz: u32,
    channels: usize,
    /// The true-peak ceiling's last guard ([`crate::ceiling`]), when a ceiling was set.
    net: Option<CeilingNet>,
    /// What the net did, once the stream has ended.
    net_stats: Option<NetStats>,
}

impl WavChunks<'_> {
    /// Forgets every sample written so far: the next chunk is written at the start of the data
    /// again (a master written speculatively, then written again; the same length overwrites
    /// it to the byte, and the header's sizes are written at the end). The net, if any, is
    /// dropped with what it held back: set the ceiling again.
    pub fn rewind(&mut self) -> Result<()> {
        if self.data_bytes == 0 && self.net.is_none() {
            return Ok(());
        }
        let start = self.layout.header(0).len() as u64;
        self.out.seek(std::io::SeekFrom::Start(start)).map_err(|e| Error::output(&self.path, io_reason(&e)))?;
        self.data_bytes = 0;
        self.net = None;
        self.net_stats = None;
        Ok(())
    }

    /// Restarts the TPDF dither from `seed` (call before the first chunk).
    pub fn set_dither_seed(&mut self, seed: u64) {
        self.rng = DitherRng::new(seed);
    }

    /// Holds the written samples' true peak at or under `ceiling_dbtp` (call before the first
    /// chunk): every chunk then passes through the [`CeilingNet`], which measures the quantised
    /// samples and lowers any stretch that would pass the ceiling (see [`crate::ceiling`]).
    pub fn set_ceiling(&mut self, ceiling_dbtp: f64) {
        let quantiser = match self.depth {
            BitDepth::Float32 => Quantiser::Float,
            BitDepth::Int16 | BitDepth::Int24 => Quantiser::Int(self.bits),
        };
        self.net = Some(CeilingNet::new(self.sample_rate_hz, self.channels, ceiling_dbtp, quantiser));
    }

    /// Ends the stream (the net writes the frames it held back) and returns what the net did:
    /// `None` without a ceiling. Called by [`write_wav_stream`] when the producer has not.
    pub fn end(&mut self) -> Result<Option<NetStats>> {
        if let Some(mut net) = self.net.take() {
            let mut out = std::mem::take(&mut self.interleaved);
            out.clear();
            self.net_stats = Some(net.finish(&mut out));
            let r = self.write_interleaved(&out);
            self.interleaved = out;
            r?;
        }
        Ok(self.net_stats.clone())
    }

    /// Writes interleaved samples (integers, or float bits) to the file.
    fn write_interleaved(&mut self, samples: &[i32]) -> Result<()> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        self.layout.encode(samples, &mut bytes);
        let r = self.write_bytes(&bytes);
        self.bytes = bytes;
        r
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let total = self.data_bytes + bytes.len() as u64;
        if total > self.layout.max_data_bytes() {
            return Err(Error::output(&self.path, "too long for a WAV file (its samples would pass 4 GiB)"));
        }
        self.out.write_all(bytes).map_err(|e| Error::output(&self.path, io_reason(&e)))?;
        self.data_bytes = total;
        Ok(())
    }

    /// Writes the sizes into the header (the data's length, now known) and flushes.
    fn finalize(&mut self) -> std::io::Result<()> {
        use std::io::SeekFrom;
        let data = u32::try_from(self.data_bytes).map_err(std::io::Error::other)?;
        let header = self.layout.header(data);
        self.out.seek(SeekFrom::Start(4))?;
        self.out.write_all(&header[4..8])?;
        let at = self.layout.data_len_offset();
        self.out.seek(SeekFrom::Start(at))?;
        self.out.write_all(&data.to_le_bytes())?;
        self.out.flush()
    }

    /// Appends a planar chunk (one slice per channel, equal lengths).
    pub fn write(&mut self, chunk: &[&[f32]]) -> Result<()> {
        let mut out = std::mem::take(&mut self.interleaved);
        out.clear();
        if let Some(net) = self.net.as_mut() {
            net.push(chunk, &mut self.rng, &mut out);
        } else {
            let frames = chunk.first().map_or(0, |c| c.len());
            match self.depth {
                BitDepth::Float32 => {
                    out.extend((0..frames).flat_map(|i| chunk.iter().map(move |ch| ch[i].to_bits() as i32)));
                }
                BitDepth::Int16 | BitDepth::Int24 => {
                    // The dither in frame order, channel within frame, as `quantise` draws it.
                    let mut draws = std::mem::take(&mut self.draws);
                    draws.clear();
                    draws.resize(frames * chunk.len(), 0.0);
                    self.rng.fill_tpdf(&mut draws);
                    let samples = (0..frames).flat_map(|i| chunk.iter().map(move |ch| ch[i]));
                    out.extend(samples.zip(&draws).map(|(x, &d)| quantise_with(x, self.bits, d)));
                    self.draws = draws;
                }
            }
        }
        let r = self.write_interleaved(&out);
        self.interleaved = out;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test audio: a loud sine with an over every 1777 frames (which the net lowers), per channel.
    fn signal(channels: usize, frames: usize) -> Vec<Vec<f32>> {
        (0..channels)
            .map(|c| {
                (0..frames)
                    .map(|i| {
                        let v = 0.8 * (i as f32 * 0.05 * (c + 1) as f32).sin();
                        if i % 1777 == 5 {
                            1.3
                        } else {
                            v
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// The dither drawn a buffer at a time is the dither drawn one value at a time, and the
    /// generator ends in the same state, for buffers too short to split and long ones whose
    /// parts do not divide evenly.
    #[test]
    fn dither_drawn_a_buffer_at_a_time_is_the_one_drawn_value_by_value() {
        for (seed, len) in [(0, 0), (1, 1), (2, 1023), (3, 1024), (4, 1025), (5, 4099), (6, 131_072), (7, 262_147)] {
            let (mut one, mut many) = (DitherRng::new(seed), DitherRng::new(seed));
            let want: Vec<f64> = (0..len).map(|_| one.tpdf()).collect();
            let mut got = vec![0.0; len];
            many.fill_tpdf(&mut got);
            assert!(got == want, "{len} values from seed {seed}");
            assert_eq!(one.next_unit(), many.next_unit(), "state after {len} values");
        }
        // Jumps of any length, by the step itself.
        let mut s = 0x1234_5678_9abc_def0u64;
        for steps in 0..300u64 {
            assert_eq!(jump(0x1234_5678_9abc_def0, steps), s, "{steps} steps");
            s = xorshift(s);
        }
    }

    /// Where the test audio is cut into chunks: 1, 999, 1, 3095 and 907 frames (each written
    /// after an empty one).
    const CUTS: [usize; 6] = [0, 1, 1000, 1001, 4096, 5_003];

    /// The file hound writes for `samples` (interleaved: integers, or the bits of floats).
    fn hound_file(channels: usize, rate: u32, depth: BitDepth, samples: &[i32]) -> Vec<u8> {
        let (bits, format) = match depth {
            BitDepth::Int16 => (16, hound::SampleFormat::Int),
            BitDepth::Int24 => (24, hound::SampleFormat::Int),
            BitDepth::Float32 => (32, hound::SampleFormat::Float),
        };
        let spec = hound::WavSpec {
            channels: channels as u16,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: format,
        };
        let mut file = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut file, spec).expect("hound writes");
        for &v in samples {
            match depth {
                BitDepth::Float32 => w.write_sample(f32::from_bits(v as u32)),
                _ => w.write_sample(v),
            }
            .expect("hound writes");
        }
        w.finalize().expect("hound finalises");
        file.into_inner()
    }

    /// The file written is the one hound writes sample by sample (refmaster's writer before it
    /// wrote a chunk at a time): header and samples, every byte, in each format, for mono,
    /// stereo and 6 channels (hound's plain and extensible headers), with the dither and with
    /// the ceiling's net, in chunks of any size.
    #[test]
    fn the_wav_files_are_the_bytes_hound_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out.wav");
        for depth in [BitDepth::Int16, BitDepth::Int24, BitDepth::Float32] {
            for channels in [1, 2, 6] {
                for ceiling in [None, Some(-1.0)] {
                    let rate = 48_000;
                    let audio = signal(channels, 5_003);
                    let mut net_stats = None;
                    write_wav_stream(&path, rate, channels, depth, |w| {
                        w.set_dither_seed(42);
                        if let Some(c) = ceiling {
                            w.set_ceiling(c);
                        }
                        for s in CUTS.windows(2) {
                            let planes: Vec<&[f32]> = audio.iter().map(|c| &c[s[0]..s[0]]).collect();
                            w.write(&planes)?;
                            let planes: Vec<&[f32]> = audio.iter().map(|c| &c[s[0]..s[1]]).collect();
                            w.write(&planes)?;
                        }
                        net_stats = w.end()?;
                        Ok(())
                    })
                    .expect("writes");
                    // The samples as refmaster always chose them: through the net, else
                    // quantised in frame order with the same seed (or the floats).
                    let mut rng = DitherRng::new(42);
                    let mut samples = Vec::new();
                    match ceiling {
                        Some(c) => {
                            let q = match depth {
                                BitDepth::Float32 => Quantiser::Float,
                                BitDepth::Int16 => Quantiser::Int(16),
                                BitDepth::Int24 => Quantiser::Int(24),
                            };
                            let mut net = CeilingNet::new(rate, channels, c, q);
                            for s in CUTS.windows(2) {
                                let planes: Vec<&[f32]> = audio.iter().map(|c| &c[s[0]..s[1]]).collect();
                                net.push(&planes, &mut rng, &mut samples);
                            }
                            assert_eq!(net_stats, Some(net.finish(&mut samples)));
                        }
                        None => {
                            for i in 0..audio[0].len() {
                                for ch in &audio {
                                    samples.push(match depth {
                                        BitDepth::Float32 => ch[i].to_bits() as i32,
                                        BitDepth::Int16 => quantise(ch[i], 16, &mut rng),
                                        BitDepth::Int24 => quantise(ch[i], 24, &mut rng),
                                    });
                                }
                            }
                        }
                    }
                    assert_eq!(samples.len(), channels * audio[0].len());
                    let written = std::fs::read(&path).expect("reads back");
                    let want = hound_file(channels, rate, depth, &samples);
                    assert!(written == want, "{depth:?}, {channels} channels, ceiling {ceiling:?}: not hound's bytes");
                }
            }
        }
    }

    /// A stream written, rewound and written again is, byte for byte, the file written once
    /// with the second signal: the speculative master a rejected reading wrote leaves no trace
    /// (its samples, the net's held-back frames, the dither's state), in every format.
    #[test]
    fn a_rewound_stream_is_the_file_written_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (once, twice) = (dir.path().join("once.wav"), dir.path().join("twice.wav"));
        let rate = 44_100;
        let first: Vec<Vec<f32>> = signal(2, 5_003).into_iter().map(|c| c.iter().map(|x| 1.2 * x).collect()).collect();
        let second = signal(2, 5_003);
        let write = |w: &mut WavChunks<'_>, audio: &[Vec<f32>]| -> Result<()> {
            w.set_dither_seed(7);
            w.set_ceiling(-1.0);
            for s in CUTS.windows(2) {
                let planes: Vec<&[f32]> = audio.iter().map(|c| &c[s[0]..s[1]]).collect();
                w.write(&planes)?;
            }
            Ok(())
        };
        for depth in [BitDepth::Int16, BitDepth::Int24, BitDepth::Float32] {
            write_wav_stream(&once, rate, 2, depth, |w| write(w, &second)).expect("writes once");
            write_wav_stream(&twice, rate, 2, depth, |w| {
                write(w, &first)?;
                w.rewind()?;
                write(w, &second)
            })
            .expect("writes twice");
            let (a, b) = (std::fs::read(&once).expect("reads"), std::fs::read(&twice).expect("reads"));
            assert!(a == b, "{depth:?}: the rewound file differs from the one written once");
        }
    }

    /// A file whose samples would pass the 4 GiB a WAV header can count is refused (hound
    /// wrapped the count round and wrote a header that lies), and nothing is left behind.
    #[test]
    fn a_file_past_the_wav_size_limit_is_refused() {
        let layout = WavLayout { channels: 2, sample_rate_hz: 48_000, depth: BitDepth::Float32 };
        assert_eq!(layout.max_data_bytes() + layout.data_len_offset() + 4 - 8, u64::from(u32::MAX));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("long.wav");
        let r = write_wav_stream(&path, 48_000, 2, BitDepth::Float32, |w| {
            // As if nearly 4 GiB had been written already.
            w.data_bytes = w.layout.max_data_bytes() - 4;
            w.write(&[&[0.1][..], &[0.2][..]])
        });
        let e = r.expect_err("refused").to_string();
        assert!(e.contains("long.wav") && e.contains("4 GiB"), "{e}");
        assert!(std::fs::read_dir(dir.path()).expect("lists").next().is_none(), "something was left behind");
    }
}
