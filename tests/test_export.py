"""What nbs/08_export.ipynb cannot check itself: that the package imports without the optional
onnx and onnxruntime (a fresh interpreter), and a full-size export (slow)."""

import subprocess
import sys

import pytest

from reid_nb.checkpoint import model_from_checkpoint, random_init_checkpoint
from reid_nb.config import load_spec
from reid_nb.export import MAX_ABS_DIFF, check_onnx, sample_batches, to_onnx

WITHOUT_ONNX = """
import sys
sys.modules["onnx"] = None  # an import of onnx now fails, as if it were not installed
sys.modules["onnxruntime"] = None
import reid_nb.evaluate
import reid_nb.export
print(reid_nb.export.run_export.__name__, reid_nb.evaluate.run_evaluation.__name__)
"""


def test_the_package_imports_without_onnx():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_ONNX], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["run_export", "run_evaluation"]


@pytest.mark.slow
def test_a_full_size_resnet50_passes_the_scaled_limit(tmp_path):
    "An untrained ResNet-50 at 256x128 has embedding values far above 1; its export is accepted."
    spec = load_spec(
        overrides=[
            "model.pretrain_choice=",
            "model.backbone=resnet_50",
            "dataset.num_classes=751",
            f"results_dir={tmp_path}",
            "train.seed=0",
        ]
    )
    ckpt = random_init_checkpoint(spec, tmp_path / "model.pth")
    model, _ = model_from_checkpoint(ckpt, spec)
    report = check_onnx(model, to_onnx(model, (3, 256, 128)), sample_batches(spec)[0])
    assert report["max_abs_value"] > 10
    assert report["limit"] == pytest.approx(MAX_ABS_DIFF * report["max_abs_value"])


@pytest.mark.slow
def test_the_swin_transformer_matches_onnxruntime_within_1e_4(tmp_path):
    "TAO's Transformer at 256x128 (fcneck, margin head, semantic weight): the same contract."
    import onnx
    import torch

    from reid_nb.model import build_model

    spec = load_spec(
        overrides=[
            "model.pretrain_choice=",
            "model.backbone=swin_tiny_patch4_window7_224",
            "model.reduce_feat_dim=true",
            "model.id_loss_type=arcface",
            "model.semantic_weight=0.5",
            f"results_dir={tmp_path}",
        ]
    )
    torch.manual_seed(0)
    model = build_model(spec, 10, verbose=False)
    model.train()(torch.randn(4, 3, 256, 128), torch.arange(4))  # BNNeck statistics off 0/1
    proto = to_onnx(model.eval(), (3, 256, 128))
    graph = onnx.load_from_string(proto).graph
    assert [graph.input[0].name, graph.output[0].name] == ["input", "fc_pred"]
    batches = [torch.randn(3, 3, 256, 128), torch.randn(1, 3, 256, 128)]
    report = check_onnx(model, proto, batches, atol=1e-4)
    assert report["max_abs_diff"] <= 1e-4, report
