"""Inference throughput of the same embedding model: PyTorch eager against onnxruntime (CPU),
batch 1 and 64, resnet_50 at 256x128."""
import tempfile

import torch

from reid_nb.config import load_spec

from bench_metrics import _best_time


def _best_rate(fn, batch, repeats):
    fn()  # warm-up
    return batch / _best_time(fn, repeats)[0]


def run(quick=False):
    from reid_nb.demo import random_init_checkpoint
    from reid_nb.export import OnnxEmbedder, export
    from reid_nb.model import model_from_checkpoint
    size = ["model.input_height=128", "model.input_width=64"] if quick else []
    with tempfile.TemporaryDirectory(prefix="reid_bench_") as work:
        spec = load_spec(overrides=["model.pretrain_choice=", "model.backbone=resnet_50", "dataset.num_classes=751",
                                    f"results_dir={work}", "train.seed=0", *size])
        ckpt = random_init_checkpoint(spec, f"{work}/model.pth")
        model = model_from_checkpoint(ckpt, spec)[0]
        ort = OnnxEmbedder(export(load_spec(spec.to_dict(), [f"export.checkpoint={ckpt}"])))
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
