"""refmaster's Python package: the same masters as the command line, from paths or arrays, with
errors Python can catch and the GIL released while it works."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import refmaster
from conftest import DEMO_MIX, DEMO_REF, cli, ffmpeg_true_peak_dbtp, wav_format


def test_the_package_imports_and_says_its_version() -> None:
    assert isinstance(refmaster.__version__, str) and refmaster.__version__
    assert issubclass(refmaster.InputError, refmaster.RefmasterError)
    assert issubclass(refmaster.UnsupportedError, refmaster.RefmasterError)
    assert issubclass(refmaster.RefmasterError, Exception)


@pytest.mark.parametrize("options,cli_args", [({}, []), ({"bits": 16, "no_dynamics": True, "lufs": -14}, ["--bits", "16", "--no-dynamics", "--lufs", "-14"])])
def test_master_of_paths_is_bit_identical_to_the_command_lines(tmp_path: Path, options: dict, cli_args: list) -> None:
    ours = tmp_path / "python.wav"
    theirs = tmp_path / "cli.wav"
    settings = tmp_path / "cli.json"
    m = refmaster.master(DEMO_MIX, DEMO_REF, ours, **options)
    subprocess.run(
        [str(cli()), str(DEMO_MIX), "--ref", str(DEMO_REF), "-o", str(theirs), "--settings", str(settings), "--quiet", *cli_args],
        check=True,
    )
    assert ours.read_bytes() == theirs.read_bytes(), "the Python master differs from the command line's"
    assert m.settings == json.loads(settings.read_text())
    assert m.output == str(ours)


def test_master_write_keeps_the_ceiling_at_every_depth(tmp_path: Path) -> None:
    m = refmaster.master(DEMO_MIX, DEMO_REF)
    assert m.output is None and m.bits == "24"
    for bits in (16, 24, "32f"):
        path = tmp_path / f"m{bits}.wav"
        m.write(path, bits=bits)
        assert wav_format(path)[2] == {16: 16, 24: 24, "32f": 32}[bits]
        # ffmpeg prints one decimal: -1.0 means at most -0.95 dBTP
        assert ffmpeg_true_peak_dbtp(path) <= -1.0, path


def test_array_form_gives_the_same_samples_as_the_path_form(signals: dict) -> None:
    (mix_path, mix), (ref_path, ref) = signals["mix"], signals["ref"]
    from_paths = refmaster.master(mix_path, ref_path)
    from_arrays = refmaster.master(mix, ref, sample_rate=48000)
    from_f64 = refmaster.master(mix.astype(np.float64), ref_path, sample_rate=48000)
    assert from_paths.audio.dtype == np.float32
    assert from_paths.audio.shape == mix.shape
    assert np.array_equal(from_paths.audio, from_arrays.audio)
    assert np.array_equal(from_paths.audio, from_f64.audio)
    assert from_paths.settings == from_arrays.settings


def test_master_at_48_khz_keeps_the_mixs_rate(signals: dict, tmp_path: Path) -> None:
    (mix_path, _), (ref_path, _) = signals["mix"], signals["ref"]
    out = tmp_path / "m.wav"
    m = refmaster.master(mix_path, ref_path, out)
    assert m.sample_rate == 48000
    assert wav_format(out) == (48000, 2, 24)


def test_a_mono_mix_is_mastered_to_mono(signals: dict) -> None:
    (_, mono), (ref_path, _) = signals["mono"], signals["ref"]
    m = refmaster.master(mono[:, 0], ref_path, sample_rate=48000)
    assert m.audio.shape == (mono.shape[0], 1)
    # the master moved toward the reference's loudness, under the -1 dBTP ceiling
    assert m.master_profile["loudness"]["true_peak_dbtp"] <= -1.0 + 1e-6


def test_a_list_of_references_masters_toward_their_average(signals: dict) -> None:
    (mix_path, _), (ref_path, _), (ref2_path, _) = signals["mix"], signals["ref"], signals["ref2"]
    both = refmaster.master(mix_path, [ref_path, ref2_path])
    a = refmaster.analyze(ref_path)["loudness"]["integrated_lufs"]
    b = refmaster.analyze(ref2_path)["loudness"]["integrated_lufs"]
    target = both.target_profile["loudness"]["integrated_lufs"]
    assert min(a, b) - 1e-9 <= target <= max(a, b) + 1e-9


def test_analyze_gives_what_the_command_lines_analyze_json_prints(signals: dict) -> None:
    (path, audio) = signals["mix"]
    cli_json = subprocess.run([str(cli()), "analyze", "--json", "--quiet", str(path)], check=True, capture_output=True, text=True).stdout
    assert refmaster.analyze(path) == json.loads(cli_json)
    from_array = refmaster.analyze(audio, sample_rate=48000)
    assert from_array.pop("source") == "audio (array)"
    expected = json.loads(cli_json)
    expected.pop("source")
    assert from_array == expected


def test_apply_renders_saved_settings_to_the_same_master(signals: dict, tmp_path: Path) -> None:
    (mix_path, mix), (ref_path, _) = signals["mix"], signals["ref"]
    m = refmaster.master(mix_path, ref_path, tmp_path / "m.wav")
    again = refmaster.apply(mix, m.settings, tmp_path / "a.wav", sample_rate=48000)
    assert np.array_equal(m.audio, again.audio)
    assert (tmp_path / "m.wav").read_bytes() == (tmp_path / "a.wav").read_bytes()
    settings16 = tmp_path / "s16.json"
    settings16.write_text(json.dumps(m.settings))
    refmaster.apply(mix_path, m.settings, tmp_path / "p16.wav", bits=16)
    subprocess.run(
        [str(cli()), "apply", str(mix_path), "--settings", str(settings16), "-o", str(tmp_path / "c16.wav"), "--bits", "16", "--quiet"],
        check=True,
    )
    assert (tmp_path / "p16.wav").read_bytes() == (tmp_path / "c16.wav").read_bytes()
    settings_file = tmp_path / "s.json"
    settings_file.write_text(json.dumps(m.settings))
    rendered = refmaster.master(mix_path, ref_path)  # no file: 32-bit float, as apply without one
    assert np.array_equal(refmaster.apply(mix_path, settings_file).audio, rendered.audio)


def test_a_garbage_file_raises_refmaster_error_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" * 10)
    with pytest.raises(refmaster.InputError) as e:
        refmaster.master(garbage, DEMO_REF, tmp_path / "out.wav")
    assert str(garbage) in str(e.value)
    assert not (tmp_path / "out.wav").exists()
    with pytest.raises(refmaster.RefmasterError, match="garbage.wav"):
        refmaster.analyze(garbage)


def test_a_missing_reference_is_named(tmp_path: Path) -> None:
    with pytest.raises(refmaster.InputError, match="no_such_ref.ogg"):
        refmaster.master(DEMO_MIX, tmp_path / "no_such_ref.ogg")


def test_an_unknown_option_is_refused_with_a_did_you_mean() -> None:
    with pytest.raises(refmaster.OptionError, match="did you mean `max_eq_db`"):
        refmaster.master(DEMO_MIX, DEMO_REF, max_eq_dB=6)
    with pytest.raises(refmaster.OptionError, match="--lufs"):
        refmaster.master(DEMO_MIX, DEMO_REF, lufs=5)


def test_array_errors_name_the_array_not_a_temporary_file(signals: dict) -> None:
    (_, mix) = signals["mix"]
    with pytest.raises(refmaster.OptionError, match="sample_rate"):
        refmaster.master(mix, DEMO_REF)
    three = np.zeros((48000, 3), dtype=np.float32)
    three[:, 0] = mix[:48000, 0]
    with pytest.raises(refmaster.RefmasterError) as e:
        refmaster.master(three, DEMO_REF, sample_rate=48000)
    assert "mix (array)" in str(e.value) and "refmaster-" not in str(e.value)
    nan = mix.copy()
    nan[100, 0] = np.nan
    with pytest.raises(refmaster.InputError, match="mix \\(array\\)"):
        refmaster.master(nan, DEMO_REF, sample_rate=48000)


def test_an_output_that_is_not_wav_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(refmaster.OutputError, match="WAV only"):
        refmaster.master(DEMO_MIX, DEMO_REF, tmp_path / "out.mp3")


def test_two_threads_master_two_songs_as_one_after_the_other_does(signals: dict) -> None:
    (mix_path, _), (mono_path, _), (ref_path, _) = signals["mix"], signals["mono"], signals["ref"]
    sequential = [refmaster.master(mix_path, ref_path).audio, refmaster.master(mono_path, ref_path).audio]
    results: list = [None, None]
    errors: list = []

    def work(i: int, path: Path) -> None:
        try:
            results[i] = refmaster.master(path, ref_path).audio
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, p)) for i, p in enumerate((mix_path, mono_path))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(np.array_equal(a, b) for a, b in zip(results, sequential))


def test_python_code_runs_while_a_master_is_worked_out(signals: dict) -> None:
    """With the GIL held for the whole job, the main thread would not run one line until the
    master returned; released, it loops all the while."""
    (mix_path, _), (ref_path, _) = signals["mix"], signals["ref"]
    t = threading.Thread(target=refmaster.master, args=(mix_path, ref_path))
    spins = 0
    t.start()
    while t.is_alive():
        spins += 1
    t.join()
    assert spins > 1000, f"the main thread ran {spins} loop iterations during the master"
