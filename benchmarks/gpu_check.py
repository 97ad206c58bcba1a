"""The GPU check: the kit's CUDA path measured on one NVIDIA GPU, with the machine's own python3
and torch, no network and no Jupyter (`benchmarks/gpu_check.sh` runs it).

Steps: a Market-1501-sized synthetic set (12,936 training images, 751 ids); ResNet-50 at 256x128
trained for a few epochs with `train.amp` (bf16 where the GPU has it) and channels-last, with
`dataset.num_workers` loader processes: images/s, peak GPU memory and the projected time of
TAO's 120-epoch Market schedule; inference images/s; evaluation (distances + ranking metrics)
and k-reciprocal re-ranking of Market-sized and MSMT17-sized features, time and peak memory;
an ONNX export of the model on the GPU and onnxruntime parity. One JSON file holds every figure.

`--dry-run` runs the same steps at a tiny size on the CPU, to check the script before a GPU
machine is at hand."""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

MARKET = dict(num_query=3368, num_gallery=15913, num_ids=751)
MSMT = dict(num_query=11659, num_gallery=82161, num_ids=3060)
TINY = dict(num_query=60, num_gallery=300, num_ids=30)
FULL_SET = dict(num_train_ids=751, images_per_id=17, num_test_ids=50, num_cameras=6)
TINY_SET = dict(num_train_ids=12, images_per_id=8, num_test_ids=6, num_cameras=3)
TAO_MARKET_EPOCHS = 120


def _log(message):
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine(device) -> dict:
    import torch

    from reid_nb.config import autocast_dtype, bf16_native, precision_name

    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        gpus=torch.cuda.device_count(),
        cpu_cores=os.cpu_count(),
        device=str(device),
        bf16_native=bf16_native(device),
        amp_auto=precision_name(autocast_dtype("auto", device)),
    )


def make_set(root: Path, dry_run: bool) -> Path:
    "The synthetic training set: Market-sized (12,767 + query/gallery), or tiny."
    from reid_nb.synth import make_dataset

    sizes = TINY_SET if dry_run else FULL_SET
    start = time.perf_counter()
    data = make_dataset(root, seed=0, **sizes)
    num_train = len(list((Path(data) / "bounding_box_train").glob("*.jpg")))
    _log(f"synthetic set: {num_train} training images in {time.perf_counter() - start:.0f} s")
    return data


def train_overrides(data: Path, out: Path, dry_run: bool, epochs: int, workers: int) -> list:
    from reid_nb.synth import synth_overrides

    size = ["model.input_height=64", "model.input_width=32"] if dry_run else []
    backbone = "resnet_18" if dry_run else "resnet_50"
    return [
        *synth_overrides(data),
        f"results_dir={out}",
        f"model.backbone={backbone}",
        "model.pretrain_choice=",  # no network: random initialisation (speed is the same)
        *size,
        "dataset.batch_size=64" if not dry_run else "dataset.batch_size=16",
        f"dataset.num_workers={workers}",
        "dataset.val_batch_size=256",
        f"train.num_epochs={epochs}",
        f"train.validation_interval={epochs}",
        f"train.checkpoint_interval={epochs}",
        "train.amp=auto",
    ]


def train_check(data: Path, work: Path, dry_run: bool, epochs: int, workers: int) -> dict:
    "Train; images/s of the last epoch (the first one warms cuDNN up), peak memory, projection."
    import torch

    from reid_nb.config import load_spec
    from reid_nb.train import run_training

    spec = load_spec(overrides=train_overrides(data, work / "train", dry_run, epochs, workers))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    history = run_training(spec, verbose=True)["history"]
    seconds = time.perf_counter() - start
    rate = history[-1]["images_per_s"]
    num_images = 12_936 if not dry_run else sum(1 for _ in Path(data).glob("bounding_box_train/*"))
    res = dict(
        backbone=spec.model.backbone,
        input=f"{spec.model.input_height}x{spec.model.input_width}",
        batch=spec.dataset.batch_size,
        num_workers=workers,
        amp=spec.train.amp,
        epochs=epochs,
        train_seconds=seconds,
        epoch_images_per_s=[row["images_per_s"] for row in history],
        images_per_s=rate,
        final_mAP=history[-1].get("mAP"),
        projected_120_epochs_minutes=TAO_MARKET_EPOCHS * num_images / rate / 60,
    )
    if torch.cuda.is_available():
        res["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    res["checkpoint"] = str(Path(spec.train.results_dir) / "reid_model_latest.pth")
    return res


def inference_check(checkpoint: str, device, dry_run: bool) -> dict:
    "Embeddings/s of the trained model, batch 256, in float32 and in `train.amp: auto`."
    import torch

    from reid_nb.checkpoint import model_from_checkpoint
    from reid_nb.config import autocast_dtype
    from reid_nb.model import iter_embeddings

    model = model_from_checkpoint(checkpoint, device=device)[0]
    size = (64, 32) if dry_run else (256, 128)
    batch, batches = (16, 2) if dry_run else (256, 20)
    images = torch.randn(batch, 3, *size)
    loader = [(images, torch.zeros(batch), torch.zeros(batch), None)] * batches
    res = {}
    for name, dtype in (("float32", None), ("auto", autocast_dtype("auto", device))):
        list(iter_embeddings(model, loader[:2], device, amp_dtype=dtype))  # warm-up
        start = time.perf_counter()
        list(iter_embeddings(model, loader, device, amp_dtype=dtype))
        res[f"inference_{name}_img_s"] = batch * batches / (time.perf_counter() - start)
    return res


def _child(args: dict) -> dict:
    "In a fresh process: time evaluation or re-ranking of one problem; time and peak memory."
    import torch
    from bench_metrics import market_like

    from reid_nb.metrics import compute_distmat, ranking_metrics
    from reid_nb.rerank import k_reciprocal

    qf, gf, *labels = market_like(**args["size"])
    if torch.cuda.is_available():
        qf, gf = qf.cuda(), gf.cuda()
    start = time.perf_counter()
    if args["what"] == "evaluate":
        scores = ranking_metrics(compute_distmat(qf, gf), *labels)
    else:
        scores = ranking_metrics(k_reciprocal(qf, gf), *labels)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # the kit's distances, metrics and re-ranking compute on the CPU (features come back from
    # the GPU): the figures measure the machine's CPU cores and memory
    return dict(seconds=seconds, peak_rss_gb=peak_gb, mAP=float(scores["mAP"]), device="cpu")


def distances_check(dry_run: bool) -> dict:
    "Evaluation and re-ranking at Market and MSMT17 size (tiny in a dry run), each in a process."
    sizes = {"tiny": TINY} if dry_run else {"market": MARKET, "msmt17": MSMT}
    res = {}
    for name, size in sizes.items():
        for what in ("evaluate", "rerank"):
            args = json.dumps(dict(size=size, what=what))
            command = [sys.executable, str(Path(__file__).resolve()), "--child", args]
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                res[f"{name}_{what}_error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            res.update({f"{name}_{what}_{key}": value for key, value in figures.items()})
            _log(f"{what} {name} ({size['num_query']} x {size['num_gallery']}): {figures}")
    return res


def export_check(checkpoint: str, device, work: Path) -> dict:
    "Export the model while it sits on `device`, then the kit's onnxruntime parity check."
    import torch

    from reid_nb.checkpoint import model_from_checkpoint
    from reid_nb.export import check_onnx, to_onnx

    model, ckpt = model_from_checkpoint(checkpoint, device=device)
    used = ckpt["spec"]["model"]
    shape = (3, used["input_height"], used["input_width"])
    start = time.perf_counter()
    data = to_onnx(model, shape)
    export_s = time.perf_counter() - start
    (work / "model.onnx").write_bytes(data)
    batches = [torch.randn(n, *shape) for n in (1, 8)]
    report = check_onnx(model, data, batches)
    still_there = next(model.parameters()).device == torch.device(device)
    return dict(
        export_seconds=export_s,
        onnx_max_abs_diff=report["max_abs_diff"],
        onnx_min_cosine=report["min_cosine"],
        model_left_on_device=bool(still_there),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, on the CPU")
    parser.add_argument("--out", default=str(HERE / "gpu_check.json"), help="the JSON written")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs to measure")
    parser.add_argument("--workers", type=int, default=8, help="loader processes (>= 8)")
    parser.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; use --dry-run on a CPU machine", file=sys.stderr)
        return 1
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    epochs, workers = (1, 2) if args.dry_run else (args.epochs, args.workers)
    work = Path(args.work or tempfile.mkdtemp(prefix="reid_gpu_check_"))
    result = dict(dry_run=args.dry_run, machine=machine(device), steps={})
    start = time.perf_counter()
    steps = [
        (
            "train",
            lambda: train_check(
                make_set(work / "data", args.dry_run), work, args.dry_run, epochs, workers
            ),
        ),  # fmt: skip
        ("inference", lambda: inference_check(result["train"]["checkpoint"], device, args.dry_run)),
        ("distances", lambda: distances_check(args.dry_run)),
        ("export", lambda: export_check(result["train"]["checkpoint"], device, work)),
    ]
    failed = False
    for name, step in steps:
        _log(f"step {name}")
        step_start = time.perf_counter()
        try:
            result[name] = step()
        except Exception as error:  # the JSON says which step failed and why; the rest still runs
            result[name] = dict(error=f"{type(error).__name__}: {str(error).splitlines()[:1]}")
            failed = True
        result["steps"][name] = time.perf_counter() - step_start
        _log(f"{name}: {json.dumps(result[name], default=str)}")
    result["total_seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    _log(f"wrote {args.out} ({result['total_seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
