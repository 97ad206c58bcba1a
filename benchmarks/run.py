"""`make bench`: every speed and memory figure of reid_nb, measured the same way each time.

Runs the benchmark modules beside this file, writes benchmarks/results.json and the table between
the markers in benchmarks/README.md. Figures are ratios against a reference measured in the same run.
`python benchmarks/run.py --quick` runs small sizes (a smoke test of the scripts, not figures to quote).
"""
import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
BENCHES = ["bench_metrics", "bench_rerank", "bench_train", "bench_infer"]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def machine() -> dict:
    import torch
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def table(results: dict) -> str:
    lines = [f"Measured {results['machine']['date']} on {results['machine']['cores']} cores "
             f"({results['machine']['cpu']}, torch {results['machine']['torch']}, "
             f"GPU: {results['machine']['cuda'] or 'none'}).", "", "| benchmark | figure | value |", "|---|---|---|"]
    for name in BENCHES:
        for k, v in results.get(name, {}).items():
            lines.append(f"| {name.removeprefix('bench_')} | {k} | {v:.3g} |" if isinstance(v, float)
                         else f"| {name.removeprefix('bench_')} | {k} | {v} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for checking the scripts run")
    ap.add_argument("--only", nargs="*", choices=BENCHES, help="run only these")
    args = ap.parse_args(argv)
    results = {"machine": machine(), "quick": args.quick}
    for name in args.only or BENCHES:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        results[name] = importlib.import_module(name).run(quick=args.quick)
        print(f"   ({time.perf_counter() - t:.0f} s)", flush=True)
    if args.quick: return results
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    readme.write_text(f"{head}{START}\n{table(results)}\n{END}{rest.split(END, 1)[1]}")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
