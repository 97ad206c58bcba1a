"""Inference throughput of the same embedding model: PyTorch eager against onnxruntime (CPU),
batch 1 and 64, resnet_50 at 256x128; and the time each ONNX exporter takes on it."""

import tempfile
import time

import torch
from bench_metrics import _best_time

from reid_nb.config import load_spec


def _best_rate(fn, batch, repeats):
    fn()  # warm-up
    return batch / _best_time(fn, repeats)[0]


def _export_seconds(model, input_shape, exporter):
    "Seconds `reid_nb.export.to_onnx` takes to export `model` with `exporter` (one run)."
    from reid_nb.export import to_onnx

    start = time.perf_counter()
    to_onnx(model, input_shape, exporter=exporter)
    return time.perf_counter() - start


def _export_times(model, spec):
    "The TorchScript tracer against the torch.export based exporter, on the same model."
    input_shape = (3, spec.model.input_height, spec.model.input_width)
    tracer = _export_seconds(model, input_shape, "torchscript")
    dynamo = _export_seconds(model, input_shape, "dynamo")
    return {
        "export_torchscript_s": tracer,
        "export_dynamo_s": dynamo,
        "export_dynamo_over_torchscript": dynamo / tracer,
    }


def _throughput(model, embedder, spec, quick):
    "Images per second of PyTorch and of onnxruntime, batch 1 and 64, and their ratio."
    res = {}
    for batch in (1, 64):
        x = torch.randn(batch, 3, spec.model.input_height, spec.model.input_width)
        repeats = 2 if (quick or batch == 64) else 10
        with torch.inference_mode():
            res[f"torch_b{batch}_img_s"] = _best_rate(lambda x=x: model(x), batch, repeats)
        x_numpy = x.numpy()
        onnx_rate = _best_rate(lambda x_numpy=x_numpy: embedder(x_numpy), batch, repeats)
        res[f"onnxruntime_b{batch}_img_s"] = onnx_rate
        res[f"onnxruntime_over_torch_b{batch}"] = onnx_rate / res[f"torch_b{batch}_img_s"]
    return res


def run(quick=False):
    from reid_nb.checkpoint import model_from_checkpoint, random_init_checkpoint
    from reid_nb.export import OnnxEmbedder, run_export

    size = ["model.input_height=128", "model.input_width=64"] if quick else []
    with tempfile.TemporaryDirectory(prefix="reid_bench_") as work:
        overrides = [
            "model.pretrain_choice=",
            "model.backbone=resnet_50",
            "dataset.num_classes=751",
            f"results_dir={work}",
            "train.seed=0",
            *size,
        ]
        spec = load_spec(overrides=overrides)
        ckpt = random_init_checkpoint(spec, f"{work}/model.pth")
        model = model_from_checkpoint(ckpt, spec)[0]
        onnx_file = run_export(load_spec(spec.to_dict(), [f"export.checkpoint={ckpt}"]))
        res = {"input": f"{spec.model.input_height}x{spec.model.input_width}"}
        res.update(_throughput(model, OnnxEmbedder(onnx_file), spec, quick))
        res.update(_export_times(model, spec))
    for key, value in res.items():
        print(f"  {key:32s} {value:.2f}" if isinstance(value, float) else f"  {key:32s} {value}")
    return res


if __name__ == "__main__":
    run()
