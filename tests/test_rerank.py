"""Oracle sweeps: the blockwise re-ranking against the dense reference, query by query, on larger
and more varied problems than the notebook's checks (which cover each step, the errors and the
problem smaller than k1)."""

import numpy as np
import pytest
import torch

from reid_nb.metrics import compute_distmat, ranking_metrics
from reid_nb.rerank import _topk_blocks, k_reciprocal, k_reciprocal_reference


def clustered(n_ids, per_id, dim, noise, seed):
    "Query and gallery features around `n_ids` random centres, with their ids and cameras."
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=gen)
    noise = noise * torch.randn(n_ids * per_id, dim, generator=gen)
    feats = centres.repeat_interleave(per_id, 0) + noise
    ids = np.repeat(np.arange(1, n_ids + 1), per_id)
    cams = np.arange(n_ids * per_id) % 3
    is_query = np.arange(n_ids * per_id) % per_id == 0
    query, gallery = torch.from_numpy(is_query), torch.from_numpy(~is_query)
    return (
        feats[query],
        feats[gallery],
        ids[is_query],
        ids[~is_query],
        cams[is_query],
        cams[~is_query],
    )


def assert_same_scores(ref, got, labels):
    "mAP and rank-1 of the two distance matrices within 1e-3."
    scores_ref, scores_got = ranking_metrics(ref, *labels), ranking_metrics(got, *labels)
    assert abs(scores_ref["mAP"] - scores_got["mAP"]) <= 1e-3
    assert abs(scores_ref["cmc"][0] - scores_got["cmc"][0]) <= 1e-3


CASES = [
    dict(n_ids=25, per_id=6, dim=32, noise=0.9, seed=0, k1=20, k2=6, lam=0.3, block=50),
    dict(n_ids=40, per_id=4, dim=16, noise=1.5, seed=1, k1=10, k2=3, lam=0.5, block=33),
    dict(n_ids=15, per_id=8, dim=8, noise=3.0, seed=2, k1=6, k2=1, lam=0.1, block=1000),
]


@pytest.mark.parametrize("case", CASES)
def test_rerank_matches_reference(case):
    qf, gf, *labels = clustered(
        case["n_ids"], case["per_id"], case["dim"], case["noise"], case["seed"]
    )
    params = (case["k1"], case["k2"], case["lam"])
    ref = k_reciprocal_reference(qf, gf, *params)
    got = k_reciprocal(qf, gf, *params, block_size=case["block"], max_pairs=2000)
    assert got.shape == ref.shape == (len(qf), len(gf))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert_same_scores(ref, got, labels)


def test_rerank_plain_gaussian_features():
    gen = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(30, 24, generator=gen), torch.randn(170, 24, generator=gen)
    got = k_reciprocal(qf, gf, block_size=64)
    np.testing.assert_allclose(got, k_reciprocal_reference(qf, gf), rtol=0, atol=1e-5)


def test_rerank_lambda_one_is_normalised_original_distance():
    qf, gf, *_ = clustered(6, 4, 8, 0.5, 0)
    dist = compute_distmat(torch.cat([qf, gf]), torch.cat([qf, gf]))
    expect = (dist / dist.max(1, keepdims=True))[: len(qf), len(qf) :]
    got = k_reciprocal(qf, gf, k1=3, k2=2, lambda_value=1.0)
    np.testing.assert_allclose(got, expect, atol=1e-6)


@pytest.mark.parametrize("candidates, bf16", [(None, True), (12, True), (5, True), (None, False)])
def test_rerank_neighbour_search_is_exact(candidates, bf16):
    # Gallery rows are searched in bf16 and checked in fp32; a short shortlist (5 = k) forces the
    # fp32 redo; bf16=False is the all-fp32 path taken on CPUs without bf16 instructions.
    qf, gf, *_ = clustered(30, 5, 48, 0.8, 4)
    feat = torch.nn.functional.normalize(torch.cat([qf, gf]), dim=1)
    nn, nd, row_max, out = _topk_blocks(
        feat, len(qf), 5, 0.3, block_size=40, candidates=candidates, bf16=bf16
    )
    full = compute_distmat(feat, feat)
    normalised = full / full.max(1, keepdims=True)
    np.testing.assert_array_equal(np.sort(nn, 1), np.sort(np.argsort(full, 1)[:, :5], 1))
    np.testing.assert_allclose(row_max, full.max(1), rtol=1e-6)
    np.testing.assert_allclose(nd, np.sort(normalised, 1)[:, :5], atol=1e-6)
    np.testing.assert_allclose(out, 0.3 * normalised[: len(qf), len(qf) :], atol=1e-6)


def test_rerank_matches_reference_on_nonnegative_wide_features():
    # ReLU-like features (all similarities >= 0) in 512 dimensions: a wider bf16 error bound,
    # the same answer.
    qf, gf, *labels = clustered(30, 6, 512, 1.0, 5)
    qf, gf = qf.clamp_min(0), gf.clamp_min(0)
    ref, got = k_reciprocal_reference(qf, gf), k_reciprocal(qf, gf, block_size=64)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert_same_scores(ref, got, labels)
