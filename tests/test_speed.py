"""Mixed precision on the CPU (tiny, emulated bfloat16 where the CPU has none): the choice
`train.amp` makes, a bfloat16 training step with float32 losses and weights, float32 embeddings
under autocast; and the GPU check's dry run on the CPU (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reid_nb import config
from reid_nb.config import SpecError, autocast_dtype
from reid_nb.model import extract_features
from reid_nb.train import make_train_state, train_step

ROOT = Path(__file__).parent.parent


def test_amp_auto_follows_what_the_hardware_does(monkeypatch):
    monkeypatch.setattr(config, "bf16_native", lambda device: True)
    assert autocast_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(config, "bf16_native", lambda device: False)
    assert autocast_dtype("auto", "cpu") is None  # nothing changes without native bfloat16
    assert autocast_dtype("auto", "cuda") is torch.float16  # an older GPU: float16 + scaler
    assert autocast_dtype("off", "cuda") is None
    with pytest.raises(SpecError, match="train.amp: fp16 needs a CUDA device"):
        autocast_dtype("fp16", "cpu")


def test_a_bf16_step_keeps_float32_weights_and_losses(tiny_spec):
    spec = tiny_spec("train.amp=bf16", "model.with_center_loss=true")
    state = make_train_state(spec, num_classes=4, verbose=False)
    assert state.amp_dtype is torch.bfloat16 and not state.scaler.is_enabled()
    assert state.net.backbone.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    before = state.net.classifier.weight.detach().clone()
    images, pids = torch.randn(8, 3, 64, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    state.model.train()
    losses, _ = train_step(state, images, pids)
    assert all(value.dtype == torch.float32 for value in losses.values()), losses
    assert torch.isfinite(losses["loss"])
    assert state.net.classifier.weight.dtype == torch.float32
    assert not torch.equal(before, state.net.classifier.weight)
    batches = [(images, pids, torch.zeros(8), torch.arange(8))]
    feats = extract_features(state.net, batches, amp_dtype=torch.bfloat16)[0]
    plain = extract_features(state.net, batches)[0]
    assert feats.dtype == torch.float32 and feats.shape == plain.shape
    assert torch.nn.functional.cosine_similarity(feats, plain).min() > 0.99


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2")
    command = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)]
    command += ["--work", str(tmp_path / "work")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["machine"]["device"] == "cpu"
    assert result["train"]["images_per_s"] > 0 and result["train"]["epochs"] == 1
    assert result["inference"]["inference_float32_img_s"] > 0
    assert result["distances"]["tiny_evaluate_seconds"] > 0
    assert result["distances"]["tiny_rerank_peak_rss_gb"] > 0
    assert result["export"]["onnx_max_abs_diff"] < 1e-3
    assert result["export"]["model_left_on_device"] is True
