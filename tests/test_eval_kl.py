"""eval/kl.py (mean token KL to a reference), `eval --reference`, and the lm-eval bridge (eval/tasks.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tiny
import torch

from sparse_trt.core.errors import InputError, MissingDependencyError
from sparse_trt.core.manifest import Manifest
from sparse_trt.core.patterns import parse_pattern
from sparse_trt.data.text import TextSource
from sparse_trt.eval.kl import compare_to_reference
from sparse_trt.eval.perplexity import perplexity
from sparse_trt.eval.tasks import parse_scores, run_tasks
from sparse_trt.prune.api import PruneRequest, run_prune

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pruned(tiny_dirs, calib_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kl") / "pruned"
    run_prune(PruneRequest(model=str(tiny_dirs("llama")), out=out, method="magnitude", pattern=parse_pattern("2:4"),
                           calib=TextSource("text", str(calib_file)), nsamples=4, seqlen=32))
    return out


def _windows(n=3, seqlen=24):
    return torch.randint(3, 300, (n, seqlen), generator=torch.Generator().manual_seed(0))


def test_kl_to_itself_is_zero_and_nll_matches_perplexity():
    m = tiny.build("llama")
    w = _windows()
    c = compare_to_reference(m, m, w, CPU, batch_size=2)
    assert abs(c.kl) < 1e-6 and c.tokens == 3 * 23
    nll, count = perplexity(m, w, CPU)
    assert c.nll == pytest.approx(nll, rel=1e-5) and c.reference_nll == pytest.approx(nll, rel=1e-5) and count == c.tokens


def test_kl_is_positive_for_another_model_and_matches_a_direct_computation():
    a, b = tiny.build("llama", 0), tiny.build("llama", 1)
    w = _windows(2)
    c = compare_to_reference(a, b, w, CPU)
    with torch.no_grad():
        la = torch.log_softmax(a(input_ids=w).logits[:, :-1].double(), -1)
        lb = torch.log_softmax(b(input_ids=w).logits[:, :-1].double(), -1)
    direct = float((lb.exp() * (lb - la)).sum(-1).mean())
    assert c.kl > 0 and c.kl == pytest.approx(direct, rel=1e-4)


def test_other_vocabulary_is_refused():
    from transformers import AutoModelForCausalLM

    cfg = tiny.config("llama")
    cfg.vocab_size = 330
    other = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(InputError, match="vocabulary"):
        compare_to_reference(tiny.build("llama"), other, _windows(1), CPU)


def test_eval_reference_cli_records_kl(pruned, tiny_dirs, calib_jsonl):
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    r = CliRunner().invoke(app, ["eval", str(pruned), "--data", str(calib_jsonl), "--seqlen", "32", "--max-windows", "3",
                                 "--device", "cpu", "--reference", str(tiny_dirs("llama"))])
    assert r.exit_code == 0, r.output
    assert "KL(reference || model)" in r.output
    q = Manifest.load(pruned).quality
    assert q["kl"]["kl"] > 0 and q["kl"]["windows"] == 3 and q["kl"]["reference"] == str(tiny_dirs("llama"))
    assert q["kl"]["perplexity"] == pytest.approx(q["perplexity"]["perplexity"], rel=1e-5)


def test_parse_scores():
    res = {"t": {"alias": "t", "sample_len": 500, "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.75, "acc_norm_stderr,none": "N/A"}}
    scores = parse_scores(res)
    assert [(s.task, s.metric, s.value, s.stderr) for s in scores] == [("t", "acc", 0.5, 0.1), ("t", "acc_norm", 0.75, None)]


def test_tasks_without_lm_eval_name_the_extra(monkeypatch, tiny_dirs):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(MissingDependencyError) as e:
        run_tasks(str(tiny_dirs("llama")), ["x"], CPU)
    assert "sparse_trt[lm-eval]" in (e.value.fix or "")


def _local_task(folder: Path) -> Path:
    rows = [{"question": f"The {w} is", "choices": [f" the {w}", " of of of", " and and"], "answer": 0}
            for w in ("river", "city", "music", "king", "queen", "star")]
    (folder / "tiny_mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'tiny_mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    return folder


def test_eval_tasks_cli_runs_a_local_multiple_choice_task_offline(pruned, calib_jsonl, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed")
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    tasks = _local_task(tmp_path)
    r = CliRunner().invoke(app, ["eval", str(pruned), "--data", str(calib_jsonl), "--seqlen", "32", "--max-windows", "2",
                                 "--device", "cpu", "--tasks", "tiny_mc", "--tasks-path", str(tasks), "--tasks-batch-size", "4"])
    assert r.exit_code == 0, r.output
    assert "tiny_mc" in r.output and "acc" in r.output
    scores = Manifest.load(pruned).quality["tasks"]["scores"]
    acc = [s for s in scores if s["task"] == "tiny_mc" and s["metric"] == "acc"]
    assert len(acc) == 1 and 0.0 <= acc[0]["value"] <= 1.0
    assert acc[0]["value"] * 6 == pytest.approx(round(acc[0]["value"] * 6))  # a fraction of the 6 documents
