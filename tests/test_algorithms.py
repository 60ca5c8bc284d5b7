"""The pure tensor algorithms: masks, magnitude, Wanda, SparseGPT."""

import torch

from sparse_trt.core.patterns import NM, Unstructured, nm_violations
from sparse_trt.prune.magnitude import magnitude_prune
from sparse_trt.prune.masks import nm_keep_mask, row_keep_mask
from sparse_trt.prune.sparsegpt import sparsegpt_prune
from sparse_trt.prune.stats import StatsAccumulator, relative_error
from sparse_trt.prune.wanda import wanda_prune


def _data(rows=48, cols=64, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    # channel norms vary over two orders of magnitude, as real activations do
    scale = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=g)]
    x = torch.randn(tokens, cols, generator=g) * scale
    acc = StatsAccumulator(cols, norms=True, hessian=True, sample_rows=0, device=torch.device("cpu"))
    acc.add(x[:200], tokens)
    acc.add(x[200:], tokens)
    return w, x, acc.finish()


def test_nm_mask_exact_and_keeps_largest():
    s = torch.tensor([[0.1, 0.4, 0.3, 0.2, 5.0, 1.0, 2.0, 3.0]])
    keep = nm_keep_mask(s, 2, 4)
    assert keep.tolist() == [[False, True, True, False, True, False, False, True]]


def test_masks_deterministic_on_ties():
    s = torch.ones(3, 8)
    k1, k2 = nm_keep_mask(s, 2, 4), nm_keep_mask(s.clone(), 2, 4)
    assert torch.equal(k1, k2)
    # lower index pruned first on ties
    assert k1[0].tolist() == [False, False, True, True] * 2
    r = row_keep_mask(torch.ones(2, 10), 0.3)
    assert r[0].tolist() == [False] * 3 + [True] * 7


def test_masks_in_row_blocks_equal_whole(monkeypatch):
    import sparse_trt.prune.masks as masks

    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 4, (37, 24), generator=g).float()  # many ties
    whole = (masks.nm_keep_mask(scores, 2, 4), masks.row_keep_mask(scores, 0.5))
    monkeypatch.setattr(masks, "_BLOCK_ELEMENTS", 50)  # two rows per block
    blocked = (masks.nm_keep_mask(scores, 2, 4), masks.row_keep_mask(scores, 0.5))
    assert all(torch.equal(a, b) for a, b in zip(whole, blocked, strict=True))


def test_row_mask_per_row_count():
    s = torch.randn(5, 33)
    keep = row_keep_mask(s, 0.5)
    assert ((~keep).sum(dim=1) == 16).all()


def test_stats_accumulate_like_batch():
    w, x, st = _data()
    assert st.count == 512
    torch.testing.assert_close(st.hessian(), 2 * x.t() @ x / 512, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(st.col_norm_sq(), (x * x).mean(0), rtol=1e-5, atol=1e-6)


def test_hessian_upper_block_accumulation_is_exact_and_symmetric():
    # wide enough (>= 256 inputs) that the CPU accumulator fills only the upper block triangle
    g = torch.Generator().manual_seed(3)
    x = torch.randn(700, 300, generator=g) * torch.logspace(-1, 1, 300)
    acc = StatsAccumulator(300, norms=False, hessian=True, sample_rows=0, device=torch.device("cpu"))
    assert acc._parts > 1
    acc.add(x[:333], 700)
    acc.add(x[333:], 700)
    st = acc.finish()
    assert torch.equal(st.xtx, st.xtx.t())  # mirrored, so exactly symmetric
    torch.testing.assert_close(st.xtx, (x.double().t() @ x.double()).float(), rtol=1e-4, atol=1e-2)


def test_all_methods_exact_nm_and_masked_zero():
    w, x, st = _data()
    for res in (magnitude_prune(w, NM(2, 4)), wanda_prune(w, st.col_norm_sq(), NM(2, 4)), sparsegpt_prune(w, st.hessian(), NM(2, 4))):
        assert nm_violations(res.weight, NM(2, 4)) == 0
        assert (res.weight[~res.keep] == 0).all()
        assert ((~res.keep).reshape(48, 16, 4).sum(-1) == 2).all()


def test_4of8_and_unstructured():
    w, x, st = _data()
    r = sparsegpt_prune(w, st.hessian(), NM(4, 8))
    assert nm_violations(r.weight, NM(4, 8)) == 0
    r = sparsegpt_prune(w, st.hessian(), Unstructured(0.5))
    assert ((r.weight == 0).sum(dim=1) >= 32).all()
    r = wanda_prune(w, st.col_norm_sq(), Unstructured(0.5))
    assert ((r.weight == 0).sum(dim=1) == 32).all()


def test_quality_order_sparsegpt_lt_wanda_lt_magnitude():
    w, x, st = _data()
    errs = {
        "magnitude": relative_error(w, magnitude_prune(w, NM(2, 4)).weight, st),
        "wanda": relative_error(w, wanda_prune(w, st.col_norm_sq(), NM(2, 4)).weight, st),
        "sparsegpt": relative_error(w, sparsegpt_prune(w, st.hessian(), NM(2, 4)).weight, st),
    }
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs


def test_relative_error_matches_direct_computation():
    w, x, st = _data()
    w2 = magnitude_prune(w, NM(2, 4)).weight
    direct = ((x @ (w - w2).t()) ** 2).sum() / ((x @ w.t()) ** 2).sum()
    assert abs(relative_error(w, w2, st) - float(direct)) < 1e-3


def test_sparsegpt_dead_inputs_and_damp_retry():
    w, x, st = _data()
    h = st.hessian().clone()
    h[:, 5] = 0
    h[5, :] = 0  # a dead input channel
    r = sparsegpt_prune(w, h, NM(2, 4))
    assert (r.weight[:, 5] == 0).all() and nm_violations(r.weight, NM(2, 4)) == 0
    # an indefinite Hessian needs more dampening: the retry is reported, not hidden
    good = st.hessian()
    mean_diag = float(torch.diag(good).mean())
    assert float(torch.linalg.eigvalsh(good)[0]) < 0.04 * mean_diag
    bad = good - 0.05 * mean_diag * torch.eye(64)  # indefinite: 1% dampening cannot repair it, 10% can
    r = sparsegpt_prune(w, bad, NM(2, 4), percdamp=0.01, max_retries=4)
    assert r.info["damp_retries"] == 1 and abs(r.info["damp"] - 0.1) < 1e-9
    assert nm_violations(r.weight, NM(2, 4)) == 0


def test_sparsegpt_deterministic_and_rows_independent():
    w, x, st = _data()
    a = sparsegpt_prune(w, st.hessian(), NM(2, 4))
    b = sparsegpt_prune(w, st.hessian(), NM(2, 4))
    assert torch.equal(a.weight, b.weight)
    # pruning [A; B] as one matrix equals pruning A and B apart (what the walker relies on to fuse q/k/v)
    top = sparsegpt_prune(w[:20], st.hessian(), NM(2, 4))
    torch.testing.assert_close(a.weight[:20], top.weight, rtol=1e-5, atol=1e-6)


def test_dtype_preserved():
    w, x, st = _data()
    r = sparsegpt_prune(w.to(torch.bfloat16), st.hessian(), NM(2, 4))
    assert r.weight.dtype == torch.bfloat16 and nm_violations(r.weight, NM(2, 4)) == 0


def _textbook_sparsegpt(w, h, n, m, blocksize=128, percdamp=0.01):
    """Column-by-column SparseGPT exactly as the paper's pseudo-code, for checking the fast version."""
    w = w.clone().double()
    h = h.clone().double()
    h += torch.eye(h.shape[0], dtype=h.dtype) * percdamp * torch.diag(h).mean()
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    cols = w.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hi = hinv[i1:i2, i1:i2]
        mask = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if i % m == 0:
                s = w1[:, i : i + m] ** 2 / torch.diag(hi)[i : i + m] ** 2
                order = torch.sort(s, dim=1, stable=True).indices
                mask[:, i : i + m].scatter_(1, order[:, : m - n], True)
            q = w1[:, i].clone()
            q[mask[:, i]] = 0
            e = (w1[:, i] - q) / hi[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hi[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def test_fast_sparsegpt_matches_textbook_version():
    w, x, st = _data(rows=24, cols=96)
    ref = _textbook_sparsegpt(w, st.hessian(), 2, 4, blocksize=32)
    fast = sparsegpt_prune(w, st.hessian(), NM(2, 4), blocksize=32)
    assert torch.equal(fast.weight == 0, ref == 0)
    torch.testing.assert_close(fast.weight.double(), ref, rtol=1e-4, atol=1e-5)
