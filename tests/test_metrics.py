"""Oracle tests: the fast metrics against the slow reference, query by query."""
import numpy as np
import pytest
import torch

from reid_nb.config import ReidError
from reid_nb.metrics import MetricsError, compute_distmat, evaluate, evaluate_reference


def random_problem(Q, G, n_ids, n_cams, seed, ties=False):
    rng = np.random.default_rng(seed)
    dm = rng.integers(0, 3, (Q, G)).astype(np.float32) if ties else rng.standard_normal((Q, G)).astype(np.float32)
    return dm, rng.integers(1, n_ids, Q), rng.integers(0, n_ids, G), rng.integers(0, n_cams, Q), rng.integers(0, n_cams, G)


def assert_same_metrics(fast, ref):
    v = ref["valid"]
    np.testing.assert_array_equal(fast["valid"], v)
    np.testing.assert_array_equal(fast["first_rank"], ref["first_rank"])
    np.testing.assert_allclose(fast["AP"][v], ref["AP"][v], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast["INP"][v], ref["INP"][v], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fast["cmc"], ref["cmc"])
    assert fast["num_valid"] == ref["num_valid"] == v.sum()
    assert fast["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
    assert fast["mINP"] == pytest.approx(ref["mINP"], abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_evaluate_matches_reference_every_query(seed, ties):
    Q, G = [(60, 400), (33, 1000), (120, 250)][seed % 3]
    p = random_problem(Q, G, n_ids=[8, 30, 80][seed % 3], n_cams=[2, 3, 6][seed % 3], seed=seed, ties=ties)
    ref = evaluate_reference(*p, max_rank=30, return_per_query=True)
    for chunk, threads in [(1000, 1), (7, 2)]:
        assert_same_metrics(evaluate(*p, max_rank=30, return_per_query=True, chunk=chunk, num_threads=threads), ref)


def test_evaluate_float64_and_torch_inputs():
    dm, qp, gp, qc, gc = random_problem(20, 100, 5, 2, seed=9)
    ref = evaluate_reference(dm, qp, gp, qc, gc, return_per_query=True)
    got = evaluate(torch.from_numpy(dm.astype(np.float64)), torch.from_numpy(qp), gp, torch.from_numpy(qc), gc,
                   return_per_query=True)
    assert_same_metrics(got, ref)


def test_protocol_rules_by_hand():
    # query pid 5 cam 0; gallery in distance order: [5 cam0 (left out), 0 (distractor), 5 cam1, 7, 5 cam2]
    dm = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    r = evaluate(dm, [5], [5, 0, 5, 7, 5], [0], [0, 1, 1, 1, 2], max_rank=5, return_per_query=True)
    # valid ranking: distractor(1), hit(2), 7(3), hit(4) -> AP = (1/2 + 2/4)/2, INP = 2/4
    assert r["mAP"] == pytest.approx(0.5) and r["mINP"] == pytest.approx(0.5)
    np.testing.assert_array_equal(r["cmc"], [0, 1, 1, 1, 1])
    assert r["first_rank"].tolist() == [2]


def test_tie_rule_is_gallery_index_order():
    # all distances equal: the ranking is gallery index order
    r = evaluate(np.ones((1, 4)), [1], [2, 1, 3, 1], [0], [1, 1, 1, 1], max_rank=4)
    assert r["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    np.testing.assert_array_equal(r["cmc"], [0, 1, 1, 1])


def test_queries_without_match_are_skipped_and_cmc_beyond_gallery():
    r = evaluate(np.array([[0.2, 0.1], [0.1, 0.2]]), [1, 9], [1, 2], [0, 0], [1, 1], max_rank=5)
    assert r["num_valid"] == 1 and r["mAP"] == pytest.approx(0.5)
    assert r["cmc"].shape == (5,) and r["cmc"].tolist() == [0, 1, 1, 1, 1]


def test_evaluate_errors_name_the_input():
    dm, qp, gp, qc, gc = random_problem(5, 10, 3, 2, seed=0)
    with pytest.raises(MetricsError, match="g_camids"): evaluate(dm, qp, gp, qc, gc[:-1])
    with pytest.raises(ReidError, match="no query has a valid match"): evaluate(dm, qp + 100, gp, qc, gc)
    with pytest.raises(MetricsError, match="distmat"): evaluate(dm[0], qp, gp, qc, gc)
    bad = dm.copy(); bad[:] = np.nan
    with pytest.raises(MetricsError, match="NaN"): evaluate(bad, np.ones(5, int), np.ones(10, int), np.zeros(5, int), np.ones(10, int))


def test_compute_distmat_metrics():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((7, 5)), rng.standard_normal((9, 5))
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    expect = ((qn[:, None] - gn[None]) ** 2).sum(-1)
    np.testing.assert_allclose(compute_distmat(q, g), expect, atol=1e-5)
    np.testing.assert_allclose(compute_distmat(torch.tensor(q), torch.tensor(g), "cosine"), 1 - qn @ gn.T, atol=1e-5)
    np.testing.assert_allclose(compute_distmat(q, g, chunk=2), compute_distmat(q, g), atol=1e-6)
    assert compute_distmat(q, g).dtype == np.float32
    with pytest.raises(MetricsError, match="metric"): compute_distmat(q, g, "l1")
