"""k-reciprocal re-ranking: `reid_nb.rerank.k_reciprocal` (blockwise, sparse) against the dense
(Q+G)^2 reference `k_reciprocal_reference`, on a Market-sized problem (3,368 x 15,913, dim 256),
and the fast version alone on an MSMT17-sized one (11,659 x 82,161), which the dense one cannot
hold.

Each measurement runs in a fresh subprocess. Peak memory is that process's peak resident set
size, `resource.getrusage(RUSAGE_SELF).ru_maxrss` read by the process itself at the end (the same
figure the parent sees as RUSAGE_CHILDREN for that one child); "before" is its resident size just
before the call (interpreter, torch, features), so peak - before is what the algorithm itself
added. Wall and CPU seconds (time.process_time, all threads) are both reported, with the 1-minute
load average, because other work on the machine inflates wall time."""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MARKET = dict(num_query=3368, num_gallery=15913, num_ids=751)
MSMT = dict(num_query=11659, num_gallery=82161, num_ids=3060)
QUICK = dict(num_query=300, num_gallery=1500, num_ids=150)
QUICK_BIG = dict(num_query=600, num_gallery=3000, num_ids=300)
TIMINGS = ("seconds", "cpu_seconds", "load_avg_1min", "peak_mb")


def _rss_mb():
    "This process's resident set size now, in MiB."
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(args):
    "Runs in the subprocess: make the problem, time one re-ranking, report time, memory, scores."
    sys.path.insert(0, str(HERE))
    import torch
    from bench_metrics import market_like

    from reid_nb.metrics import compute_distmat, ranking_metrics
    from reid_nb.rerank import k_reciprocal, k_reciprocal_reference

    qf, gf, *labels = market_like(**args["size"], seed=args.get("seed", 0))
    rerank = k_reciprocal_reference if args["algo"] == "dense" else k_reciprocal
    before = _rss_mb()
    start, start_cpu = time.perf_counter(), time.process_time()
    dist = rerank(qf, gf)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    scores = ranking_metrics(dist, *labels)
    plain = ranking_metrics(compute_distmat(qf, gf), *labels)
    if args.get("save"):
        np.save(args["save"], dist)
    result = dict(seconds=seconds, cpu_seconds=cpu_seconds, load_avg_1min=os.getloadavg()[0])
    result.update(peak_mb=peak, before_mb=before, threads=torch.get_num_threads())
    result.update(mAP=scores["mAP"], rank1=float(scores["cmc"][0]))
    result.update(mAP_plain=plain["mAP"], rank1_plain=float(plain["cmc"][0]))
    print(json.dumps(result))


def measure(algo, size, save=None):
    "One re-ranking in a fresh process -> dict(seconds, peak_mb, before_mb, mAP, rank1, ...)."
    args = json.dumps(dict(algo=algo, size=size, save=save and str(save)))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{algo} re-ranking on {size} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _market(size):
    "Both versions on the Market-sized problem -> (results, dense run, fast run)."
    res = {}
    with tempfile.TemporaryDirectory(prefix="reid_bench_") as tmp:
        dense = measure("dense", size, Path(tmp) / "dense.npy")
        fast = measure("fast", size, Path(tmp) / "fast.npy")
        dist_diff = np.abs(np.load(Path(tmp) / "dense.npy") - np.load(Path(tmp) / "fast.npy"))
    res["market_problem"] = f"{size['num_query']} x {size['num_gallery']}, dim 256"
    res["threads"] = fast["threads"]
    for key in (*TIMINGS, "before_mb", "mAP", "rank1"):
        res[f"market_dense_{key}"], res[f"market_fast_{key}"] = dense[key], fast[key]
    res["market_time_ratio_fast_over_dense"] = fast["seconds"] / dense["seconds"]
    res["market_cpu_time_ratio_fast_over_dense"] = fast["cpu_seconds"] / dense["cpu_seconds"]
    res["market_peak_ratio_fast_over_dense"] = fast["peak_mb"] / dense["peak_mb"]
    added_fast = fast["peak_mb"] - fast["before_mb"]
    added_dense = dense["peak_mb"] - dense["before_mb"]
    res["market_added_ratio_fast_over_dense"] = added_fast / added_dense
    res["market_abs_mAP_diff"] = abs(fast["mAP"] - dense["mAP"])
    res["market_abs_rank1_diff"] = abs(fast["rank1"] - dense["rank1"])
    res["market_max_abs_dist_diff"] = float(dist_diff.max())
    res["market_mAP_without_rerank"] = dense["mAP_plain"]
    return res, dense, fast


def _big(size, market_size, dense):
    "The fast version alone on the MSMT17-sized problem -> (results, its run)."
    res = {}
    fast = measure("fast", size)
    res["big_problem"] = f"{size['num_query']} x {size['num_gallery']}, dim 256"
    for key in (*TIMINGS, "mAP", "rank1"):
        res[f"big_fast_{key}"] = fast[key]
    res["big_mAP_without_rerank"] = fast["mAP_plain"]
    # Not measured: the dense algorithm's memory grows as (Q+G)^2; scaled from the Market run.
    n_big = size["num_query"] + size["num_gallery"]
    n_market = market_size["num_query"] + market_size["num_gallery"]
    growth = (n_big / n_market) ** 2
    res["big_dense_peak_mb_extrapolated"] = (dense["peak_mb"] - dense["before_mb"]) * growth
    return res, fast


def _report(res, dense, fast, big):
    "Print the table of the Market-sized comparison and the line of the MSMT17-sized run."
    print(f"  {res['market_problem']}, {res['threads']} threads; peak memory = ru_maxrss")
    print(f"  {'':24s} {'fast':>10s} {'dense':>10s} {'fast/dense':>11s}")
    for label, key, fmt, ratio in [
        ("time (s)", "seconds", "10.2f", "market_time_ratio_fast_over_dense"),
        ("CPU time (s)", "cpu_seconds", "10.2f", "market_cpu_time_ratio_fast_over_dense"),
        ("peak RSS (MiB)", "peak_mb", "10.0f", "market_peak_ratio_fast_over_dense"),
    ]:
        print(f"  {label:24s} {fast[key]:{fmt}} {dense[key]:{fmt}} {res[ratio]:11.3f}")
    added = [run["peak_mb"] - run["before_mb"] for run in (fast, dense)]
    ratio = res["market_added_ratio_fast_over_dense"]
    print(f"  {'peak - before (MiB)':24s} {added[0]:10.0f} {added[1]:10.0f} {ratio:11.3f}")
    loads = fast["load_avg_1min"], dense["load_avg_1min"]
    print(f"  {'load average at end':24s} {loads[0]:10.1f} {loads[1]:10.1f}")
    for label, key in (("mAP", "mAP"), ("rank-1", "rank1")):
        diff = res[f"market_abs_{key}_diff"]
        print(f"  {label:24s} {fast[key]:10.4f} {dense[key]:10.4f}   |diff| {diff:.1e}")
    print(
        f"  max |distance diff| {res['market_max_abs_dist_diff']:.2e}; "
        f"mAP without re-ranking {res['market_mAP_without_rerank']:.4f}"
    )
    print(
        f"  {res['big_problem']}: fast {big['seconds']:.1f} s ({big['cpu_seconds']:.1f} s CPU, "
        f"load {big['load_avg_1min']:.1f}), peak RSS {big['peak_mb']:.0f} MiB, "
        f"mAP {big['mAP']:.4f} (without re-ranking {big['mAP_plain']:.4f}); dense not run: "
        f"~{res['big_dense_peak_mb_extrapolated'] / 1024:.0f} GiB extrapolated as (Q+G)^2"
    )


def run(quick=False):
    "Both sizes -> the results dict that benchmarks/run.py records."
    market_size, big_size = (QUICK, QUICK_BIG) if quick else (MARKET, MSMT)
    res, dense, fast = _market(market_size)
    big_res, big = _big(big_size, market_size, dense)
    res.update(big_res)
    _report(res, dense, fast, big)
    return res


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
    else:
        run(quick="--quick" in sys.argv)
