"""Training throughput (images/s) for resnet_50 at 256x128, batch 64: with and without
channels_last, and the data loader's images/s at the default num_workers against what the model
consumes.
On CUDA the same measurement runs with AMP, and a 120-epoch Market-1501 run is estimated."""

import tempfile
import time

import torch

from reid_nb.config import load_spec
from reid_nb.losses import make_loss
from reid_nb.model import build_model

MARKET_TRAIN_IMAGES = 12_936


def _spec(*extra):
    return load_spec(
        overrides=[
            "model.pretrain_choice=",
            "model.backbone=resnet_50",
            "dataset.num_classes=751",
            *extra,
        ]
    )


def train_images_per_s(spec, device, channels_last, amp=False, batch=64, steps=3, warmup=1):
    """Images/s of forward + backward + optimiser step on random normalised batches (as in
    `reid_nb.train.train_step`: forward under autocast, the losses in float32 outside it)."""
    torch.manual_seed(0)
    model = build_model(spec, spec.dataset.num_classes).to(device).train()
    loss_fn = make_loss(spec, spec.dataset.num_classes, model.feat_dim).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    x = torch.randn(batch, 3, spec.model.input_height, spec.model.input_width, device=device).to(
        memory_format=fmt
    )
    y = torch.arange(batch, device=device) // spec.dataset.num_instances
    scaler = torch.amp.GradScaler(enabled=amp)

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits, feat = model(x)
        loss, _ = loss_fn(logits.float(), feat.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def loader_images_per_s(spec, batches=8):
    "Images/s of the training loader (default num_workers, train transforms) on a synthetic set."
    from reid_nb.data import load_data, set_epoch
    from reid_nb.samplers import make_train_loader
    from reid_nb.synth import make_dataset, synth_overrides

    with tempfile.TemporaryDirectory(prefix="reid_bench_") as tmp:
        root = make_dataset(tmp, num_train_ids=64, num_test_ids=8, seed=0)
        spec = load_spec(spec.to_dict(), synth_overrides(root))
        loader = make_train_loader(spec, load_data(spec, verbose=False).train)
        set_epoch(loader, 0)
        it = iter(loader)
        next(it)  # worker start-up
        n, t = 0, time.perf_counter()
        for _ in range(batches):
            try:
                x = next(it)[0]
            except StopIteration:
                break
            n += len(x)
        seconds = time.perf_counter() - t
        del it, loader  # the workers end before their files go
    return n / seconds


def run(quick=False):
    steps = 1 if quick else 3
    spec = _spec(*(["model.input_height=128", "model.input_width=64"] if quick else []))
    cpu = torch.device("cpu")
    res = {"input": f"{spec.model.input_height}x{spec.model.input_width}", "batch": 64}
    res["cpu_contiguous_img_s"] = train_images_per_s(spec, cpu, channels_last=False, steps=steps)
    res["cpu_channels_last_img_s"] = train_images_per_s(spec, cpu, channels_last=True, steps=steps)
    res["channels_last_speedup"] = res["cpu_channels_last_img_s"] / res["cpu_contiguous_img_s"]
    res["loader_img_s"] = loader_images_per_s(spec, batches=4 if quick else 12)
    res["loader_over_model"] = res["loader_img_s"] / max(
        res["cpu_channels_last_img_s"], res["cpu_contiguous_img_s"]
    )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        res["gpu_name"] = torch.cuda.get_device_name(0)
        res["gpu_amp_channels_last_img_s"] = train_images_per_s(
            spec, gpu, True, amp=True, steps=20, warmup=5
        )
        res["gpu_fp32_img_s"] = train_images_per_s(spec, gpu, False, amp=False, steps=20, warmup=5)
        res["gpu_amp_speedup"] = res["gpu_amp_channels_last_img_s"] / res["gpu_fp32_img_s"]
        res["market_120_epochs_hours"] = (
            120 * MARKET_TRAIN_IMAGES / res["gpu_amp_channels_last_img_s"] / 3600
        )
    for k, v in res.items():
        print(f"  {k:32s} {v:.2f}" if isinstance(v, float) else f"  {k:32s} {v}")
    return res


if __name__ == "__main__":
    run()
