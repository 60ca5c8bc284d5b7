"""What a newcomer reads: install hints keep their [extra], progress shows in logs, eval says what it compared."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from sparse_trt.cli import common
from sparse_trt.cli.main import app
from sparse_trt.core.errors import MissingDependencyError

runner = CliRunner()


def test_error_hint_keeps_extra_in_brackets(capsys):
    """Rich markup must not eat '[bench]' from the printed fix."""
    err = MissingDependencyError("matplotlib is missing", fix="pip install 'sparse_trt[bench]'")

    @common.handle_errors
    def fail_known():
        raise err

    with pytest.raises(typer.Exit) as e:
        fail_known()
    assert e.value.exit_code == MissingDependencyError.exit_code
    printed = capsys.readouterr().err
    assert "pip install 'sparse_trt[bench]'" in printed


def test_dependency_hint_names_extra_and_checkout():
    from sparse_trt.core import deps

    with pytest.raises(MissingDependencyError) as e:
        deps.require("matplotlib_missing_for_test")  # unknown: generic hint
    assert "pip install matplotlib_missing_for_test" in e.value.fix
    hint = deps._HINTS["matplotlib"][1]
    assert "pip install 'sparse_trt[bench]'" in hint and "pip install -e '.[bench]'" in hint


def test_plain_progress_lines_when_not_a_terminal(monkeypatch):
    lines: list[str] = []
    monkeypatch.setattr(common.console, "print", lambda text, **kw: lines.append(text))
    p = common.PlainProgress("layers", total=4, every_s=3600)
    p.update(0, completed=1)  # first update prints (nothing printed yet)
    p.update(0, completed=2)  # throttled
    p.update(0, description="layer 3/4", completed=3)  # description changed: prints
    p.update(0, completed=4)  # done: prints
    assert len(lines) == 3, lines
    assert "layers: 1/4, eta" in lines[0] and "layer 3/4: 3/4" in lines[1] and lines[2].endswith("layer 3/4: 4/4")


def test_flags_render_without_type_placeholder():
    res = runner.invoke(app, ["prune", "--help"], terminal_width=200)
    assert res.exit_code == 0
    resume = next(line for line in res.output.splitlines() if "--resume" in line)
    assert "<bool>" not in resume and "BOOLEAN" not in resume
    usage = next(line for line in res.output.splitlines() if "Usage:" in line)
    assert "MODEL" in usage and "{model}" not in usage, usage


def test_eval_shows_window_spec_dense_reference_and_record(tiny_dirs, calib_file, tmp_path):
    out = tmp_path / "p"
    args = ["prune", str(tiny_dirs("llama")), "-o", str(out), "--calib", str(calib_file), "--nsamples", "4",
            "--seqlen", "32", "--device", "cpu", "--method", "magnitude"]
    assert runner.invoke(app, args).exit_code == 0
    ev = ["eval", str(out), "--data", str(calib_file), "--seqlen", "32", "--max-windows", "4", "--device", "cpu"]
    dense = runner.invoke(app, ["eval", str(tiny_dirs("llama")), *ev[2:], "--no-record", "--json", str(tmp_path / "d.json")])
    assert dense.exit_code == 0, dense.output
    # record the dense figure as the demo does, then evaluate the pruned folder on the same windows
    m = json.loads((out / "sparsity.json").read_text())
    m.setdefault("quality", {})["dense_perplexity"] = json.loads((tmp_path / "d.json").read_text())
    (out / "sparsity.json").write_text(json.dumps(m))
    res = runner.invoke(app, ev)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # Rich wraps long lines at the console width
    assert "4 windows x 32 tokens" in text
    assert "dense reference" in text and "of the dense reference on the same windows" in text
    assert f"recorded in {out / 'sparsity.json'}" in text
    # other windows: the figures are said not to compare
    res = runner.invoke(app, [*ev[:-4], "--max-windows", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "do not compare" in " ".join(res.output.split())


def test_help_does_not_import_torch():
    code = "import sys; from sparse_trt.cli.main import app; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_method_list_in_help_matches_the_registry():
    import re

    from sparse_trt.cli.prune import METHODS_HELP
    from sparse_trt.prune.methods import method_names

    listed = set(re.findall(r"(?:^|, )([a-z][a-z0-9-]*)", re.sub(r"\([^)]*\)", "", METHODS_HELP)))
    assert listed == set(method_names()), (listed, method_names())
    assert re.search(r"\bsparsegpt \(default\)", METHODS_HELP)
