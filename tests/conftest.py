"""Shared fixtures: a small synthetic Market-1501-format set and a CPU-sized spec on it."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# No test reaches the network: a build that asks for ImageNet weights not in the cache fails
# instead of downloading (tests/test_download.py serves its files on loopback and lifts this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reid_nb.config import load_spec


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    "A small synthetic set (12 train ids, 12 test ids, 4 cameras), made once per test session."
    from reid_nb.synth import make_dataset

    root = tmp_path_factory.mktemp("synth")
    return make_dataset(
        root, num_train_ids=12, num_test_ids=12, num_cameras=4, images_per_id=8, seed=0
    )


def tiny_overrides(results_dir, synth_root, epochs: int = 1) -> list[str]:
    "The overrides of a CPU-sized run: resnet_18 at 64x32 on `synth_root`, `epochs` epochs."
    from reid_nb.synth import synth_overrides

    return [
        f"results_dir={results_dir}",
        "model.backbone=resnet_18",
        "model.pretrain_choice=",
        "model.input_height=64",
        "model.input_width=32",
        "model.feat_dim=64",
        "dataset.batch_size=16",
        "dataset.num_instances=4",
        "dataset.val_batch_size=32",
        "dataset.num_workers=0",
        "dataset.padding=4",
        f"train.num_epochs={epochs}",
        "train.checkpoint_interval=1",
        "train.validation_interval=1",
        *synth_overrides(synth_root),
    ]


@pytest.fixture
def tiny_spec(tmp_path, synth_root):
    "`make(*overrides)`: a spec for resnet_18 at 64x32 on `synth_root`, results under `tmp_path`."
    base = tiny_overrides(tmp_path / "results", synth_root)

    def make(*overrides):
        return load_spec(overrides=[*base, *overrides])

    return make
