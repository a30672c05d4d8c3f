//! `refmaster._native`: the thin layer between Python and refmaster's library.
//!
//! Every entry point here calls the library as the command line does ([`refmaster::job::run`]
//! for a master, [`refmaster::render::stream::render_stream`] for `apply`,
//! [`refmaster::job::load_reference`] for `analyze`), with the GIL released for the whole of the
//! work, so Python threads master files side by side. Data crosses the boundary as JSON text
//! (profiles, settings, options: the same JSON the command line reads and writes) and as raw
//! little-endian f32 bytes (audio, interleaved frames), which the Python side turns into dicts
//! and NumPy arrays. Errors become `refmaster.RefmasterError` subclasses carrying the command
//! line's one-line message; a panic is caught and becomes a `RefmasterError` too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use refmaster::encode::{write_wav_stream, BitDepth};
use refmaster::job::{check_outputs, JobFiles, JobOptions, OutputKind};
use refmaster::settings::Settings;
use refmaster::Error;

create_exception!(
    refmaster,
    RefmasterError,
    PyException,
    "Any error refmaster reports; the message is the command line's."
);
create_exception!(
    refmaster,
    InputError,
    RefmasterError,
    "An input file cannot be read or its audio is unusable; the message names the file."
);
create_exception!(
    refmaster,
    UnsupportedError,
    RefmasterError,
    "A request refmaster cannot honour (e.g. more than two channels to master)."
);
create_exception!(
    refmaster,
    OptionError,
    RefmasterError,
    "An option or a settings field is unknown, out of range or not a number."
);
create_exception!(refmaster, OutputError, RefmasterError, "An output cannot be written (nothing was left behind).");

/// The Python exception for a library error, with the command line's wording.
fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Input { .. } => InputError::new_err(msg),
        Error::Unsupported(_) => UnsupportedError::new_err(msg),
        Error::Option { .. } | Error::Settings { .. } => OptionError::new_err(msg),
        Error::Output { .. } => OutputError::new_err(msg),
    }
}

/// Runs `work` without the GIL, turning a library error or a panic into a Python exception.
fn run_detached<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> refmaster::Result<T> + Send,
{
    let outcome = py.detach(|| catch_unwind(AssertUnwindSafe(work)));
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(RefmasterError::new_err(format!("internal error in refmaster: {what}")))
        }
    }
}

/// A bit depth as the command line names it: "16", "24" or "32f".
fn parse_bits(bits: &str) -> refmaster::Result<BitDepth> {
    bits.parse().map_err(|e: <BitDepth as std::str::FromStr>::Err| Error::option("bits", e.to_string()))
}

/// Masters `mix` toward `references` (or a learned target with none) with `options_json` (the
/// command line's long options as a JSON object, `bits` included) into the WAV file `output`,
/// exactly as `refmaster MIX --ref REF -o OUTPUT` does (the Python side passes a private
/// temporary file when the caller asked for no file). With `preview`, the loudness-matched
/// excerpts are written beside it. Returns a JSON object: `settings`, `mix_profile`,
/// `master_profile`, `target_profile` (JSON values), `target_note`, `notes`, `warnings`,
/// `report` (lines), `previews` ([mix, master] paths or null).
#[pyfunction]
#[pyo3(signature = (mix, references, options_json, output, preview=false))]
fn master(
    py: Python<'_>,
    mix: PathBuf,
    references: Vec<PathBuf>,
    options_json: &str,
    output: PathBuf,
    preview: bool,
) -> PyResult<String> {
    run_detached(py, move || {
        let value: serde_json::Value = serde_json::from_str(options_json)
            .map_err(|e| Error::settings("options", "", format!("not a JSON object: {e}")))?;
        let opts = JobOptions::from_json_value(value, "options")?;
        let files = JobFiles { mix, references, output: Some(output), preview, ..JobFiles::default() };
        let result = refmaster::job::run(&files, &opts, &|_| {})?;
        let previews = result
            .written
            .iter()
            .filter(|(k, _)| matches!(k, OutputKind::PreviewMix | OutputKind::PreviewMaster))
            .map(|(_, p)| p.display().to_string())
            .collect::<Vec<_>>();
        let settings: serde_json::Value = serde_json::from_str(&result.mastered.settings.to_json())
            .map_err(|e| Error::Unsupported(format!("internal: settings JSON: {e}")))?;
        let json = serde_json::json!({
            "settings": settings,
            "mix_profile": result.mix_profile,
            "master_profile": result.mastered.profile,
            "target_profile": result.target,
            "target_note": result.target_note,
            "notes": result.mastered.notes,
            "warnings": result.warnings(),
            "report": result.report_lines(),
            "previews": if previews.is_empty() { serde_json::Value::Null } else { serde_json::json!(previews) },
        });
        Ok(json.to_string())
    })
}

/// Renders `mix` with saved settings (`settings_json`, the JSON `refmaster --settings` writes)
/// into the WAV file `master_path` at `bits`, as `refmaster apply` does (the settings' dither
/// seed, the writer's ceiling guard at the limiter's ceiling). Returns a JSON object:
/// `settings`, `master_profile`.
#[pyfunction]
#[pyo3(signature = (mix, settings_json, master_path, bits))]
fn apply(py: Python<'_>, mix: PathBuf, settings_json: &str, master_path: PathBuf, bits: &str) -> PyResult<String> {
    let bits = bits.to_string();
    run_detached(py, move || {
        let depth = parse_bits(&bits)?;
        let settings = Settings::from_json(settings_json, "settings")?;
        check_outputs(&[(OutputKind::Master, master_path.clone())], &[&mix])?;
        let budget = JobOptions::default().memory_budget_bytes();
        refmaster::job::apply(&mix, &settings, &master_path, depth, budget, &|_| {})?;
        let profile = refmaster::source::profile_file(&master_path)?;
        let settings_value: serde_json::Value = serde_json::from_str(&settings.to_json())
            .map_err(|e| Error::Unsupported(format!("internal: settings JSON: {e}")))?;
        Ok(serde_json::json!({
            "settings": settings_value,
            "master_profile": profile,
        })
        .to_string())
    })
}

/// The profile of an audio file (or a saved profile JSON), as `refmaster analyze --json` prints
/// it.
#[pyfunction]
fn analyze(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    run_detached(py, move || {
        let profile = refmaster::job::load_reference(&path)?;
        serde_json::to_string(&profile).map_err(|e| Error::Unsupported(format!("internal: profile JSON: {e}")))
    })
}

/// Decodes an audio file: (interleaved little-endian f32 bytes, sample rate Hz, channels).
#[pyfunction]
fn read_audio(py: Python<'_>, path: PathBuf) -> PyResult<(Py<PyBytes>, u32, usize)> {
    let (bytes, rate, channels) = run_detached(py, move || {
        let (audio, _) = refmaster::decode::decode_file(&path)?;
        let channels = audio.channel_count();
        let frames = audio.channels.first().map_or(0, Vec::len);
        let mut bytes = Vec::with_capacity(frames * channels * 4);
        for i in 0..frames {
            for ch in &audio.channels {
                bytes.extend_from_slice(&ch[i].to_le_bytes());
            }
        }
        Ok((bytes, audio.sample_rate_hz, channels))
    })?;
    Ok((PyBytes::new(py, &bytes).unbind(), rate, channels))
}

/// Writes interleaved little-endian f32 frames as a WAV file (bits "16", "24" with TPDF dither
/// from `dither_seed`, or "32f"), atomically, refusing to overwrite any of `inputs`. With
/// `ceiling_dbtp`, the writer's ceiling guard holds the written samples' true peak under it, as
/// it does for a master the command line writes.
#[pyfunction]
#[pyo3(signature = (path, data, channels, sample_rate, bits, dither_seed, ceiling_dbtp=None, inputs=Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn write_audio(
    py: Python<'_>,
    path: PathBuf,
    data: &[u8],
    channels: usize,
    sample_rate: u32,
    bits: &str,
    dither_seed: u64,
    ceiling_dbtp: Option<f64>,
    inputs: Vec<PathBuf>,
) -> PyResult<()> {
    let data = data.to_vec();
    let bits = bits.to_string();
    run_detached(py, move || {
        let depth = parse_bits(&bits)?;
        let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        check_outputs(&[(OutputKind::Master, path.clone())], &inputs)?;
        if channels == 0 || data.len() % (4 * channels) != 0 {
            return Err(Error::output(
                &path,
                format!("{} bytes are not whole frames of {channels} channels", data.len()),
            ));
        }
        let frames = data.len() / (4 * channels);
        let mut planes = vec![Vec::with_capacity(frames); channels];
        for (i, s) in data.chunks_exact(4).enumerate() {
            planes[i % channels].push(f32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        }
        write_wav_stream(&path, sample_rate, channels, depth, |w| {
            w.set_dither_seed(dither_seed);
            if let Some(c) = ceiling_dbtp {
                w.set_ceiling(c);
            }
            let chunk: Vec<&[f32]> = planes.iter().map(Vec::as_slice).collect();
            w.write(&chunk)
        })
    })
}

/// Checks that `path` can take a WAV output (named .wav, its folder writable, none of `inputs`)
/// before any work is done, with the command line's error.
#[pyfunction]
#[pyo3(signature = (path, inputs=Vec::new()))]
fn check_output(py: Python<'_>, path: PathBuf, inputs: Vec<PathBuf>) -> PyResult<()> {
    run_detached(py, move || {
        let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        check_outputs(&[(OutputKind::Master, path)], &inputs)
    })
}

/// The native half of the `refmaster` package (see `refmaster/__init__.py`).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RefmasterError", py.get_type::<RefmasterError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("OptionError", py.get_type::<OptionError>())?;
    m.add("OutputError", py.get_type::<OutputError>())?;
    m.add_function(wrap_pyfunction!(master, m)?)?;
    m.add_function(wrap_pyfunction!(apply, m)?)?;
    m.add_function(wrap_pyfunction!(analyze, m)?)?;
    m.add_function(wrap_pyfunction!(read_audio, m)?)?;
    m.add_function(wrap_pyfunction!(check_output, m)?)?;
    m.add_function(wrap_pyfunction!(write_audio, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
