"""Market-1501 metrics: `reid_nb.metrics.ranking_metrics` against the sort-then-scan reference
(`ranking_metrics_reference`, one stable argsort per query) on a Market-sized problem: 3,368
queries x 15,913 gallery images, 751 identities, 6 cameras, ~2,800 distractors (pid 0), features
of dim 256."""

import os
import time

import numpy as np
import torch

from reid_nb.metrics import compute_distmat, ranking_metrics, ranking_metrics_reference


def market_like(
    num_query=3368, num_gallery=15913, num_ids=751, dim=256, distractors=0.18, noise=1.8, seed=0
):
    """Clustered random features with Market-1501-like ids and cameras
    -> (qf, gf, q_pids, g_pids, q_camids, g_camids)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=g)
    q_pids = torch.randint(1, num_ids, (num_query,), generator=g)
    g_pids = torch.randint(1, num_ids, (num_gallery,), generator=g)
    g_pids[torch.rand(num_gallery, generator=g) < distractors] = 0  # distractors: random features
    qf = centres[q_pids] + noise * torch.randn(num_query, dim, generator=g)
    gf = centres[g_pids] + noise * torch.randn(num_gallery, dim, generator=g)
    gf[g_pids == 0] = torch.randn(int((g_pids == 0).sum()), dim, generator=g) * (1 + noise)
    q_cams, g_cams = (
        torch.randint(0, 6, (num_query,), generator=g),
        torch.randint(0, 6, (num_gallery,), generator=g),
    )
    return qf, gf, q_pids.numpy(), g_pids.numpy(), q_cams.numpy(), g_cams.numpy()


def _best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run(quick=False):
    sizes = dict(num_query=500, num_gallery=2500, num_ids=150) if quick else {}
    qf, gf, qp, gp, qc, gc = market_like(**sizes)
    res = {
        "problem": f"{len(qp)} x {len(gp)}, dim {qf.shape[1]}",
        "threads": torch.get_num_threads(),
    }
    res["compute_distmat_s"], dm = _best_time(lambda: compute_distmat(qf, gf), 1 if quick else 3)
    res["ranking_metrics_s"], fast = _best_time(
        lambda: ranking_metrics(dm, qp, gp, qc, gc, return_per_query=True), 2 if quick else 5
    )
    res["reference_s"], ref = _best_time(
        lambda: ranking_metrics_reference(dm, qp, gp, qc, gc, return_per_query=True), 1
    )
    res["speedup_vs_reference"] = res["reference_s"] / res["ranking_metrics_s"]
    v = ref["valid"]
    res["mAP"], res["rank1"], res["mINP"], res["num_valid"] = (
        fast["mAP"],
        float(fast["cmc"][0]),
        fast["mINP"],
        fast["num_valid"],
    )
    res["max_abs_AP_diff"] = float(np.abs(fast["AP"][v] - ref["AP"][v]).max())
    res["max_abs_INP_diff"] = float(np.abs(fast["INP"][v] - ref["INP"][v]).max())
    res["same_first_rank"] = bool(
        (fast["first_rank"] == ref["first_rank"]).all() and (fast["valid"] == v).all()
    )
    res["max_abs_cmc_diff"] = float(np.abs(fast["cmc"] - ref["cmc"]).max())
    res["load_avg_1min"] = os.getloadavg()[0]
    print(
        f"  problem {res['problem']}, {res['threads']} threads, "
        f"load average {res['load_avg_1min']:.1f} (other work on the machine)"
    )
    print(f"  {'':22s} {'ranking':>10s} {'reference':>10s} {'ratio':>8s}")
    print(
        f"  {'time (s)':22s} {res['ranking_metrics_s']:10.3f} {res['reference_s']:10.3f} "
        f"{res['speedup_vs_reference']:7.1f}x"
    )
    print(
        f"  compute_distmat {res['compute_distmat_s']:.3f} s; "
        f"mAP {res['mAP']:.4f} rank-1 {res['rank1']:.4f} "
        f"mINP {res['mINP']:.4f} over {res['num_valid']} valid queries"
    )
    print(
        f"  agreement with reference: max |AP diff| {res['max_abs_AP_diff']:.2e}, max |INP diff| "
        f"{res['max_abs_INP_diff']:.2e}, max |CMC diff| {res['max_abs_cmc_diff']:.2e}, "
        f"same first ranks {res['same_first_rank']}"
    )
    return res


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
