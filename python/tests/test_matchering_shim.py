"""`refmaster.matchering` runs code written for Matchering unchanged and writes every result
under the -1 dBTP ceiling, at the mix's own sample rate."""

from __future__ import annotations

from pathlib import Path

import pytest

import refmaster
import refmaster.matchering as mg
from conftest import DEMO_MIX, DEMO_REF, ffmpeg_true_peak_dbtp, wav_format


def test_matchering_code_writes_pcm16_and_pcm24_under_the_ceiling(tmp_path: Path) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    lines: list = []
    mg.log(lines.append)
    mg.process(target=str(DEMO_MIX), reference=str(DEMO_REF), results=[mg.pcm16(str(a)), mg.pcm24(str(b))])
    mg.log()
    for path, bits in ((a, 16), (b, 24)):
        assert wav_format(path) == (44100, 2, bits), path
        # ffmpeg prints one decimal: -1.0 means at most -0.95 dBTP
        assert ffmpeg_true_peak_dbtp(path) <= -1.0, path
    assert any(line.startswith("wrote ") for line in lines)


def test_the_shim_writes_at_the_mixs_own_rate_with_previews(signals: dict, tmp_path: Path) -> None:
    (mix_path, _), (ref_path, _) = signals["mix"], signals["ref"]
    out, pt, pr = tmp_path / "out.wav", tmp_path / "pt.wav", tmp_path / "pr.wav"
    mg.process(
        str(mix_path),
        str(ref_path),
        [mg.Result(str(out), "FLOAT"), mg.Result(str(tmp_path / "nolim.wav"), "PCM_24", use_limiter=False)],
        config=mg.Config(internal_sample_rate=44100, max_length=15 * 60),
        preview_target=mg.pcm16(str(pt)),
        preview_result=mg.pcm16(str(pr)),
    )
    for path, bits in ((out, 32), (tmp_path / "nolim.wav", 24), (pt, 16), (pr, 16)):
        assert wav_format(path) == (48000, 2, bits), path
    assert ffmpeg_true_peak_dbtp(tmp_path / "nolim.wav") <= -1.0


def test_the_shim_refuses_a_bad_output_before_any_work_naming_it(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    with pytest.raises(mg.ModuleError, match="out.flac"):
        mg.process(str(DEMO_MIX), str(DEMO_REF), [mg.pcm24(str(good)), mg.pcm16(str(tmp_path / "out.flac"))])
    assert not good.exists()
    assert mg.ModuleError is refmaster.RefmasterError
