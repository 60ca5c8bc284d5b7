"""Training text for recovery: never the held-out text.

Training windows come from the calibration side of a source (for ``wiki``: the 90% calibration
pool, split by article from the 10% held-out part) or from the user's file. Where overlap with the
evaluation text can be detected it is refused: the same file for both, or any paragraph (a line of
at least ``MIN_PARAGRAPH`` characters, whitespace-normalised) that occurs in both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sparse_trt.core.errors import CalibrationError
from sparse_trt.data.text import TextSource, documents

MIN_PARAGRAPH = 64


def _paragraph_hashes(docs: list[str]) -> set[bytes]:
    out: set[bytes] = set()
    for d in docs:
        for line in d.splitlines():
            p = " ".join(line.split())
            if len(p) >= MIN_PARAGRAPH:
                out.add(hashlib.blake2b(p.encode("utf-8"), digest_size=16).digest())
    return out


def check_no_heldout_overlap(train: TextSource, heldout: TextSource) -> None:
    """Raise CalibrationError when the training text contains held-out text."""
    if train.kind != "wiki" and heldout.kind != "wiki" and Path(train.path or "").resolve() == Path(heldout.path or "").resolve():
        raise CalibrationError(
            f"the training text '{train.name}' is also the held-out evaluation text",
            fix="train on other text (--data), or evaluate on other text (--eval-data)",
        )
    shared = _paragraph_hashes(documents(train, "calib")) & _paragraph_hashes(documents(heldout, "test"))
    if shared:
        raise CalibrationError(
            f"{len(shared)} paragraph(s) of the training text '{train.name}' also occur in the held-out text "
            f"'{heldout.name}': training on them would make the held-out numbers meaningless",
            fix="remove those paragraphs from the training text, or evaluate on other text (--eval-data)",
        )
