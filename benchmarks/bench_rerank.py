"""k-reciprocal re-ranking: `reid_nb.rerank.k_reciprocal` (blockwise, sparse) against the classic
dense (Q+G)^2 algorithm `k_reciprocal_dense`, on a Market-sized problem (3,368 x 15,913, dim 256),
and the fast version alone on an MSMT17-sized one (11,659 x 82,161), which the dense one cannot hold.

Each measurement runs in a fresh subprocess. Peak memory is that process's peak resident set size,
`resource.getrusage(RUSAGE_SELF).ru_maxrss` read by the process itself at the end (the same figure
the parent sees as RUSAGE_CHILDREN for that one child); "before" is its resident size just before
the call (interpreter, torch, features), so peak - before is what the algorithm itself added.
Wall and CPU seconds (time.process_time, all threads) are both reported, with the 1-minute load
average, because other work on the machine inflates wall time."""
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


def _rss_mb():
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(args):
    "Runs in the subprocess: make the problem, time one re-ranking, report time, memory and metrics."
    sys.path.insert(0, str(HERE))
    import torch
    from bench_metrics import market_like
    from reid_nb.metrics import compute_distmat, evaluate
    from reid_nb.rerank import k_reciprocal, k_reciprocal_dense
    qf, gf, qp, gp, qc, gc = market_like(**args["size"], seed=args.get("seed", 0))
    fn = k_reciprocal_dense if args["algo"] == "dense" else k_reciprocal
    before = _rss_mb()
    t, c = time.perf_counter(), time.process_time()
    dist = fn(qf, gf)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # KiB on Linux -> MiB
    m, m0 = evaluate(dist, qp, gp, qc, gc), evaluate(compute_distmat(qf, gf), qp, gp, qc, gc)
    if args.get("save"): np.save(args["save"], dist)
    print(json.dumps(dict(seconds=seconds, cpu_seconds=cpu_seconds, load_avg_1min=os.getloadavg()[0], peak_mb=peak, before_mb=before, mAP=m["mAP"], rank1=float(m["cmc"][0]),
                          mAP_plain=m0["mAP"], rank1_plain=float(m0["cmc"][0]), threads=torch.get_num_threads())))


def measure(algo, size, save=None):
    "One re-ranking in a fresh process -> dict(seconds, peak_mb, before_mb, mAP, rank1, ...)."
    args = json.dumps(dict(algo=algo, size=size, save=save and str(save)))
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", args],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    if p.returncode != 0:
        raise RuntimeError(f"{algo} re-ranking on {size} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(quick=False):
    market, big = (QUICK, QUICK_BIG) if quick else (MARKET, MSMT)
    res = {}
    with tempfile.TemporaryDirectory(prefix="reid_bench_") as tmp:
        d = measure("dense", market, Path(tmp) / "dense.npy")
        f = measure("fast", market, Path(tmp) / "fast.npy")
        a, b = np.load(Path(tmp) / "dense.npy"), np.load(Path(tmp) / "fast.npy")
        res["market_problem"] = f"{market['num_query']} x {market['num_gallery']}, dim 256"
        res["threads"] = f["threads"]
        for k in ("seconds", "cpu_seconds", "load_avg_1min", "peak_mb", "before_mb", "mAP", "rank1"):
            res[f"market_dense_{k}"], res[f"market_fast_{k}"] = d[k], f[k]
        res["market_time_ratio_fast_over_dense"] = f["seconds"] / d["seconds"]
        res["market_cpu_time_ratio_fast_over_dense"] = f["cpu_seconds"] / d["cpu_seconds"]
        res["market_peak_ratio_fast_over_dense"] = f["peak_mb"] / d["peak_mb"]
        res["market_added_ratio_fast_over_dense"] = (f["peak_mb"] - f["before_mb"]) / (d["peak_mb"] - d["before_mb"])
        res["market_abs_mAP_diff"] = abs(f["mAP"] - d["mAP"])
        res["market_abs_rank1_diff"] = abs(f["rank1"] - d["rank1"])
        res["market_max_abs_dist_diff"] = float(np.abs(a - b).max())
        res["market_mAP_without_rerank"] = d["mAP_plain"]
        del a, b
    m = measure("fast", big)
    n = big["num_query"] + big["num_gallery"]
    res["big_problem"] = f"{big['num_query']} x {big['num_gallery']}, dim 256"
    for k in ("seconds", "cpu_seconds", "load_avg_1min", "peak_mb", "mAP", "rank1"): res[f"big_fast_{k}"] = m[k]
    res["big_mAP_without_rerank"] = m["mAP_plain"]
    # Not measured: the dense algorithm's memory grows as (Q+G)^2; scaled from the Market measurement.
    res["big_dense_peak_mb_extrapolated"] = (d["peak_mb"] - d["before_mb"]) * (n / (market["num_query"] + market["num_gallery"])) ** 2

    print(f"  {res['market_problem']}, {res['threads']} threads; peak memory = ru_maxrss of a fresh subprocess")
    print(f"  {'':24s} {'fast':>10s} {'dense':>10s} {'fast/dense':>11s}")
    print(f"  {'time (s)':24s} {f['seconds']:10.2f} {d['seconds']:10.2f} {res['market_time_ratio_fast_over_dense']:11.3f}")
    print(f"  {'CPU time (s)':24s} {f['cpu_seconds']:10.2f} {d['cpu_seconds']:10.2f} {res['market_cpu_time_ratio_fast_over_dense']:11.3f}")
    print(f"  {'load average at end':24s} {f['load_avg_1min']:10.1f} {d['load_avg_1min']:10.1f}   (other processes on the machine)")
    print(f"  {'peak RSS (MiB)':24s} {f['peak_mb']:10.0f} {d['peak_mb']:10.0f} {res['market_peak_ratio_fast_over_dense']:11.3f}")
    print(f"  {'peak - before (MiB)':24s} {f['peak_mb'] - f['before_mb']:10.0f} {d['peak_mb'] - d['before_mb']:10.0f} "
          f"{res['market_added_ratio_fast_over_dense']:11.3f}")
    print(f"  {'mAP':24s} {f['mAP']:10.4f} {d['mAP']:10.4f}   |diff| {res['market_abs_mAP_diff']:.1e}")
    print(f"  {'rank-1':24s} {f['rank1']:10.4f} {d['rank1']:10.4f}   |diff| {res['market_abs_rank1_diff']:.1e}")
    print(f"  max |distance diff| {res['market_max_abs_dist_diff']:.2e}; mAP without re-ranking {res['market_mAP_without_rerank']:.4f}")
    print(f"  {res['big_problem']}: fast {m['seconds']:.1f} s ({m['cpu_seconds']:.1f} s CPU, load {m['load_avg_1min']:.1f}), peak RSS {m['peak_mb']:.0f} MiB, mAP {m['mAP']:.4f} "
          f"(without re-ranking {m['mAP_plain']:.4f}); dense not run: ~{res['big_dense_peak_mb_extrapolated'] / 1024:.0f} GiB "
          f"extrapolated as (Q+G)^2 from the Market measurement")
    return res


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
    else:
        run(quick="--quick" in sys.argv)
