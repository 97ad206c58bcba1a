"""Multi-process training on the CPU (gloo, loopback only): the triplet sampler under
DistributedDataParallel, the center-loss centres shared by every rank, a bad `gpu_ids` as one
line, and two "nodes" on 127.0.0.1 that end where one node with two processes ends."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from reid_nb.config import SpecError, load_spec, save_spec
from reid_nb.train import check_train, main, run_training

ROOT = Path(__file__).parent.parent
GLOO = ["train.dist_backend=gloo", "dataset.batch_size=8", "train.validation_interval=1"]


def _final_weights(folder: Path, rank: int) -> dict:
    return torch.load(folder / f"weights_rank{rank}.pth", map_location="cpu", weights_only=True)


def _assert_equal_tensors(first: dict, second: dict):
    "Equal tensors, but the BatchNorm running statistics (each rank keeps its own, as DDP does)."
    assert first.keys() == second.keys()
    for key in first:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(first[key], second[key]), key


def _train_logged(spec, log: Path, monkeypatch) -> dict:
    "Train `spec` with each process writing its final weights into `log`; the result."
    log.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("REID_NB_WEIGHTS_LOG", str(log))
    return run_training(spec, verbose=False)


@pytest.mark.slow
def test_triplet_sampler_and_center_loss_on_two_gloo_processes(tiny_spec, tmp_path, monkeypatch):
    # no ID loss: the BNNeck and classifier get no gradient; the centres are seeded per rank
    spec = tiny_spec(
        "train.num_gpus=2",
        "dataset.sampler=triplet",
        "model.metric_loss_type=triplet_center",
        *GLOO,
    )
    result = _train_logged(spec, tmp_path / "weights", monkeypatch)
    assert [row["epoch"] for row in result["history"]] == [1]
    assert "center" in result["history"][0] and "id" not in result["history"][0]
    rank0, rank1 = _final_weights(tmp_path / "weights", 0), _final_weights(tmp_path / "weights", 1)
    _assert_equal_tensors(rank0["model"], rank1["model"])
    _assert_equal_tensors(rank0["center"], rank1["center"])  # rank 0's centres, stepped alike


def test_a_gpu_id_that_is_not_visible_is_one_line(tiny_spec, monkeypatch, capsys, tmp_path):
    # as on a machine with one GPU (the check runs before any CUDA call)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(SpecError, match="train.gpu_ids: GPU 1 asked for, but this process sees 1"):
        check_train(tiny_spec("train.gpu_ids=[1]"))
    spec_file = save_spec(tiny_spec(), tmp_path / "spec.yaml")
    assert main([str(spec_file), "train.gpu_ids=[1]", "--quiet"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.gpu_ids: GPU 1 asked for")
    assert "CUDA_VISIBLE_DEVICES=3 numbers them from 0" in lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node(spec_file: Path, node_rank: int, port: int, log: Path) -> subprocess.Popen:
    "One node's `python -m reid_nb.train` with torchrun's multi-node environment."
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        NODE_RANK=str(node_rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        REID_NB_WEIGHTS_LOG=str(log),
    )
    command = [sys.executable, "-m", "reid_nb.train", str(spec_file), "--quiet"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_nodes_on_loopback_end_like_one_node_with_two_processes(
    synth_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # both runs: the same float reductions
    log = tmp_path / "weights"
    log.mkdir()
    specs = []
    for node_rank in (0, 1):  # each node its own results folder, as on separate machines
        overrides = tiny_overrides(tmp_path / f"node{node_rank}", synth_root)
        spec = load_spec(overrides=[*overrides, *GLOO, "train.num_nodes=2"])
        specs.append(save_spec(spec, tmp_path / f"node{node_rank}.yaml"))
    port = _free_port()
    nodes = [_node(specs[rank], rank, port, log) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0].decode(errors="replace") for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert (tmp_path / "node0" / "train" / "reid_model_latest.pth").is_file()
    rank0, rank1 = _final_weights(log, 0)["model"], _final_weights(log, 1)["model"]
    _assert_equal_tensors(rank0, rank1)  # the two nodes agree
    single = load_spec(
        overrides=[*tiny_overrides(tmp_path / "single", synth_root), *GLOO, "train.num_gpus=2"]
    )
    _train_logged(single, tmp_path / "single_weights", monkeypatch)
    # ... and end where one node with two processes ends
    _assert_equal_tensors(rank0, _final_weights(tmp_path / "single_weights", 0)["model"])
