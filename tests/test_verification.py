"""Same person or not: the ROC, TPR@FPR and threshold of `reid_nb.verification` against a direct
count over every pair, and the threshold's way from the evaluate task into metrics.json, the
checkpoint's metadata file, the match explorer and inference."""

import json
import math

import numpy as np
import pytest

from reid_nb.checkpoint import random_init_checkpoint
from reid_nb.evaluate import compute_distances, run_evaluation, run_inference
from reid_nb.verification import (
    load_threshold,
    roc_auc,
    roc_curve,
    threshold_at_fpr,
    threshold_file,
    tpr_at_fpr,
    verification_pairs,
    verification_summary,
)


def counted(distmat, q_pids, g_pids, q_camids, g_camids):
    "Every kept pair as (distance, same person), the protocol applied pair by pair."
    pairs = []
    for i, (q_pid, q_cam) in enumerate(zip(q_pids, q_camids)):
        for j, (g_pid, g_cam) in enumerate(zip(g_pids, g_camids)):
            if g_pid == -1 or (q_pid == g_pid and q_cam == g_cam):
                continue
            pairs.append((float(distmat[i, j]), bool(q_pid == g_pid)))
    return pairs


def rates(pairs, threshold):
    "(FPR, TPR) of `distance < threshold`, counted."
    negatives = [d for d, same in pairs if not same]
    positives = [d for d, same in pairs if same]
    fpr = sum(d < threshold for d in negatives) / len(negatives)
    return fpr, sum(d < threshold for d in positives) / len(positives)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_tpr_at_fpr_agree_with_a_direct_count(seed):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(1, 8, 30), rng.integers(-1, 8, 50)
    q_cams, g_cams = rng.integers(0, 3, 30), rng.integers(0, 3, 50)
    different = q_pids[:, None] != g_pids[None]
    distmat = np.round(rng.random((30, 50)) + 0.4 * different, 2)  # ties happen
    pairs = counted(distmat, q_pids, g_pids, q_cams, g_cams)
    positive, negative = verification_pairs(distmat, q_pids, g_pids, q_cams, g_cams)
    assert sorted(positive) == sorted(d for d, same in pairs if same)
    assert sorted(negative) == sorted(d for d, same in pairs if not same)
    for fpr, tpr, threshold in zip(*roc_curve(positive, negative)):
        assert (fpr, tpr) == rates(pairs, threshold)
    candidates = sorted({d for d, _ in pairs} | {math.inf})
    for target in (1e-3, 1e-2, 0.1, 0.25):
        allowed = [t for t in candidates if rates(pairs, t)[0] <= target + 1e-12]
        assert threshold_at_fpr(negative, target) == max(allowed)
        best = max(rates(pairs, t)[1] for t in allowed)
        assert list(tpr_at_fpr(positive, negative, [target]).values()) == [best]
    wins = [(p < n) + 0.5 * (p == n) for p in positive for n in negative]
    assert roc_auc(positive, negative) == pytest.approx(np.mean(wins), abs=1e-12)


def test_summary_units_and_edges():
    summary = verification_summary([0.5, 1.5], [1.0, 2.0, 3.0, 3.5], target_fpr=0.25)
    assert summary["threshold"] == 2.0  # one of four non-matching pairs may pass: 1.0
    assert summary["threshold_units"]["cosine_similarity"] == 0.0  # |q-g|^2 = 2 - 2 cos
    assert summary["tpr_at_threshold"] == 1.0 and summary["fpr_at_threshold"] == 0.25
    assert summary["min_fpr"] == 0.25 and list(summary["tpr_at_fpr"]) == ["1e-4", "1e-3", "1e-2"]
    assert verification_summary([0.5], [1.0], target_fpr=1.0)["threshold"] is None


@pytest.mark.slow  # three embedding passes and an inference (09_evaluate checks each step)
def test_the_threshold_travels_from_evaluation_to_explorer_and_inference(tiny_spec, tmp_path):
    checkpoint = random_init_checkpoint(tiny_spec(), tmp_path / "init" / "random_init.pth")
    spec = tiny_spec(
        f"evaluate.checkpoint={checkpoint}",
        f"inference.checkpoint={checkpoint}",
        "evaluate.target_fpr=0.01",
        "re_ranking.re_ranking=false",
    )
    assert compute_distances(spec, verbose=False).threshold is None  # not evaluated yet
    result = run_evaluation(spec, verbose=False)
    written = json.loads((tmp_path / "results" / "evaluate" / "metrics.json").read_text())
    verification = written["verification"]
    assert verification["target_fpr"] == 0.01 and verification["fpr_at_threshold"] <= 0.01
    assert result["files"]["threshold"] == str(threshold_file(checkpoint))
    assert load_threshold(checkpoint)["threshold"] == verification["threshold"]
    for name in ("distance_histograms.png", "roc_curve.png"):
        assert (tmp_path / "results" / "evaluate" / name).read_bytes()[:4] == b"\x89PNG"
    dist = compute_distances(spec, verbose=False)
    assert dist.threshold == verification["threshold"]
    run_inference(spec, verbose=False)
    matches = json.loads((tmp_path / "results" / "inference" / "matches.json").read_text())
    assert matches["threshold"] == verification["threshold"]
    flags = [(m["match"], m["distance"]) for q in matches["queries"] for m in q["matches"]]
    assert all(match == (distance < matches["threshold"]) for match, distance in flags)
    assert len(matches["queries"]) == len(dist.query)
