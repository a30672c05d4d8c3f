"""A drop-in for Matchering's library calls, mastered by refmaster.

Code written for Matchering runs unchanged with one changed import::

    import refmaster.matchering as mg
    mg.log(print)
    mg.process(
        target="my_song.wav",
        reference="some_popular_song.wav",
        results=[mg.pcm16("my_song_master_16bit.wav"), mg.pcm24("my_song_master_24bit.wav")],
    )

What is the same: the names and signatures of ``process``, ``Result``, ``pcm16``, ``pcm24``,
``Config``, ``LimiterConfig``, ``log`` and ``ModuleError`` (here the same class as
:class:`refmaster.RefmasterError`); every requested result is written; ``preview_target`` and
``preview_result`` receive excerpts of the song and of the master.

What differs from Matchering (on purpose):

- **Ceiling**: every result is under **-1 dBTP true peak** (refmaster's default ceiling,
  measured 4x oversampled as BS.1770 does), where Matchering's limiter holds *sample* peaks at
  about -0.02 dBFS, whose true peaks may go over 0 dBFS after conversion. A result with
  ``use_limiter=False`` is mastered without the limiter (turned up only as far as its true peak
  stays under the ceiling); ``normalize`` has nothing left to do and is ignored.
- **Sample rate and length**: results are written at the target's own sample rate (any rate
  from 8 to 192 kHz; Matchering resamples everything to 44.1 kHz), with no 15-minute cap.
- **Formats**: results are WAV files (``PCM_16`` and ``PCM_24`` with TPDF dither, ``FLOAT`` as
  32-bit float); another extension is refused before any work, naming the file. Inputs may be
  WAV, FLAC, MP3, Ogg, AAC/M4A, ALAC or AIFF.
- **Loudness**: the master is matched to the reference's loudness unless that would crush it:
  refmaster's loudness-war guard stops at a peak-to-loudness ratio of 7 dB and says so in a
  note (``log``'s warning handler). Pass ``refmaster.master(..., allow_crush=True)`` directly
  for Matchering's "as loud as the reference, whatever it takes".
- **Previews**: loudness-matched excerpts of the song and of the master at its loudest part
  (refmaster's ``--preview``), rather than Matchering's 30-second excerpts at their own levels.
- **Config**: accepted for compatibility; its fields tune Matchering's algorithm and are
  ignored here.
- **Errors**: raised as :class:`refmaster.RefmasterError` (``ModuleError`` is an alias) with a
  message naming the file and the problem; there are no numeric codes.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Union

import numpy as np

from . import RefmasterError, _bits_name, _master, _native

__all__ = ["process", "Result", "pcm16", "pcm24", "Config", "LimiterConfig", "log", "ModuleError"]

#: Matchering's exception name; here it is refmaster's.
ModuleError = RefmasterError

_SUBTYPES = {"PCM_16": "16", "PCM_24": "24", "FLOAT": "32f"}

_handlers: "dict[str, Optional[Callable[[str], Any]]]" = {"warning": None, "info": None, "debug": None}


class Result:
    """An output of :func:`process`: a WAV file and its sample format (``"PCM_16"``,
    ``"PCM_24"`` or ``"FLOAT"``). ``use_limiter=False`` masters without the limiter;
    ``normalize`` is accepted and ignored (every result is under the -1 dBTP ceiling)."""

    def __init__(self, file: Union[str, "os.PathLike[str]"], subtype: str, use_limiter: bool = True, normalize: bool = True) -> None:
        key = str(subtype).upper()
        if key not in _SUBTYPES:
            raise ModuleError(f"{os.fspath(file)}: subtype {subtype!r} is not one refmaster writes (PCM_16, PCM_24, FLOAT)")
        self.file = os.fspath(file)
        self.subtype = key
        self.use_limiter = use_limiter
        self.normalize = normalize

    def __repr__(self) -> str:
        return f"Result({self.file!r}, {self.subtype!r}, use_limiter={self.use_limiter}, normalize={self.normalize})"


def pcm16(file: Union[str, "os.PathLike[str]"]) -> Result:
    """A 16-bit PCM WAV result (TPDF dither)."""
    return Result(file, "PCM_16")


def pcm24(file: Union[str, "os.PathLike[str]"]) -> Result:
    """A 24-bit PCM WAV result (TPDF dither)."""
    return Result(file, "PCM_24")


class LimiterConfig:
    """Matchering's limiter settings; accepted and ignored (refmaster's limiter is solved)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class Config:
    """Matchering's configuration; every field is accepted and kept, none changes refmaster's
    master (refmaster solves its own chain, at the mix's own sample rate, of any length)."""

    def __init__(self, **kwargs: Any) -> None:
        self.limiter = LimiterConfig()
        self.__dict__.update(kwargs)


def log(
    handler: Optional[Callable[[str], Any]] = None,
    warning_handler: Optional[Callable[[str], Any]] = None,
    info_handler: Optional[Callable[[str], Any]] = None,
    debug_handler: Optional[Callable[[str], Any]] = None,
    show_codes: bool = False,
) -> None:
    """Where :func:`process` reports: ``handler`` for everything, or one handler per level.
    Info gets the report the command line prints; warning gets refmaster's warnings and notes."""
    if handler is not None:
        warning_handler = warning_handler or handler
        info_handler = info_handler or handler
        debug_handler = debug_handler or handler
    _handlers.update(warning=warning_handler, info=info_handler, debug=debug_handler)


def _say(level: str, text: str) -> None:
    h = _handlers.get(level)
    if h is not None:
        h(text)


def process(
    target: Union[str, "os.PathLike[str]"],
    reference: Union[str, "os.PathLike[str]"],
    results: List[Result],
    config: Optional[Config] = None,
    preview_target: Optional[Result] = None,
    preview_result: Optional[Result] = None,
) -> None:
    """Masters ``target`` (the song) to sound like ``reference`` and writes every result.

    Results are written at the target's own sample rate, under -1 dBTP true peak. Every output
    is checked before any work (named .wav, its folder writable, not an input), so a bad name
    fails at once, naming the file.

    Raises:
        ModuleError: the same class as refmaster.RefmasterError, with the file named.
    """
    if isinstance(results, Result):
        results = [results]
    target_path = os.fspath(target)
    reference_path = os.fspath(reference)
    outputs = [r for r in [*results, preview_target, preview_result] if r is not None]
    for r in outputs:
        if not isinstance(r, Result):
            raise ModuleError(f"expected a Result (e.g. pcm16('out.wav')), got {type(r).__name__}")
        _native.check_output(r.file, [target_path, reference_path])
    wants_preview = preview_target is not None or preview_result is not None
    modes = sorted({r.use_limiter for r in results}, reverse=True) or [True]
    for i, use_limiter in enumerate(modes):
        _say("info", f"mastering {target_path} toward {reference_path}" + ("" if use_limiter else " without the limiter"))
        options = {} if use_limiter else {"no_limiter": True}
        m, previews = _master(target_path, [reference_path], None, None, options, preview=wants_preview and i == 0)
        for line in m.report:
            _say("info", line)
        for w in m.warnings:
            _say("warning", f"warning: {w}")
        for n in m.notes:
            _say("warning", f"note: {n}")
        for r in results:
            if r.use_limiter == use_limiter:
                m.write(r.file, _SUBTYPES[r.subtype])
                _say("info", f"wrote {r.file}")
        if previews is not None:
            seed = int(m.settings["dither_seed"])
            ceiling = float(m.settings["limiter"]["ceiling_dbtp"])
            for res, audio in ((preview_target, previews[0]), (preview_result, previews[1])):
                if res is not None:
                    _write(res.file, audio, m.sample_rate, _SUBTYPES[res.subtype], seed, ceiling)
                    _say("info", f"wrote {res.file}")


def _write(path: str, audio: np.ndarray, sample_rate: int, bits: str, seed: int, ceiling: Optional[float]) -> None:
    data = np.ascontiguousarray(audio, dtype="<f4")
    _native.write_audio(path, data.tobytes(), data.shape[1], sample_rate, _bits_name(bits), seed, ceiling)
