"""The spec against the reference tables and the params files; the one-line errors of the CLI."""

from pathlib import Path

import pytest
import yaml

from reid_nb.config import SpecError, load_spec, save_spec

PARAMS = Path(__file__).parent.parent / "params"

# The reference tables (reidentificationnet.txt), key: documented default; ~ where none is given.
REFERENCE = yaml.safe_load("""
results_dir: /results
encryption_key: ~
model:
  backbone: resnet_50
  last_stride: 1
  pretrain_choice: imagenet
  pretrained_model_path: ~
  input_channels: 3
  input_width: 128
  input_height: 256
  neck: bnneck
  feat_dim: 256
  neck_feat: after
  metric_loss_type: triplet
  with_center_loss: false
  with_flip_feature: false
  label_smooth: true
dataset:
  train_dataset_dir: ~
  test_dataset_dir: ~
  query_dataset_dir: ~
  num_classes: 751
  batch_size: 64
  val_batch_size: 128
  num_workers: 1
  pixel_mean: [0.485, 0.456, 0.406]
  pixel_std: [0.226, 0.226, 0.226]
  padding: 10
  prob: 0.5
  re_prob: 0.5
  sampler: softmax_triplet
  num_instances: 4
re_ranking:
  re_ranking: true
  k1: 20
  k2: 6
  lambda_value: 0.3
train:
  num_gpus: 1
  gpu_ids: [0]
  seed: 1234
  num_epochs: 10
  checkpoint_interval: 1
  validation_interval: 1
  resume_training_checkpoint_path: ~
  results_dir: /results/train
  clip_grad_norm: 0.0
  optim:
    name: Adam
    lr_monitor: val_loss
    lr_steps: [40, 70]
    gamma: 0.1
    bias_lr_factor: 1
    weight_decay: 0.0005
    weight_decay_bias: 0.0005
    warmup_factor: 0.01
    warmup_iters: 10
    warmup_method: linear
    base_lr: 0.00035
    momentum: 0.9
    center_loss_weight: 0.0005
    center_lr: 0.5
    triplet_loss_margin: 0.3
evaluate:
  checkpoint: ~
  output_sampled_matches_plot: ~
  output_cmc_curve_plot: ~
  test_dataset: ~
  query_dataset: ~
  gpu_ids: [0]
  num_gpus: 1
  results_dir: /results/evaluate
inference:
  checkpoint: ~
  output_file: ~
  test_dataset: ~
  query_dataset: ~
  gpu_ids: [0]
  num_gpus: 1
  results_dir: /results/inference
export:
  checkpoint: ~
  onnx_file: ~
  gpu_id: 0
""")


def _walk(ref, got, prefix=""):
    for key, default in ref.items():
        assert key in got, f"{prefix}{key} missing from the loaded spec"
        if isinstance(default, dict):
            _walk(default, got[key], f"{prefix}{key}.")
        elif default is not None:
            assert got[key] == pytest.approx(default), f"{prefix}{key}: {got[key]!r} != {default!r}"


def test_every_reference_key_has_its_default():
    _walk(REFERENCE, load_spec().to_dict())


def test_reference_example_spec_loads():
    "params/default.yaml is the reference's example spec, `steps` spelling included."
    raw = yaml.safe_load((PARAMS / "default.yaml").read_text())
    assert "steps" in raw["train"]["optim"]
    s = load_spec(PARAMS / "default.yaml")
    assert s.train.optim.lr_steps == (40, 70)
    assert s.train.results_dir == "/path/to/experiment_results/train"
    assert (s.train.checkpoint_interval, s.train.validation_interval) == (5, 5)


@pytest.mark.parametrize(
    "name", ["default.yaml", "demo.yaml", "market1501.yaml", "market1501_swin.yaml"]
)
def test_params_load_and_round_trip(name, tmp_path):
    s = load_spec(PARAMS / name)
    assert load_spec(save_spec(s, tmp_path / "s.yaml")) == s


def test_market1501_is_the_bag_of_tricks_recipe():
    s = load_spec(PARAMS / "market1501.yaml")
    o = s.train.optim
    assert (s.model.backbone, s.model.input_height, s.model.input_width, s.train.num_epochs) == (
        "resnet_50",
        256,
        128,
        120,
    )
    assert (s.dataset.batch_size, s.dataset.num_instances, s.dataset.sampler) == (
        64,
        4,
        "softmax_triplet",
    )
    assert (o.name, o.base_lr, o.warmup_method, o.warmup_iters, o.lr_steps) == (
        "Adam",
        3.5e-4,
        "linear",
        10,
        (40, 70),
    )
    assert s.model.label_smooth and o.triplet_loss_margin == 0.3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.feat_dimm=3"], "model.feat_dimm: unknown key; did you mean 'model.feat_dim'?"),
        (["trian.seed=3"], "trian: unknown key; did you mean 'train'?"),
        (["dataset.batch_size=1.5"], "dataset.batch_size: expected an integer, got 1.5"),
        (["model.label_smooth=maybe"], "model.label_smooth: expected true or false, got 'maybe'"),
        (["model.neck=fancy"], "model.neck: 'fancy' is not supported; expected one of: bnneck, ''"),
        (
            ["dataset.sampler=pk"],
            "dataset.sampler: 'pk' is not supported; "
            "expected one of: softmax, triplet, softmax_triplet",
        ),
        (
            ["dataset.batch_size=30"],
            "dataset.batch_size: 30 is not a multiple of dataset.num_instances (4)",
        ),
        (["model.input_height=0"], "model.input_height: expected a value > 0, got 0"),
        (["model.input_width=-8"], "model.input_width: expected a value > 0, got -8"),
        (
            ["re_ranking.lambda_value=1.2"],
            "re_ranking.lambda_value: expected a value in [0, 1], got 1.2",
        ),
        (
            ["train.optim.lr_steps=[70,40]"],
            "train.optim.lr_steps: expected increasing positive epochs",
        ),
        (
            ["model.pretrain_choice=self"],
            "model.pretrained_model_path: required when model.pretrain_choice is 'self'",
        ),
    ],
)
def test_bad_spec_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(SpecError) as e:
        load_spec(overrides=overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name", ["default.yaml", "demo.yaml", "market1501.yaml", "market1501_swin.yaml"]
)
def test_a_saved_params_spec_moves_with_results_dir(name, tmp_path):
    "Issue 19: a spec saved beside a run, loaded again with another results_dir, moves every task."
    saved = save_spec(load_spec(PARAMS / name), tmp_path / "spec.yaml")
    moved = load_spec(saved, [f"results_dir={tmp_path / 'elsewhere'}"])
    tasks = ("train", "evaluate", "inference", "export")
    assert [getattr(moved, t).results_dir for t in tasks] == [
        str(tmp_path / "elsewhere" / t) for t in tasks
    ]
    assert moved.dataset == load_spec(PARAMS / name).dataset  # data paths as written


# ---- the reference's Transformer (Swin) spec ----------------------------------------------------

REFERENCE_SPECS = Path(__file__).resolve().parents[2] / "shared" / "reference"
TAO_SPECS = ["tao_experiment_market1501_resnet.yaml", "tao_experiment_market1501_swin.yaml"]


@pytest.mark.parametrize("name", TAO_SPECS)
def test_the_reference_experiment_specs_load_unchanged_and_round_trip(name, tmp_path):
    path = REFERENCE_SPECS / name
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    s = load_spec(path)
    assert load_spec(save_spec(s, tmp_path / "s.yaml")) == s
    raw = yaml.safe_load(path.read_text())
    for section in ("model", "dataset"):
        for key, value in raw[section].items():
            got = getattr(getattr(s, section), key)
            expected = tuple(value) if isinstance(value, list) else value
            assert got == pytest.approx(expected), f"{section}.{key}"


def test_the_swin_spec_keys_and_defaults():
    s = load_spec()
    m, o = s.model, s.train.optim
    assert (m.reduce_feat_dim, m.no_margin, m.cos_layer, m.id_loss_type) == (
        False,
        False,
        False,
        "softmax",
    )
    assert (m.drop_path, m.drop_out, m.att_drop_rate, m.dropout_rate) == (0.1, 0.0, 0.0, 0.0)
    assert (m.stride_size, m.pretrain_hw_ratio, m.semantic_weight) == ((16, 16), 2.0, 1.0)
    assert (m.jpm, m.re_arrange, m.sie_camera, m.sie_view, m.sie_coe) == (
        False,
        True,
        False,
        False,
        3.0,
    )
    assert (o.warmup_epochs, o.large_fc_lr, o.cosine_scale, o.cosine_margin) == (20, False, 30, 0.5)


def test_market1501_swin_is_the_reference_recipe_with_our_paths():
    path = REFERENCE_SPECS / "tao_experiment_market1501_swin.yaml"
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    ours, theirs = load_spec(PARAMS / "market1501_swin.yaml"), load_spec(path)
    paths = {"pretrained_model_path", "train_dataset_dir", "test_dataset_dir", "query_dataset_dir"}
    for section in ("model", "dataset", "re_ranking"):
        for key, value in getattr(theirs, section).__dict__.items():
            if key not in paths and key != "num_classes":
                assert getattr(getattr(ours, section), key) == value, f"{section}.{key}"
    assert ours.train.optim == theirs.train.optim
    assert (ours.train.num_epochs, ours.dataset.num_classes) == (5, 751)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.jpm=true"], "model.jpm: true is not supported (TransReID's jigsaw"),
        (["model.sie_camera=true"], "model.sie_camera: true is not supported"),
        (["model.cos_layer=true"], "model.cos_layer: true is not supported"),
        (["model.stride_size=[12,12]"], "model.stride_size: [12, 12] is not supported"),
        (
            ["model.semantic_weight=1.5"],
            "model.semantic_weight: expected a value in [0, 1], got 1.5",
        ),
        (["model.id_loss_type=sphere"], "model.id_loss_type: 'sphere' is not supported"),
        (
            ["model.id_loss_type=arcface", "model.neck="],
            "model.neck: the arcface head (model.id_loss_type) needs 'bnneck'",
        ),
        (
            ["model.reduce_feat_dim=true"],
            "model.reduce_feat_dim: true acts on Swin backbones only (model.backbone is resnet_50)",
        ),
        (
            ["model.backbone=swin_tiny_patch4_window7_224", "model.last_stride=2"],
            "model.last_stride: 2 acts on ResNet backbones only",
        ),
        (
            ["model.backbone=swin_tiny_patch4_window7_224", "model.feat_dim=512"],
            "model.feat_dim: 512 needs model.reduce_feat_dim: true",
        ),
        (["train.optim.cosine_scale=64"], "train.optim.cosine_scale: only the margin heads"),
        (
            ["train.optim.warmup_epochs=5"],
            "train.optim.warmup_epochs: 5 is not read with warmup_method linear",
        ),
        (
            ["train.optim.warmup_method=cosine", "train.optim.warmup_iters=3"],
            "train.optim.warmup_iters: 3 is not read with warmup_method cosine",
        ),
        (
            ["train.optim.warmup_method=cosine", "train.optim.lr_scheduler=auto_reduce"],
            "train.optim.lr_scheduler: auto_reduce cannot follow warmup_method cosine",
        ),
    ],
)
def test_bad_transformer_keys_are_one_line(overrides, message):
    with pytest.raises(SpecError) as e:
        load_spec(overrides=overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
