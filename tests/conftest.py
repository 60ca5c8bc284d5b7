from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family -> folder holding a saved tiny model + tokenizer (built once per session)."""
    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = tiny.save(family, root / family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(tiny.corpus_text(20000, 0), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def calib_jsonl(tmp_path_factory) -> Path:
    import json

    p = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    text = tiny.corpus_text(20000, 3).split("\n")
    p.write_text("\n".join(json.dumps({"text": t}) for t in text) + "\n", encoding="utf-8")
    return p


@pytest.fixture
def interrupt_second_layer(monkeypatch):
    """Install a KeyboardInterrupt in the walker's second ``prune_layer`` call; returns an undo function."""
    from sparse_trt.prune import sequential

    real = sequential.prune_layer
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    def install():
        calls["n"] = 0
        monkeypatch.setattr(sequential, "prune_layer", interrupted)
        return lambda: monkeypatch.setattr(sequential, "prune_layer", real)

    return install
