"""`make bench`: every speed and memory figure of reid_nb, measured the same way each time.

Runs the benchmark modules beside this file, writes benchmarks/results.json, the full table between
the markers in benchmarks/README.md and the headline table between the markers in the project's
README.md: the only places that quote speed, so no figure can drift from its measurement.
Figures are ratios against a reference measured in the same run.
`python benchmarks/run.py --quick` runs small sizes (a smoke test of the scripts, not figures
to quote);
`python benchmarks/run.py --render` rewrites both tables from results.json without measuring.
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
HEADLINE_START, HEADLINE_END = "<!-- bench:start -->", "<!-- bench:end -->"


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def table(results: dict) -> str:
    lines = [
        f"Measured {results['machine']['date']} on {results['machine']['cores']} cores "
        f"({results['machine']['cpu']}, torch {results['machine']['torch']}, "
        f"GPU: {results['machine']['cuda'] or 'none'}).",
        "",
        "| benchmark | figure | value |",
        "|---|---|---|",
    ]
    for name in BENCHES:
        for k, v in results.get(name, {}).items():
            lines.append(
                f"| {name.removeprefix('bench_')} | {k} | {v:.3g} |"
                if isinstance(v, float)
                else f"| {name.removeprefix('bench_')} | {k} | {v} |"
            )
    return "\n".join(lines)


def _precision_rows(train: dict) -> list[str]:
    "Training and inference, bf16 + channels_last against float32 (same run), for each model."
    nan, rows = float("nan"), []
    bf16 = "native" if train.get("cpu_bf16_native") else "emulated: no native bf16 on this CPU"
    for model, name in (("demo", "resnet_18 (demo)"), ("resnet50", "resnet_50")):
        for kind, what in (("train", "training"), ("infer", "inference")):
            best = train.get(f"{model}_{kind}_bf16_channels_last_img_s", nan)
            plain = train.get(f"{model}_{kind}_float32_img_s", nan)
            layout = train.get(f"{model}_{kind}_channels_last_img_s", nan)
            where = f"| {name} {what}, {train.get(f'{model}_input', '?')}, batch 64, CPU "
            if best == best:  # measured
                ours = f"{best:.3g} img/s bf16 + channels_last ({bf16}); {layout:.3g} channels_last"
            else:  # bf16 left out (emulated): channels_last is the best float32 can do
                best = layout
                ours = f"{layout:.3g} img/s channels_last (bf16 emulated here: not measured)"
            rows.append(f"{where}| {ours} | {plain:.3g} img/s float32 | {best / plain:.3g}x |")
    compiled = train.get("demo_train_compiled_over_eager")
    if compiled is not None:
        rows.append(
            f"| torch.compile (train.compile), demo training "
            f"| {train.get('demo_train_compiled_img_s', nan):.3g} img/s compiled "
            f"({train.get('demo_train_compile_s', nan):.0f} s to compile) | eager "
            f"| {compiled:.3g}x |"
        )
    return rows


def headline(results: dict) -> str:
    "The README's speed table: the figures that matter, each against its same-run reference."
    metrics, rerank = results.get("bench_metrics", {}), results.get("bench_rerank", {})
    train, infer = results.get("bench_train", {}), results.get("bench_infer", {})
    ours = metrics.get("ranking_metrics_s", metrics.get("evaluate_s", float("nan")))
    peak = rerank.get("market_peak_ratio_fast_over_dense", float("nan"))
    m = results["machine"]
    rows = [
        f"Measured by `make bench` on {m['date']}: {m['cores']} cores ({m['cpu']}), "
        f"torch {m['torch']}, GPU: {m['cuda'] or 'none'}.",
        "",
        "| what | reid_nb | reference, same run | ratio |",
        "|---|---|---|---|",
        f"| mAP/CMC/mINP, {metrics.get('problem', '?')} | {ours:.3g} s "
        f"| {metrics.get('reference_s', float('nan')):.3g} s (sort-then-scan) "
        f"| {metrics.get('speedup_vs_reference', float('nan')):.3g}x faster |",
        f"| evaluation (distances, then mAP/CMC/mINP), {metrics.get('msmt_problem', '?')} "
        f"| {metrics.get('msmt_seconds', float('nan')):.3g} s in a fresh process, "
        f"{metrics.get('msmt_again_seconds', float('nan')):.3g} s again in it; peak "
        f"{metrics.get('msmt_peak_gb', float('nan')):.2g} GB | | |",
        f"| re-ranking, {rerank.get('market_problem', '?')}: time "
        f"| {rerank.get('market_fast_seconds', float('nan')):.3g} s "
        f"| {rerank.get('market_dense_seconds', float('nan')):.3g} s (dense) "
        f"| {rerank.get('market_time_ratio_fast_over_dense', float('nan')):.2g} |",
        f"| re-ranking, same problem: peak memory "
        f"| {rerank.get('market_fast_peak_mb', float('nan')) / 1024:.2g} GB "
        f"| {rerank.get('market_dense_peak_mb', float('nan')) / 1024:.2g} GB | {peak:.2g} |",
        f"| re-ranking, {rerank.get('big_problem', '?')}: peak memory "
        f"| {rerank.get('big_fast_peak_mb', float('nan')) / 1024:.2g} GB "
        f"| dense: {rerank.get('big_dense_peak_mb_extrapolated', float('nan')) / 1024:.3g} GB "
        "(extrapolated) | |",
        *_precision_rows(train),
        f"| inference, resnet_50, batch 64 "
        f"| {infer.get('onnxruntime_b64_img_s', float('nan')):.3g} img/s onnxruntime "
        f"| {infer.get('torch_b64_img_s', float('nan')):.3g} img/s PyTorch eager "
        f"| {infer.get('onnxruntime_over_torch_b64', float('nan')):.3g}x |",
    ]
    return "\n".join(rows)


def _replace_between(path: Path, start: str, end: str, body: str):
    text = path.read_text()
    head, rest = text.split(start, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")


def render(results: dict):
    "Write the full table into benchmarks/README.md and the headline table into README.md."
    readme = HERE / "README.md"
    if not readme.exists():
        readme.write_text(f"# Benchmarks\n\n{START}\n{END}\n")
    _replace_between(readme, START, END, table(results))
    project_readme = HERE.parent / "README.md"
    if HEADLINE_START in project_readme.read_text():
        _replace_between(project_readme, HEADLINE_START, HEADLINE_END, headline(results))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, for checking the scripts run"
    )
    ap.add_argument("--only", nargs="*", choices=BENCHES, help="run only these")
    ap.add_argument("--render", action="store_true", help="rewrite the tables from results.json")
    args = ap.parse_args(argv)
    if args.render:
        render(json.loads((HERE / "results.json").read_text()))
        return None
    results = {"machine": machine(), "quick": args.quick}
    for name in args.only or BENCHES:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        results[name] = importlib.import_module(name).run(quick=args.quick)
        print(f"   ({time.perf_counter() - t:.0f} s)", flush=True)
    if args.quick:
        return results
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    render(results)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
