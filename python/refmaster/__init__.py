"""refmaster: automatic reference-matching mastering, from Python.

Give it a finished mix and a reference track you like; it measures both, solves the mastering
chain that makes the mix sit like the reference (tonal balance, density, stereo image,
loudness), renders the master at the mix's own sample rate, never over the true-peak ceiling,
and returns the settings it used::

    import refmaster
    m = refmaster.master("mix.flac", "reference.ogg", "master.wav", lufs=-14)
    m.audio          # float32 NumPy array, frames x channels
    m.settings       # the dict `refmaster --settings` writes
    m.notes          # what the engine wants you to know

This package calls refmaster's Rust library (the same mastering job the command line runs), so
``master(path, path, output=...)`` writes the same file, bit for bit, as
``refmaster MIX --ref REF -o OUT`` with the same options. Long work releases the GIL: threads
master files side by side.

Options are the command line's long options with ``_`` for ``-`` (``lufs``, ``ceiling``,
``amount``, ``platform``, ``target``, ``bits``, ``no_dynamics``, ``max_eq_db``, ...); an unknown
name is refused with a "did you mean".

``refmaster.matchering`` is a drop-in for code written for Matchering.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _native
from ._native import (
    InputError,
    OptionError,
    OutputError,
    RefmasterError,
    UnsupportedError,
)

__version__: str = _native.__version__

__all__ = [
    "Master",
    "master",
    "apply",
    "analyze",
    "RefmasterError",
    "InputError",
    "UnsupportedError",
    "OptionError",
    "OutputError",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]
#: A path to an audio file, or a NumPy array of samples (frames x channels, or one channel as a
#: 1-D array), float32 or float64, full scale 1.0.
AudioInput = Union[str, "os.PathLike[str]", np.ndarray]

_BITS = {"16": "16", "24": "24", "32f": "32f", "32": "32f", "float": "32f"}


def _bits_name(bits: Union[int, str]) -> str:
    name = _BITS.get(str(bits).lower())
    if name is None:
        raise OptionError(f"--bits: {bits!r} is not a bit depth (16, 24 or 32f)")
    return name


class _Workspace:
    """A private temporary folder for one call: arrays written as 32-bit float WAV, the 32-bit
    float master. Array inputs are named in errors as what they are, not by their temporary
    file."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="refmaster-")
        self._names: Dict[str, str] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def audio_path(self, audio: AudioInput, sample_rate: Optional[int], name: str, what: str) -> str:
        """The path of `audio`: itself, or where the array was written (as 32-bit float WAV, so
        the engine reads exactly the array's samples, rounded to float32)."""
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise OptionError(f"{what}: a NumPy array needs sample_rate= (Hz)")
            data = _frames(audio, what)
            path = self.path(name + ".wav")
            _native.write_audio(path, data.tobytes(), data.shape[1], int(sample_rate), "32f", 0)
            self._names[path] = what
            return path
        if isinstance(audio, (str, os.PathLike)):
            return os.fspath(audio)
        raise OptionError(f"{what}: expected a path or a NumPy array, got {type(audio).__name__}")

    def name_profile(self, profile: Dict[str, Any]) -> Dict[str, Any]:
        """`profile` with its source named as the array it was measured from."""
        if profile.get("source") in self._names:
            profile["source"] = self._names[profile["source"]]
        return profile

    def rename_in(self, err: RefmasterError) -> RefmasterError:
        """`err` with temporary files named as the arrays they hold."""
        msg = str(err)
        for path, what in self._names.items():
            msg = msg.replace(path, what)
        if msg == str(err):
            return err
        return type(err)(msg)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "_Workspace":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _frames(audio: np.ndarray, what: str) -> np.ndarray:
    """`audio` as C-contiguous little-endian float32, frames x channels."""
    a = np.asarray(audio)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise InputError(f"{what}: expected frames x channels, got an array of shape {a.shape}")
    if a.dtype not in (np.float32, np.float64):
        raise InputError(f"{what}: expected float32 or float64 samples (full scale 1.0), got {a.dtype}")
    if a.shape[1] > a.shape[0] and a.shape[0] <= 8:
        raise InputError(
            f"{what}: shape {a.shape} looks like channels x frames; pass frames x channels (e.g. audio.T)"
        )
    return np.ascontiguousarray(a, dtype="<f4")


def _read(path: str) -> "tuple[np.ndarray, int]":
    data, rate, channels = _native.read_audio(path)
    return np.frombuffer(data, dtype="<f4").reshape(-1, channels).astype(np.float32), rate


class Master:
    """A master: its audio, the settings that made it and what was measured.

    Attributes:
        audio: the master, float32 NumPy array, frames x channels (full scale 1.0): the
            samples of the file written (``output``, at its bit depth), or of a 32-bit float
            render when no file was asked for.
        sample_rate: Hz (the mix's own).
        settings: the settings dict (what ``refmaster --settings`` writes; ``apply`` re-renders
            it bit for bit).
        notes: what the engine wants you to know (unreachable targets, bounded EQ, mix notes...).
        warnings: warnings about the mix, the reference and the master (empty for ``apply``).
        mix_profile: the mix's profile (``analyze``'s dict); None for ``apply``.
        master_profile: the master's profile.
        target_profile: the profile it was mastered toward; None for ``apply``.
        report: the lines the command line prints.
        output: the file written, if any.
    """

    def __init__(
        self,
        audio: np.ndarray,
        sample_rate: int,
        settings: Dict[str, Any],
        notes: List[str],
        warnings: List[str],
        mix_profile: Optional[Dict[str, Any]],
        master_profile: Dict[str, Any],
        target_profile: Optional[Dict[str, Any]],
        report: List[str],
        bits: str,
        output: Optional[str] = None,
    ) -> None:
        self.audio = audio
        self.sample_rate = sample_rate
        self.settings = settings
        self.notes = notes
        self.warnings = warnings
        self.mix_profile = mix_profile
        self.master_profile = master_profile
        self.target_profile = target_profile
        self.report = report
        self.bits = bits
        self.output = output

    def write(self, path: PathLike, bits: Union[int, str] = 24) -> None:
        """Writes :attr:`audio` as a WAV file: ``bits`` 16 or 24 (TPDF dither seeded by the
        settings) or ``"32f"``, through the same writer as the command line's, whose ceiling
        guard keeps the written samples' true peak under the limiter's ceiling. For the command
        line's own file, pass ``output=`` (and ``bits=``) to :func:`master`: its audio is
        quantised once, from the render. Written atomically: on failure nothing is left at
        ``path``."""
        limiter = self.settings.get("limiter", {})
        ceiling = float(limiter["ceiling_dbtp"]) if limiter.get("enabled") else None
        _native.write_audio(
            os.fspath(path),
            np.ascontiguousarray(self.audio, dtype="<f4").tobytes(),
            self.audio.shape[1],
            self.sample_rate,
            _bits_name(bits),
            int(self.settings["dither_seed"]),
            ceiling,
        )

    def __repr__(self) -> str:
        lufs = self.master_profile.get("loudness", {}).get("integrated_lufs")
        return (
            f"<refmaster.Master {self.audio.shape[0]} frames x {self.audio.shape[1]} ch at "
            f"{self.sample_rate} Hz, {lufs} LUFS>"
        )


def master(
    mix: AudioInput,
    reference: Union[AudioInput, Sequence[AudioInput], None] = None,
    output: Optional[PathLike] = None,
    *,
    sample_rate: Optional[int] = None,
    **options: Any,
) -> Master:
    """Masters ``mix`` toward ``reference`` and returns the :class:`Master`.

    Args:
        mix: a path to an audio file (WAV, FLAC, MP3, Ogg, AAC/M4A, ALAC, AIFF), or a NumPy
            array (frames x channels, float32 or float64) with ``sample_rate``.
        reference: a path, an array, a saved profile ``.json``, or a list of them (their
            profiles are averaged). None: a learned target (``target=NAME`` chooses one).
        output: where to write the master WAV (``bits`` of the options, default 24), the
            command line's file bit for bit; None writes nothing (the master is rendered as
            32-bit float; use :meth:`Master.write`).
        sample_rate: the arrays' sample rate, Hz.
        **options: the command line's long options with ``_`` (``lufs=-14``, ``ceiling=-1``,
            ``platform="spotify"``, ``no_dynamics=True``, ``bits=16``, ...).

    Raises:
        RefmasterError: with the command line's message naming the file or option
            (``InputError`` for unreadable audio, ``UnsupportedError``, ``OptionError``,
            ``OutputError``).
    """
    refs: List[AudioInput]
    if reference is None:
        refs = []
    elif isinstance(reference, (str, os.PathLike, np.ndarray)):
        refs = [reference]
    else:
        refs = list(reference)
    return _master(mix, refs, output, sample_rate, options, preview=False)[0]


def _master(
    mix: AudioInput,
    refs: List[AudioInput],
    output: Optional[PathLike],
    sample_rate: Optional[int],
    options: Dict[str, Any],
    preview: bool,
) -> "tuple[Master, Optional[List[np.ndarray]]]":
    with _Workspace() as ws:
        try:
            mix_path = ws.audio_path(mix, sample_rate, "mix", "mix (array)")
            ref_paths = [
                ws.audio_path(r, sample_rate, f"reference{i}", f"reference {i + 1} (array)")
                for i, r in enumerate(refs)
            ]
            bits = _bits_name(options.get("bits", 24))
            if output is None:
                # rendered as 32-bit float into the workspace; `bits` stays the default of write()
                out = ws.path("master.wav")
                job_options = {**options, "bits": "32f"}
            else:
                out = os.fspath(output)
                job_options = options
            raw = json.loads(_native.master(mix_path, ref_paths, json.dumps(job_options), out, preview))
            audio, rate = _read(out)
            previews = [_read(p)[0] for p in raw["previews"]] if raw["previews"] else None
            ws.name_profile(raw["mix_profile"])
        except RefmasterError as e:
            raise ws.rename_in(e) from None
    m = Master(
        audio=audio,
        sample_rate=rate,
        settings=raw["settings"],
        notes=raw["notes"],
        warnings=raw["warnings"],
        mix_profile=raw["mix_profile"],
        master_profile=raw["master_profile"],
        target_profile=raw["target_profile"],
        report=[line for line in raw["report"] if not line.startswith("wrote ")],
        bits=bits,
        output=None if output is None else out,
    )
    return m, previews


def apply(
    mix: AudioInput,
    settings: Union[Dict[str, Any], PathLike],
    output: Optional[PathLike] = None,
    *,
    sample_rate: Optional[int] = None,
    bits: Union[int, str] = 24,
) -> Master:
    """Renders ``mix`` with saved settings (a dict, or the path of a settings JSON written by
    ``refmaster --settings``), as ``refmaster apply`` does: the same settings on the same mix
    give the same master bit for bit. ``output`` (a WAV, ``bits`` 16, 24 or "32f") is written
    if given."""
    if isinstance(settings, dict):
        text = json.dumps(settings)
    else:
        try:
            with open(os.fspath(settings), encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise InputError(f"{os.fspath(settings)}: cannot read: {e.strerror}") from None
    with _Workspace() as ws:
        try:
            mix_path = ws.audio_path(mix, sample_rate, "mix", "mix (array)")
            depth = _bits_name(bits)
            out = ws.path("master.wav") if output is None else os.fspath(output)
            raw = json.loads(_native.apply(mix_path, text, out, "32f" if output is None else depth))
            audio, rate = _read(out)
        except RefmasterError as e:
            raise ws.rename_in(e) from None
    return Master(
        audio=audio,
        sample_rate=rate,
        settings=raw["settings"],
        notes=[],
        warnings=[],
        mix_profile=None,
        master_profile=raw["master_profile"],
        target_profile=None,
        report=[],
        bits=depth,
        output=None if output is None else out,
    )


def analyze(audio: AudioInput, sample_rate: Optional[int] = None) -> Dict[str, Any]:
    """The profile of a file or array: loudness (BS.1770 / EBU R128, true peak), long-term mid
    and side spectra, dynamics and width per band; the dict ``refmaster analyze --json``
    prints."""
    with _Workspace() as ws:
        try:
            path = ws.audio_path(audio, sample_rate, "audio", "audio (array)")
            return ws.name_profile(json.loads(_native.analyze(path)))
        except RefmasterError as e:
            raise ws.rename_in(e) from None
