"""Model (reid_nb.model) and losses (reid_nb.losses): what the notebooks do not check.

The model's checks live in nbs/03_model.ipynb; here: Swin weights from a Hugging Face cache
snapshot, losses under autocast, loss oracles on random inputs and a tiny overfit."""

import pytest
import torch
import torch.nn.functional as F

from reid_nb.config import load_spec
from reid_nb.losses import (
    ClassCenters,
    batch_hard_triplet,
    center_loss,
    hardest_pairs,
    make_loss,
    pairwise_distances,
    smoothed_cross_entropy,
)
from reid_nb.model import build_model

SWIN_T = "swin_tiny_patch4_window7_224"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny CPU workloads run faster on one thread when other jobs share the cores."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spec_of(*overrides):
    return load_spec(overrides=["model.pretrain_choice=", *overrides])


def test_losses_under_autocast_are_float32():
    m = build_model(
        spec_of("model.backbone=resnet_18", "model.feat_dim=64"), 4, verbose=False
    ).train()
    x = torch.randn(2, 3, 64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feat = m(x)
        total, _ = make_loss(spec_of(), 4, 64)(logits, feat, torch.tensor([0, 1]))
    assert logits.dtype == torch.bfloat16
    assert total.dtype == torch.float32 and torch.isfinite(total)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    "No torch or Hugging Face cache can be found: all point at an empty folder."
    for k in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_imagenet_swin_from_hf_cache(empty_caches):
    from safetensors.torch import save_file

    from reid_nb.model import SwinBackbone

    src = SwinBackbone(SWIN_T, img_size=(224, 224)).swin
    snap = (
        empty_caches
        / "hf"
        / "hub"
        / "models--timm--swin_tiny_patch4_window7_224.ms_in1k"
        / "snapshots"
        / "abc"
    )
    snap.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "model.safetensors")
    )
    m = build_model(
        spec_of(
            "model.pretrain_choice=imagenet",
            f"model.backbone={SWIN_T}",
            "model.reduce_feat_dim=true",  # TAO's recipe: 768 -> feat_dim 256
        ),
        5,
        verbose=False,
    )
    assert torch.equal(
        m.backbone.swin.layers[2].blocks[1].mlp.fc1.weight, src.layers[2].blocks[1].mlp.fc1.weight
    )
    run = m.eval()
    with torch.no_grad():
        assert run(torch.randn(1, 3, 256, 128)).shape == (1, 256)


# ---- losses -------------------------------------------------------------------------------------


def brute_triplet(feat, labels, margin):
    n, total = len(feat), 0.0
    for i in range(n):
        ap = max(float((feat[i] - feat[j]).norm()) for j in range(n) if labels[j] == labels[i])
        neg = [float((feat[i] - feat[k]).norm()) for k in range(n) if labels[k] != labels[i]]
        total += max(0.0, ap - min(neg) + margin) if neg else 0.0
    return total / n


@pytest.mark.parametrize("seed", range(6))
def test_triplet_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n_ids, k = 3 + seed % 3, 2 + seed % 3
    labels = torch.arange(n_ids).repeat_interleave(k)[torch.randperm(n_ids * k, generator=g)]
    feat = torch.randn(n_ids * k, 16, generator=g) * (0.2 + seed * 0.3)
    for margin in (0.3, 1.0):
        assert batch_hard_triplet(feat, labels, margin).item() == pytest.approx(
            brute_triplet(feat, labels, margin), abs=1e-4
        )


def test_hardest_pairs_uneven_ids():
    feat = torch.randn(7, 5)
    labels = torch.tensor([3, 3, 3, 1, 2, 2, 0])
    ap, an = hardest_pairs(pairwise_distances(feat, feat), labels)
    d = torch.cdist(feat, feat)
    for i in range(7):
        same = labels == labels[i]
        assert ap[i].item() == pytest.approx(d[i][same].max().item(), abs=1e-3)
        assert an[i].item() == pytest.approx(d[i][~same].min().item(), abs=1e-4)


def test_label_smoothing_formula():
    logits, targets, eps = torch.randn(10, 6), torch.randint(0, 6, (10,)), 0.1
    q = torch.full((10, 6), eps / 6)
    q[torch.arange(10), targets] += 1 - eps
    want = -(q * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(smoothed_cross_entropy(logits, targets, eps), want, atol=1e-6)
    assert torch.allclose(
        smoothed_cross_entropy(logits, targets, 0.0),
        F.cross_entropy(logits, targets),
        atol=1e-6,
    )


def test_center_loss_value_and_pull():
    feat, centers = torch.randn(6, 4), torch.randn(3, 4)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(
        center_loss(feat, centers, targets), ((feat - centers[targets]) ** 2).sum(1).mean()
    )
    cl = ClassCenters(3, 4)
    f = feat.clone().requires_grad_(True)
    opt = torch.optim.SGD([f, cl.centers], lr=0.1)
    d0 = (f - cl.centers[targets]).norm(dim=1).detach()
    for _ in range(5):
        opt.zero_grad()
        cl(f, targets).backward()
        opt.step()
    d1 = (f - cl.centers[targets]).norm(dim=1).detach()
    assert torch.all(d1 < d0)


@pytest.mark.parametrize(
    "overrides,keys,has_center",
    [
        ((), {"id", "triplet"}, False),
        (("dataset.sampler=softmax",), {"id"}, False),
        (("dataset.sampler=softmax", "model.metric_loss_type=triplet_center"), {"id"}, False),
        (("model.with_center_loss=true",), {"id", "triplet", "center"}, True),
        (("model.metric_loss_type=center",), {"id", "center"}, True),
        (("model.metric_loss_type=triplet_center",), {"id", "triplet", "center"}, True),
        (("dataset.sampler=triplet",), {"triplet"}, False),
    ],
)
def test_make_loss_terms(overrides, keys, has_center):
    spec = spec_of("train.optim.center_loss_weight=0.01", "model.label_smooth=false", *overrides)
    loss = make_loss(spec, 4, 16)
    logits, feat, targets = torch.randn(8, 4), torch.randn(8, 16), torch.arange(4).repeat(2)
    total, parts = loss(logits, feat, targets)
    assert set(parts) == keys and (loss.center is not None) == has_center
    assert torch.allclose(total, sum(parts.values()))
    if "id" in parts:
        assert torch.allclose(parts["id"], F.cross_entropy(logits, targets))
    if "triplet" in parts:
        assert torch.allclose(parts["triplet"], batch_hard_triplet(feat, targets, 0.3))
    if has_center:
        assert loss.center.centers.shape == (4, 16)
        assert torch.allclose(
            parts["center"], 0.01 * center_loss(feat, loss.center.centers, targets)
        )


def test_tiny_overfit():
    "8 ids x 4 noisy images at 64x32, ResNet-18 from scratch: 30 Adam steps halve the loss or more."
    torch.manual_seed(0)
    spec = spec_of(
        "model.backbone=resnet_18",
        "model.input_height=64",
        "model.input_width=32",
        "model.feat_dim=64",
        "model.with_center_loss=true",
    )
    model = build_model(spec, 8, verbose=False).train()
    loss_fn = make_loss(spec, 8, model.feat_dim)
    targets = torch.arange(8).repeat_interleave(4)
    images = torch.rand(8, 3, 1, 1)[targets] + 0.3 * torch.randn(32, 3, 64, 32)
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    history = []
    for _ in range(30):
        total, parts = loss_fn(*model(images), targets)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert set(parts) == {"id", "triplet", "center"}
    assert history[-1] < 0.5 * history[0], history


# ---- the reference's Transformer (Swin) ---------------------------------------------------------


def test_resnet_head_is_unchanged_by_the_transformer_keys():
    "The defaults draw backbone, reduction, BNNeck, linear classifier in order: the same weights."
    from reid_nb.model import bnneck_layer, build_backbone, classifier_layer, reduction_layer

    torch.manual_seed(0)
    m = build_model(spec_of("model.backbone=resnet_18", "model.feat_dim=64"), 5, verbose=False)
    assert type(m.dropout) is torch.nn.Identity and type(m.classifier) is torch.nn.Linear
    torch.manual_seed(0)
    backbone = build_backbone("resnet_18", 1, (256, 128), 3)
    layers = [reduction_layer(512, 64), bnneck_layer(64), classifier_layer(64, 5)]
    expected = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    for name, layer in zip(("reduction", "bottleneck", "classifier"), layers):
        expected |= {f"{name}.{k}": v for k, v in layer.state_dict().items()}
    got = m.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_solider_checkpoint_loads_through_build_model(tmp_path, capsys):
    "pretrain_choice self + a SOLIDER file: the backbone is converted, and the fit reported."
    from reid_nb.model import SwinBackbone

    tiny = ["model.input_height=64", "model.input_width=32", f"model.backbone={SWIN_T}"]
    source = SwinBackbone(SWIN_T, img_size=(64, 32))
    teacher = {}
    for key, tensor in source.state_dict().items():
        if key.startswith("swin.layers.") and ".blocks." in key and ".norm1." in key:
            stage = key.split(".")[2]
            rest = key.split(".", 3)[3]
            teacher[f"backbone.stages.{stage}.{rest}"] = torch.randn_like(tensor)
    path = tmp_path / "solider.pth"
    torch.save({"teacher": teacher, "student": {}}, path)
    m = build_model(
        spec_of(*tiny, "model.pretrain_choice=self", f"model.pretrained_model_path={path}"), 5
    )
    out = capsys.readouterr().out
    assert f"SOLIDER weights {path}: {len(teacher)} tensors loaded" in out
    loaded = m.backbone.state_dict()["swin.layers.1.blocks.1.norm1.weight"]
    assert torch.equal(loaded, teacher["backbone.stages.1.blocks.1.norm1.weight"])


def test_solider_checkpoint_of_another_size_is_one_line(tmp_path):
    from reid_nb.model import ModelError

    tiny = ["model.input_height=64", "model.input_width=32", f"model.backbone={SWIN_T}"]
    path = tmp_path / "swin_base.pth"
    torch.save(
        {"state_dict": {"backbone.patch_embed.projection.weight": torch.zeros(128, 3, 4, 4)}}, path
    )
    with pytest.raises(ModelError) as e:
        build_model(
            spec_of(*tiny, "model.pretrain_choice=self", f"model.pretrained_model_path={path}"),
            5,
            verbose=False,
        )
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert "swin.patch_embed.proj.weight has shape [128, 3, 4, 4]" in message


@pytest.mark.parametrize("head", ["arcface", "cosface", "amsoftmax", "circle"])
def test_margin_heads_are_the_classifier_and_take_labels(head):
    from reid_nb.model import CosineHead

    spec = spec_of(
        "model.backbone=resnet_18",
        "model.feat_dim=32",
        f"model.id_loss_type={head}",
        "train.optim.cosine_scale=20",
    )
    m = build_model(spec, 6, verbose=False).train()
    assert isinstance(m.classifier, CosineHead) and m.classifier.scale == 20
    x, labels = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 2, 5])
    torch.manual_seed(1)
    with_labels, _ = m(x, labels)
    torch.manual_seed(1)
    without, _ = m(x)
    changed = (with_labels - without).abs() > 1e-6
    assert changed[torch.arange(4), labels].all()  # the margin acts on the true class
