"""Oracle sweep: the fast metrics against the slow reference, query by query, on more and larger
random problems than the notebook runs (the notebook's check cells test each piece by hand)."""

import numpy as np
import pytest
import torch

from reid_nb.metrics import ranking_metrics, ranking_metrics_reference


def random_problem(Q, G, n_ids, n_cams, seed, ties=False):
    rng = np.random.default_rng(seed)
    if ties:
        dm = rng.integers(0, 3, (Q, G)).astype(np.float32)
    else:
        dm = rng.standard_normal((Q, G)).astype(np.float32)
    ids = rng.integers(1, n_ids, Q), rng.integers(0, n_ids, G)
    cams = rng.integers(0, n_cams, Q), rng.integers(0, n_cams, G)
    return dm, ids[0], ids[1], cams[0], cams[1]


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
def test_ranking_metrics_match_reference_every_query(seed, ties):
    Q, G = [(60, 400), (33, 1000), (120, 250)][seed % 3]
    p = random_problem(
        Q, G, n_ids=[8, 30, 80][seed % 3], n_cams=[2, 3, 6][seed % 3], seed=seed, ties=ties
    )
    ref = ranking_metrics_reference(*p, max_rank=30, return_per_query=True)
    for chunk, threads in [(1000, 1), (7, 2)]:
        fast = ranking_metrics(
            *p, max_rank=30, return_per_query=True, chunk=chunk, num_threads=threads
        )
        assert_same_metrics(fast, ref)


def test_float64_and_torch_inputs():
    dm, qp, gp, qc, gc = random_problem(20, 100, 5, 2, seed=9)
    ref = ranking_metrics_reference(dm, qp, gp, qc, gc, return_per_query=True)
    got = ranking_metrics(
        torch.from_numpy(dm.astype(np.float64)),
        torch.from_numpy(qp),
        gp,
        torch.from_numpy(qc),
        gc,
        return_per_query=True,
    )
    assert_same_metrics(got, ref)


def test_clustered_features_with_ties_and_left_out_nan():
    """Distances of a model that works (matches near the top, so each row keeps a small part of
    the gallery), with rows where a match ties another image and rows whose left-out images are
    NaN or infinite: both paths in one problem, each row as the reference ranks it."""
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 25, 400)
    feats = rng.standard_normal((25, 32))[ids] + 0.6 * rng.standard_normal((400, 32))
    dm = ((feats[:80, None] - feats[None, 80:]) ** 2).sum(-1).astype(np.float32)
    qp, gp = ids[:80], ids[80:]
    qc, gc = rng.integers(0, 4, 80), rng.integers(0, 4, 320)
    for q in range(0, 80, 5):  # a non-match at exactly a match's distance
        match, other = np.flatnonzero(gp == qp[q])[0], np.flatnonzero(gp != qp[q])[q % 7]
        dm[q, other] = dm[q, match]
    for q in range(1, 80, 6):  # non-finite distances where the protocol leaves images out
        dm[q, (gp == qp[q]) & (gc == qc[q])] = [np.nan, np.inf][q % 2]
    ref = ranking_metrics_reference(dm, qp, gp, qc, gc, return_per_query=True)
    assert ref["num_valid"] > 60
    assert_same_metrics(ranking_metrics(dm, qp, gp, qc, gc, return_per_query=True, chunk=9), ref)
    dm[2, np.flatnonzero(gp != qp[2])[0]] = np.nan  # a valid image's distance: an error
    with pytest.raises(ValueError, match="row 2 has NaN"):
        ranking_metrics(dm, qp, gp, qc, gc)
