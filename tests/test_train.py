"""Training end to end on the synthetic set (CPU, tiny), what the notebook cannot check: the
checkpoint read back by another chapter, exact resume after SIGKILL, a corrupt latest checkpoint
in a real run, two gloo processes, and the command line's one-line errors."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from reid_nb.config import save_spec
from reid_nb.train import LATEST, checkpoint_name, read_metrics, run_training

ROOT = Path(__file__).parent.parent


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), k


def _env(**extra):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, synth_root):
    "One uninterrupted 2-epoch run (tiny_spec settings), shared by the tests that compare with it."
    from reid_nb.config import load_spec

    tmp = tmp_path_factory.mktemp("two_epochs")
    base = tiny_overrides(tmp / "results", synth_root, epochs=2)
    spec = load_spec(overrides=base)
    return spec, base, run_training(spec, verbose=False)


def test_checkpoints_hold_the_run_and_load_as_a_model(two_epochs):
    spec, _, res = two_epochs
    out = Path(spec.train.results_dir)
    assert res["results_dir"] == out and res["checkpoint"] == out / LATEST
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    ck = torch.load(out / "model_epoch_000.pth", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and ck["num_classes"] == spec.dataset.num_classes
    assert ck["spec"] == spec.to_dict()
    assert {"optimizer", "scheduler", "rng", "history"} <= set(ck)
    latest = torch.load(out / LATEST, map_location="cpu", weights_only=True)
    _assert_same_weights(latest["model"], _weights(out / "model_epoch_001.pth"), atol=0)
    from reid_nb.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(out / LATEST)
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, 64)


def test_sigkill_then_resume_matches_uninterrupted(two_epochs, tmp_path):
    spec, base, ref = two_epochs
    out = tmp_path / "killed"
    spec_file = tmp_path / "spec.yaml"
    from reid_nb.config import load_spec

    save_spec(load_spec(overrides=[*base, f"train.results_dir={out}"]), spec_file)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reid_nb.train", str(spec_file), "--quiet"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 240
        while not (out / checkpoint_name(0)).exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        time.sleep(0.1)  # inside epoch 2 (of 2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / checkpoint_name(1)).exists(), "the run finished before it could be killed"
    assert torch.load(out / LATEST, weights_only=True)["epoch"] == 1
    res = run_training(load_spec(spec_file), verbose=False)  # picks up reid_model_latest.pth
    assert [r["epoch"] for r in res["history"]] == [1, 2]
    _assert_same_weights(_weights(out / LATEST), _weights(Path(spec.train.results_dir) / LATEST))
    a, b = (
        torch.load(p / LATEST, weights_only=True)["optimizer"]["state"]
        for p in (out, Path(spec.train.results_dir))
    )
    assert torch.allclose(a[0]["exp_avg"], b[0]["exp_avg"], atol=1e-6)


def test_corrupt_latest_falls_back_to_newest_epoch_checkpoint(two_epochs, tmp_path, tiny_spec):
    spec, base, _ = two_epochs
    out = tmp_path / "results" / "train"
    shutil.copytree(spec.train.results_dir, out)
    (out / LATEST).write_bytes((out / LATEST).read_bytes()[:1000])  # truncated
    (out / checkpoint_name(1)).write_bytes(b"not a checkpoint")  # the newest epoch one is bad too
    spec3 = tiny_spec("train.num_epochs=2", f"train.results_dir={out}")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = run_training(spec3, verbose=False)
    text = " ".join(str(x.message) for x in w)
    assert f"{out / LATEST} is unreadable" in text and checkpoint_name(1) in text
    assert [r["epoch"] for r in res["history"]] == [
        1,
        2,
    ]  # epoch 2 trained again from model_epoch_000
    ck = torch.load(out / LATEST, weights_only=True)
    assert ck["epoch"] == 2
    _assert_same_weights(ck["model"], _weights(Path(spec.train.results_dir) / LATEST))


def test_two_gloo_processes(tiny_spec, tmp_path):
    spec = tiny_spec(
        "train.num_gpus=2",
        "train.dist_backend=gloo",  # CPU processes, also on a GPU machine
        "dataset.batch_size=8",
        "train.validation_interval=1",
    )
    log = tmp_path / "samples"
    os.environ["REID_NB_SAMPLE_LOG"] = str(log)
    try:
        res = run_training(spec, verbose=False)
    finally:
        del os.environ["REID_NB_SAMPLE_LOG"]
    out = Path(spec.train.results_dir)
    assert sorted(p.name for p in out.glob("*.pth")) == [checkpoint_name(0), LATEST]
    assert [r["epoch"] for r in res["history"]] == [1] and "mAP" in res["history"][0]

    def seen_by(rank):
        "The dataset indices rank `rank` trained on, batch after batch (one log line per batch)."
        lines = (log / f"samples_rank{rank}.jsonl").read_text().splitlines()
        batches = [json.loads(line) for line in lines]
        assert {(b["epoch"], b["rank"]) for b in batches} == {(0, rank)}
        return [index for batch in batches for index in batch["indices"]]

    seen0, seen1 = seen_by(0), seen_by(1)
    assert len(seen0) == len(seen1) > 0
    # the ranks split one epoch plan between them: batch b to rank b % 2
    from reid_nb.data import load_data
    from reid_nb.samplers import make_sampler

    pids = [r.pid for r in load_data(spec, verbose=False).train]
    s0 = make_sampler(spec, pids, rank=0, world_size=2)
    full = s0.plan(0)
    assert seen0 == [i for b in full[0::2] for i in b] and seen1 == [
        i for b in full[1::2] for i in b
    ]
    flat = [i for b in full for i in b]
    assert (
        len(set(flat)) == len(flat) == len(pids)
    )  # 8 images per id, K = 4: the plan draws every image once
    assert not set(seen0) & set(seen1)  # so the ranks' samples are disjoint
    ck = torch.load(out / LATEST, weights_only=True)
    assert not any(k.startswith("module.") for k in ck["model"]) and len(ck["rng"]) == 2


def test_main_reports_spec_errors_in_one_line(tiny_spec, tmp_path, capsys):
    from reid_nb.train import main

    spec_file = save_spec(tiny_spec(), tmp_path / "spec.yaml")
    assert main([str(spec_file), "dataset.batch_size=64", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: dataset.batch_size: 64 / dataset.num_instances 4"
    )


def test_one_training_per_folder_and_a_dead_holders_lock_taken_over(two_epochs, tmp_path):
    """Issue 19: a second run on a folder in use exits at once naming the first; after `kill -9`
    of the first, the next run takes its lock over and resumes."""
    from reid_nb.config import load_spec
    from reid_nb.runs import LOCK_FILE

    _, base, _ = two_epochs
    out = tmp_path / "locked"
    spec_file = save_spec(
        load_spec(overrides=[*base, f"train.results_dir={out}", "train.num_epochs=50"]),
        tmp_path / "spec.yaml",
    )
    train = [sys.executable, "-m", "reid_nb", "train", "-e", str(spec_file), "--no-notebook", "-q"]
    first = subprocess.Popen(train, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (out / LATEST).exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        second = subprocess.run(
            train, env=_env(PYTHONWARNINGS="ignore"), capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"error: {out}: in use by" in lines[0], second.stderr
        assert f"(pid {first.pid} on host" in lines[0]
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    assert (out / LOCK_FILE).exists()  # left behind by the killed run
    done = torch.load(out / LATEST, weights_only=True)["epoch"]
    third = subprocess.run(
        [*train, f"train.num_epochs={done + 1}"], env=_env(), capture_output=True, text=True
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of pid {first.pid}" in third.stdout
    assert [row["epoch"] for row in read_metrics(out / "metrics.jsonl")] == list(range(1, done + 2))
    assert not (out / LOCK_FILE).exists()
    assert json.loads((out / "run.json").read_text())["ended"] is not None
    other = subprocess.run(
        [*train, "model.feat_dim=16"],
        env=_env(PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
    )
    assert other.returncode == 1
    assert other.stderr.strip().splitlines() == [
        f"reid_nb train: error: {out}: holds a training run of another spec "
        "(model.feat_dim differ); choose another train.results_dir, "
        "or resume with the spec saved there"
    ]


def test_sigterm_stops_cleanly_then_resume_matches_uninterrupted(two_epochs, tmp_path):
    """Issue 19: SIGTERM mid-epoch ends the run with one line, the lock released and the last
    complete checkpoint kept; the same command then ends with the weights of an uninterrupted
    run."""
    from reid_nb.config import load_spec
    from reid_nb.runs import LOCK_FILE

    spec, base, _ = two_epochs
    out = tmp_path / "stopped"
    spec_file = save_spec(
        load_spec(overrides=[*base, f"train.results_dir={out}"]), tmp_path / "spec.yaml"
    )
    train = [sys.executable, "-m", "reid_nb", "train", "-e", str(spec_file), "--no-notebook", "-q"]
    proc = subprocess.Popen(
        train,
        env=_env(PYTHONWARNINGS="ignore"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not (out / checkpoint_name(0)).exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        time.sleep(0.1)  # inside epoch 2 (of 2)
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 1, stderr
    assert not (out / checkpoint_name(1)).exists(), "the run finished before it could be stopped"
    assert stderr.strip().splitlines() == [
        "reid_nb train: error: training stopped by SIGTERM after epoch 1 of 2; "
        "run the same command to resume"
    ]
    assert not (out / LOCK_FILE).exists()
    assert torch.load(out / LATEST, weights_only=True)["epoch"] == 1
    again = subprocess.run(train, env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [row["epoch"] for row in read_metrics(out / "metrics.jsonl")] == [1, 2]
    resumed, uninterrupted = _weights(out / LATEST), _weights(Path(spec.train.results_dir) / LATEST)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


# ---- the reference's Transformer recipe: margin heads, param groups, cosine schedule ----------


def _colour_batch(num_ids: int, per_id: int, seed: int = 0):
    "Images of `num_ids` identities, each a colour plus noise, 32x16; and their labels."
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_ids).repeat_interleave(per_id)
    colours = torch.rand(num_ids, 3, 1, 1, generator=g)[labels]
    return colours + 0.3 * torch.randn(len(labels), 3, 32, 16, generator=g), labels


@pytest.mark.parametrize("head", ["softmax", "arcface", "cosface", "amsoftmax", "circle"])
def test_each_id_loss_type_trains_a_tiny_model(head):
    "ResNet-18 with each classifier, through train_step (which hands the labels to the head)."
    from reid_nb.config import load_spec
    from reid_nb.model import CosineHead
    from reid_nb.train import make_train_state, train_step

    spec = load_spec(
        overrides=[
            "model.backbone=resnet_18",
            "model.pretrain_choice=",
            "model.input_height=32",
            "model.input_width=16",
            "model.feat_dim=32",
            f"model.id_loss_type={head}",
            "model.label_smooth=false",
            "train.optim.base_lr=0.001",
            "train.optim.warmup_iters=0",
        ]
    )
    torch.set_num_threads(1)
    state = make_train_state(spec, num_classes=4, verbose=False)
    assert isinstance(state.model.classifier, CosineHead) == (head != "softmax")
    images, labels = _colour_batch(4, 2)
    history = [train_step(state, images, labels)[0]["loss"].item() for _ in range(10)]
    assert history[-1] < 0.7 * history[0], history


def test_the_swin_recipe_optimiser_groups_and_schedule():
    "bias_lr_factor, large_fc_lr and the cosine warmup, as the reference's Swin spec sets them."
    from reid_nb.config import load_spec
    from reid_nb.train import WarmupCosineLR, make_train_state

    spec = load_spec(
        overrides=[
            "model.backbone=resnet_18",
            "model.pretrain_choice=",
            "model.id_loss_type=cosface",
            "train.optim.name=SGD",
            "train.optim.base_lr=0.0008",
            "train.optim.bias_lr_factor=2",
            "train.optim.large_fc_lr=true",
            "train.optim.warmup_method=cosine",
            "train.optim.warmup_epochs=2",
            "train.num_epochs=6",
        ]
    )
    state = make_train_state(spec, num_classes=4, verbose=False)
    assert isinstance(state.scheduler, WarmupCosineLR)
    assert state.scheduler.base_lrs == pytest.approx([0.0008, 0.0016, 0.0016])
    assert state.optimizer.param_groups[2]["params"] == [state.model.classifier.weight]
    rates = []
    for _ in range(4):
        rates.append(state.optimizer.param_groups[0]["lr"])
        state.scheduler.step()
    cosine = 0.0008 * 0.002 + (0.0008 - 0.0008 * 0.002) * (1 + math.cos(math.pi * 2 / 6)) / 2
    assert rates[:3] == pytest.approx([0.000008, 0.000404, cosine])


@pytest.mark.slow
def test_reid_nb_train_runs_the_swin_recipe_on_cpu(tmp_path, synth_root):
    "`reid_nb train -e params/market1501_swin.yaml`: Swin-T at 64x32, the synthetic set, 2 epochs."
    from reid_nb.synth import synth_overrides

    overrides = [
        f"results_dir={tmp_path}",
        "model.pretrain_choice=",  # the recipe's SOLIDER file is not here; random init
        "model.input_height=64",
        "model.input_width=32",
        "dataset.batch_size=16",
        "dataset.val_batch_size=32",
        "dataset.num_workers=0",
        "dataset.padding=4",
        "re_ranking.re_ranking=false",
        "train.num_epochs=2",
        "train.optim.warmup_epochs=0",  # 20 warmup epochs would leave 2 epochs at 1% of the rate
        "train.optim.base_lr=0.002",
        *synth_overrides(synth_root),
    ]
    spec = ROOT / "params" / "market1501_swin.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "reid_nb", "train", "-e", str(spec), *overrides],
        capture_output=True,
        text=True,
        timeout=1800,
        env=_env(OMP_NUM_THREADS="2"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = read_metrics(tmp_path / "train" / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["loss"] < rows[0]["loss"], rows
