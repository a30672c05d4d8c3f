"""Type stubs of the native half of refmaster (a pyo3 extension). Use the package's functions
(refmaster.master, apply, analyze); these are its building blocks."""

from os import PathLike
from typing import Optional, Sequence, Tuple, Union

_Path = Union[str, PathLike[str]]

__version__: str

class RefmasterError(Exception):
    """Any error refmaster reports; the message is the command line's."""

class InputError(RefmasterError):
    """An input file cannot be read or its audio is unusable; the message names the file."""

class UnsupportedError(RefmasterError):
    """A request refmaster cannot honour (e.g. more than two channels to master)."""

class OptionError(RefmasterError):
    """An option or a settings field is unknown, out of range or not a number."""

class OutputError(RefmasterError):
    """An output cannot be written (nothing was left behind)."""

def master(mix: _Path, references: Sequence[_Path], options_json: str, output: _Path, preview: bool = False) -> str: ...
def apply(mix: _Path, settings_json: str, master_path: _Path, bits: str) -> str: ...
def analyze(path: _Path) -> str: ...
def read_audio(path: _Path) -> Tuple[bytes, int, int]: ...
def write_audio(
    path: _Path,
    data: bytes,
    channels: int,
    sample_rate: int,
    bits: str,
    dither_seed: int,
    ceiling_dbtp: Optional[float] = ...,
    inputs: Sequence[_Path] = ...,
) -> None: ...
def check_output(path: _Path, inputs: Sequence[_Path] = ...) -> None: ...
