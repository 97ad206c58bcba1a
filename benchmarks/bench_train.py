"""Training and inference throughput (images/s) side by side: float32, channels_last, bfloat16
autocast, and both, measured in alternating rounds of one run so that the ratios hold on a busy
machine; `torch.compile` against eager for the best of them; and the data loader's images/s
against what the model consumes. Two models: the demo's (resnet_18 at 96x48, batch 64, what
`make demo` spends its time on) and resnet_50 at 256x128, batch 64 (Market-1501's).
On CUDA the same grid runs on the GPU, and a 120-epoch Market-1501 run is estimated.

On a CPU without native bfloat16 (no AVX-512 BF16 or AMX), bfloat16 is emulated and slower:
`train.amp: auto` then stays in float32, and the table says which case was measured."""

import os
import tempfile
import time

import torch

from reid_nb.config import bf16_native, load_spec
from reid_nb.losses import make_loss
from reid_nb.model import build_model

MARKET_TRAIN_IMAGES = 12_936
VARIANTS = {  # name: (channels_last, autocast dtype)
    "float32": (False, None),
    "channels_last": (True, None),
    "bf16": (False, torch.bfloat16),
    "bf16_channels_last": (True, torch.bfloat16),
}
MODELS = {
    "demo": ["model.backbone=resnet_18", "model.input_height=96", "model.input_width=48"],
    "resnet50": ["model.backbone=resnet_50"],
}


def _spec(*extra):
    return load_spec(
        overrides=[
            "model.pretrain_choice=",
            "dataset.num_classes=751",
            "model.feat_dim=256",
            *extra,
        ]
    )


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setup(spec, device, channels_last, compile_model=False):
    torch.manual_seed(0)
    model = build_model(spec, spec.dataset.num_classes, verbose=False).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    if compile_model:
        model.compile()
    size = (spec.model.input_height, spec.model.input_width)
    return model, layout, size


def train_step_fn(spec, device, channels_last, amp_dtype, batch=64, compile_model=False):
    """One training step as `reid_nb.train.train_step` takes it (forward under autocast, the
    losses in float32 outside it, Adam), on a fixed random batch."""
    model, layout, size = _setup(spec, device, channels_last, compile_model)
    model.train()
    loss_fn = make_loss(spec, spec.dataset.num_classes, model.feat_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=layout)
    y = torch.arange(batch, device=device) // spec.dataset.num_instances
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, feat = model(x)
        loss, _ = loss_fn(logits.float(), feat.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def infer_step_fn(spec, device, channels_last, amp_dtype, batch=64, compile_model=False):
    "One batch of evaluation embeddings, as `reid_nb.model.iter_embeddings` computes them."
    model, layout, size = _setup(spec, device, channels_last, compile_model)
    model.eval()
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=layout)

    def step():
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
        ):
            return model(x).float()

    return step


def _rate(step, device, batch, steps):
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def variant_grid(spec, device, kind, rounds=2, steps=2, batch=64, bf16=True):
    """Images/s of each variant of `VARIANTS` for `kind` (train | infer), the best of `rounds`
    alternating rounds (each variant measured once per round, in turn), and ratios to float32.
    `bf16=False` leaves out the bfloat16 variants."""
    make = train_step_fn if kind == "train" else infer_step_fn
    if device.type == "cuda":
        variants = dict(VARIANTS, fp16_channels_last=(True, torch.float16))
    else:
        variants = VARIANTS
    if not bf16:
        variants = {name: how for name, how in variants.items() if how[1] is None}
    steps_of = {name: make(spec, device, *how, batch=batch) for name, how in variants.items()}
    for step in steps_of.values():
        step()  # warm-up: oneDNN / cuDNN pick their kernels
    best = {name: 0.0 for name in variants}
    for _ in range(rounds):
        for name, step in steps_of.items():
            best[name] = max(best[name], _rate(step, device, batch, steps))
    res = {f"{kind}_{name}_img_s": rate for name, rate in best.items()}
    for name in variants:
        res[f"{kind}_{name}_over_float32"] = best[name] / best["float32"]
    return res


def compile_ratio(spec, device, kind, channels_last, amp_dtype, steps=2, batch=64):
    """`torch.compile` (`train.compile`) against eager for one variant: compile time, images/s
    and their ratio; `compile_error` when the machine cannot compile (no C++ compiler...)."""
    make = train_step_fn if kind == "train" else infer_step_fn
    eager = make(spec, device, channels_last, amp_dtype, batch=batch)
    try:
        compiled = make(spec, device, channels_last, amp_dtype, batch=batch, compile_model=True)
        start = time.perf_counter()
        compiled()
        compiled()  # the first calls compile (forward and backward)
        compile_s = time.perf_counter() - start
    except Exception as error:  # inductor needs a compiler; the benchmark reports, not fails
        return {f"{kind}_compile_error": str(error).splitlines()[0][:120]}
    eager()
    rates = {"eager": 0.0, "compiled": 0.0}
    for _ in range(2):
        rates["eager"] = max(rates["eager"], _rate(eager, device, batch, steps))
        rates["compiled"] = max(rates["compiled"], _rate(compiled, device, batch, steps))
    return {
        f"{kind}_compile_s": compile_s,
        f"{kind}_compiled_img_s": rates["compiled"],
        f"{kind}_compiled_over_eager": rates["compiled"] / rates["eager"],
    }


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


def _model_grid(name, overrides, device, quick, bf16=True):
    spec = _spec(*overrides)
    steps = 1 if quick else 2
    res = {f"{name}_input": f"{spec.model.input_height}x{spec.model.input_width}"}
    for kind in ("train", "infer"):
        grid = variant_grid(spec, device, kind, rounds=1 if quick else 2, steps=steps, bf16=bf16)
        res.update({f"{name}_{key}": value for key, value in grid.items()})
    return res


def run(quick=False):
    cpu = torch.device("cpu")
    res = {"batch": 64, "cpu_bf16_native": bf16_native(cpu), "threads": torch.get_num_threads()}
    models = {"demo": ["model.backbone=resnet_18", "model.input_height=64", "model.input_width=32"]}
    for name, overrides in (models if quick else MODELS).items():
        # Emulated bfloat16 is measured on the demo's small model only: ResNet-50 at 256x128
        # would take most of an hour to show what the small model shows in a minute.
        bf16 = bf16_native(cpu) or name == "demo"
        res.update(_model_grid(name, overrides, cpu, quick, bf16=bf16))
    demo = _spec(*(models if quick else MODELS)["demo"])
    best_cpu = (True, torch.bfloat16) if bf16_native(cpu) else (True, None)
    for kind in () if quick else ("train", "infer"):  # compiling takes minutes on 2 cores
        compiled = compile_ratio(demo, cpu, kind, *best_cpu, steps=2)
        res.update({f"demo_{key}": value for key, value in compiled.items()})
    res["loader_img_s"] = loader_images_per_s(demo, batches=4 if quick else 12)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        res["gpu_name"] = torch.cuda.get_device_name(0)
        res.update(_model_grid("gpu_resnet50", MODELS["resnet50"], gpu, quick))
        rate = res["gpu_resnet50_train_bf16_channels_last_img_s"]
        res["market_120_epochs_minutes"] = 120 * MARKET_TRAIN_IMAGES / rate / 60
    res["load_avg_1min"] = os.getloadavg()[0]
    for k, v in res.items():
        print(f"  {k:44s} {v:.3f}" if isinstance(v, float) else f"  {k:44s} {v}")
    return res


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
