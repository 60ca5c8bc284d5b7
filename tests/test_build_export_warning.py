"""`sparse-trt export trtllm --dtype float32` warns that Sparse Tensor Cores do not run FP32."""

from __future__ import annotations

from test_export_support import pruned_tiny
from typer.testing import CliRunner

from sparse_trt.cli.main import app


def test_fp32_export_warns(tmp_path):
    src = pruned_tiny("llama", tmp_path / "m")
    r = CliRunner().invoke(app, ["export", "trtllm", str(src), "-o", str(tmp_path / "c32"), "--dtype", "float32"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "Sparse Tensor Cores do not run FP32" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["export", "trtllm", str(src), "-o", str(tmp_path / "c16"), "--dtype", "float16"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "do not run FP32" not in r.output
