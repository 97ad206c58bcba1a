"""Inference throughput of the same embedding model: PyTorch eager against onnxruntime (CPU),
batch 1 and 64, resnet_50 at 256x128."""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reid_nb.config import load_spec
from reid_nb.model import build_model, save_checkpoint


def _best_rate(fn, batch, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return batch / min(times)


def run(quick=False):
    from reid_nb.export import OnnxEmbedder, export
    size = ["model.input_height=128", "model.input_width=64"] if quick else []
    work = Path(tempfile.mkdtemp(prefix="reid_bench_"))
    spec = load_spec(overrides=["model.pretrain_choice=", "model.backbone=resnet_50", "dataset.num_classes=751",
                                f"results_dir={work}", *size])
    torch.manual_seed(0)
    model = build_model(spec, 751).eval()
    ckpt = work / "model.pth"
    save_checkpoint({"model": model.state_dict(), "num_classes": 751, "spec": spec.to_dict(), "epoch": 0}, ckpt)
    onnx_path = export(load_spec(spec.to_dict(), [f"export.checkpoint={ckpt}"]))
    ort = OnnxEmbedder(onnx_path)
    res = {"input": f"{spec.model.input_height}x{spec.model.input_width}"}
    for batch in (1, 64):
        x = torch.randn(batch, 3, spec.model.input_height, spec.model.input_width)
        repeats = 2 if (quick or batch == 64) else 10
        with torch.inference_mode():
            res[f"torch_b{batch}_img_s"] = _best_rate(lambda: model(x), batch, repeats)
        xn = x.numpy()
        res[f"onnxruntime_b{batch}_img_s"] = _best_rate(lambda: ort(xn), batch, repeats)
        res[f"onnxruntime_over_torch_b{batch}"] = res[f"onnxruntime_b{batch}_img_s"] / res[f"torch_b{batch}_img_s"]
    for k, v in res.items(): print(f"  {k:32s} {v:.2f}" if isinstance(v, float) else f"  {k:32s} {v}")
    return res


if __name__ == "__main__":
    run()
