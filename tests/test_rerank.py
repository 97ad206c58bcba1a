"""Oracle tests: the blockwise re-ranking against the dense (Q+G)^2 algorithm, query by query."""
import numpy as np
import pytest
import torch

from reid_nb.config import ReidError
from reid_nb.metrics import compute_distmat, evaluate
from reid_nb.rerank import RerankError, k_reciprocal, k_reciprocal_dense


def clustered(n_ids, per_id, dim, noise, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n_ids, dim, generator=g)
    f = c.repeat_interleave(per_id, 0) + noise * torch.randn(n_ids * per_id, dim, generator=g)
    ids = np.repeat(np.arange(1, n_ids + 1), per_id)
    cams = np.arange(n_ids * per_id) % 3
    q = np.arange(n_ids * per_id) % per_id == 0
    return f[torch.from_numpy(q)], f[torch.from_numpy(~q)], ids[q], ids[~q], cams[q], cams[~q]


@pytest.mark.parametrize("case", [
    dict(n_ids=25, per_id=6, dim=32, noise=0.9, seed=0, k1=20, k2=6, lam=0.3, block=50),
    dict(n_ids=40, per_id=4, dim=16, noise=1.5, seed=1, k1=10, k2=3, lam=0.5, block=33),
    dict(n_ids=15, per_id=8, dim=8, noise=3.0, seed=2, k1=6, k2=1, lam=0.1, block=1000),
])
def test_rerank_matches_dense_reference(case):
    qf, gf, qp, gp, qc, gc = clustered(case["n_ids"], case["per_id"], case["dim"], case["noise"], case["seed"])
    ref = k_reciprocal_dense(qf, gf, case["k1"], case["k2"], case["lam"])
    got = k_reciprocal(qf, gf, case["k1"], case["k2"], case["lam"], block_size=case["block"], max_pairs=2000)
    assert got.shape == ref.shape == (len(qf), len(gf)) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    mr, mg = evaluate(ref, qp, gp, qc, gc), evaluate(got, qp, gp, qc, gc)
    assert abs(mr["mAP"] - mg["mAP"]) <= 1e-3 and abs(mr["cmc"][0] - mg["cmc"][0]) <= 1e-3


def test_rerank_plain_gaussian_features():
    g = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(30, 24, generator=g), torch.randn(170, 24, generator=g)
    np.testing.assert_allclose(k_reciprocal(qf, gf, block_size=64), k_reciprocal_dense(qf, gf), rtol=0, atol=1e-5)


def test_rerank_lambda_one_is_normalised_original_distance():
    qf, gf, *_ = clustered(6, 4, 8, 0.5, 0)
    d = compute_distmat(torch.cat([qf, gf]), torch.cat([qf, gf]))
    expect = (d / d.max(1, keepdims=True))[:len(qf), len(qf):]
    np.testing.assert_allclose(k_reciprocal(qf, gf, k1=3, k2=2, lambda_value=1.0), expect, atol=1e-6)


def test_rerank_problem_smaller_than_k1():
    qf, gf, *_ = clustered(3, 4, 8, 0.5, 1)                         # 12 images, k1 = 20
    np.testing.assert_allclose(k_reciprocal(qf, gf), k_reciprocal_dense(qf, gf), rtol=0, atol=1e-5)


def test_rerank_errors_name_the_spec_key():
    qf, gf, *_ = clustered(4, 3, 8, 0.5, 0)
    with pytest.raises(RerankError, match="re_ranking.k1"): k_reciprocal(qf, gf, k1=0)
    with pytest.raises(RerankError, match="re_ranking.k2"): k_reciprocal(qf, gf, k1=3, k2=0)
    with pytest.raises(RerankError, match="re_ranking.lambda_value"): k_reciprocal(qf, gf, lambda_value=-0.1)
    with pytest.raises(RerankError, match="same D"): k_reciprocal(qf, gf[:, :2])


@pytest.mark.parametrize("candidates, bf16", [(None, True), (12, True), (5, True), (None, False)])
def test_rerank_neighbour_search_is_exact(candidates, bf16):
    # Gallery rows are searched in bf16 and checked in fp32; a short shortlist (5 = k) forces the fp32 redo;
    # bf16=False is the all-fp32 path taken on CPUs without bf16 instructions.
    from reid_nb.rerank import _topk_blocks
    qf, gf, *_ = clustered(30, 5, 48, 0.8, 4)
    f = torch.nn.functional.normalize(torch.cat([qf, gf]), dim=1)
    nn, nd, mx, out = _topk_blocks(f, len(qf), 5, 0.3, block_size=40, candidates=candidates, bf16=bf16)
    full = compute_distmat(f, f)
    np.testing.assert_array_equal(np.sort(nn, 1), np.sort(np.argsort(full, 1)[:, :5], 1))
    np.testing.assert_allclose(mx, full.max(1), rtol=1e-6)
    np.testing.assert_allclose(nd, np.sort(full / full.max(1, keepdims=True), 1)[:, :5], atol=1e-6)
    np.testing.assert_allclose(out, 0.3 * (full / full.max(1, keepdims=True))[:len(qf), len(qf):], atol=1e-6)


def test_rerank_matches_dense_on_nonnegative_wide_features():
    # ReLU-like features (all similarities >= 0) in 512 dimensions: a wider bf16 error bound, same answer.
    qf, gf, qp, gp, qc, gc = clustered(30, 6, 512, 1.0, 5)
    qf, gf = qf.clamp_min(0), gf.clamp_min(0)
    ref, got = k_reciprocal_dense(qf, gf), k_reciprocal(qf, gf, block_size=64)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    mr, mg = evaluate(ref, qp, gp, qc, gc), evaluate(got, qp, gp, qc, gc)
    assert abs(mr["mAP"] - mg["mAP"]) <= 1e-3 and abs(mr["cmc"][0] - mg["cmc"][0]) <= 1e-3
