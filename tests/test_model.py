"Model (reid_nb.model) and losses (reid_nb.losses): shapes, options, weights, checkpoints, loss oracles, a tiny overfit."
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reid_nb.config import ReidError, load_spec
from reid_nb.losses import (CenterLoss, center_loss, cross_entropy_label_smooth, euclidean_dist,
                            hard_example_mining, make_loss, triplet_loss)
from reid_nb.model import (CheckpointError, ModelError, ReidModel, build_model, load_checkpoint,
                           model_from_checkpoint, save_checkpoint)

SWIN_T, SWIN_S, SWIN_B = (f"swin_{s}_patch4_window7_224" for s in ("tiny", "small", "base"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny CPU workloads run faster on one thread when other jobs share the cores."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spec_of(*overrides):
    return load_spec(overrides=["model.pretrain_choice=", *overrides])


def run_shapes(backbone, h, w, feat_dim=256, num_classes=7):
    model = build_model(spec_of(f"model.backbone={backbone}", f"model.input_height={h}", f"model.input_width={w}",
                                f"model.feat_dim={feat_dim}"), num_classes, verbose=False)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        logits, feat = model.train()(x)
        emb = model.eval()(x)
    assert logits.shape == (2, num_classes) and feat.shape == (2, feat_dim) and emb.shape == (2, feat_dim)
    assert model.feat_dim == feat_dim
    return model


@pytest.mark.parametrize("backbone,h", [("resnet_18", 256), ("resnet_50", 256), (SWIN_T, 256), (SWIN_T, 384)])
def test_shapes_fast(backbone, h):
    run_shapes(backbone, h, 128)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,h", [("resnet_34", 256), ("resnet_101", 256), ("resnet_152", 256),
                                        (SWIN_S, 256), (SWIN_B, 256), (SWIN_S, 384), (SWIN_B, 384)])
def test_shapes_slow(backbone, h):
    run_shapes(backbone, h, 128)


def test_training_forward_backward_gives_gradients():
    model = build_model(spec_of("model.backbone=resnet_18", "model.feat_dim=64"), 5, verbose=False).train()
    logits, feat = model(torch.randn(4, 3, 64, 32))
    (logits.sum() + feat.sum()).backward()
    assert model.backbone.net.conv1.weight.grad is not None and model.reduction.weight.grad is not None
    assert model.bottleneck.bias.grad is None  # the BNNeck shift is frozen


@pytest.mark.parametrize("last_stride,size", [(1, (16, 8)), (2, (8, 4))])
def test_last_stride(last_stride, size):
    model = build_model(spec_of("model.backbone=resnet_50", f"model.last_stride={last_stride}"), 3, verbose=False)
    with torch.no_grad():
        assert model.eval().backbone(torch.randn(1, 3, 256, 128)).shape == (1, 2048, *size)


def test_feat_dim_reduction_and_identity():
    m = build_model(spec_of("model.backbone=resnet_18", "model.feat_dim=64"), 3, verbose=False)
    assert isinstance(m.reduction, nn.Linear) and m.reduction.weight.shape == (64, 512)
    m = build_model(spec_of("model.backbone=resnet_18", "model.feat_dim=512"), 3, verbose=False)
    assert isinstance(m.reduction, nn.Identity)


def test_head_init():
    m = build_model(spec_of("model.backbone=resnet_50", "model.feat_dim=256"), 751, verbose=False)
    assert m.classifier.bias is None and abs(m.classifier.weight.std().item() - 0.001) < 1e-4
    assert torch.all(m.bottleneck.weight == 1) and torch.all(m.bottleneck.bias == 0)
    assert not m.bottleneck.bias.requires_grad
    assert torch.all(m.reduction.bias == 0)
    assert abs(m.reduction.weight.std().item() - (2 / 256) ** 0.5) < 0.01  # kaiming normal, fan_out


@pytest.mark.parametrize("neck,neck_feat", [("bnneck", "after"), ("bnneck", "before"), ("", "after")])
def test_neck_feat_embedding(neck, neck_feat):
    m = build_model(spec_of("model.backbone=resnet_18", "model.feat_dim=64", f"model.neck={neck}",
                            f"model.neck_feat={neck_feat}"), 4, verbose=False)
    m.train()(torch.randn(8, 3, 64, 32))  # move BN running stats away from the identity
    m.eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        feat = m.features(x)
        want = m.bottleneck(feat) if (neck and neck_feat == "after") else feat
        assert torch.allclose(m(x), want, atol=1e-6)
        if neck and neck_feat == "after": assert not torch.allclose(want, feat, atol=1e-3)


def test_flip_feature_averages():
    m = build_model(spec_of("model.backbone=resnet_18", "model.feat_dim=64", "model.with_flip_feature=true"), 4,
                    verbose=False).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        want = (m.bottleneck(m.features(x)) + m.bottleneck(m.features(x.flip(3)))) / 2
        assert torch.allclose(m(x), want, atol=1e-5)
        m.with_flip_feature = False
        assert not torch.allclose(m(x), want, atol=1e-4)


def test_channels_last_and_autocast():
    m = build_model(spec_of("model.backbone=resnet_18", "model.feat_dim=64"), 4, verbose=False).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        ref = m(x)
        m = m.to(memory_format=torch.channels_last)
        assert torch.allclose(m(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = m(x)
    assert emb.shape == (2, 64) and torch.isfinite(emb.float()).all()
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feat = m(x)
        total, _ = make_loss(spec_of(), 4, 64)(logits, feat, torch.tensor([0, 1]))
    assert total.dtype == torch.float32 and torch.isfinite(total)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    "No torch or Hugging Face cache can be found: all point at an empty folder."
    for k in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("backbone", ["resnet_50", SWIN_T])
def test_imagenet_without_weights_is_a_clear_error(empty_caches, backbone):
    with pytest.raises(ModelError) as e:
        build_model(spec_of("model.pretrain_choice=imagenet", f"model.backbone={backbone}"), 5, verbose=False)
    msg = str(e.value)
    assert isinstance(e.value, ReidError) and "\n" not in msg
    assert f"no ImageNet weights for {backbone}" in msg and "pretrained_model_path" in msg
    assert str(empty_caches) in msg  # says where to put the file


def test_imagenet_missing_path_is_a_clear_error(empty_caches):
    with pytest.raises(ModelError, match="pretrained_model_path: .*nope.pth: file not found"):
        build_model(spec_of("model.pretrain_choice=imagenet", "model.backbone=resnet_18",
                            f"model.pretrained_model_path={empty_caches}/nope.pth"), 5, verbose=False)


def test_imagenet_from_torch_cache(empty_caches, capsys):
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    ckpts = empty_caches / "torch" / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpts / "resnet18-f37072fd.pth")
    m = build_model(spec_of("model.pretrain_choice=imagenet", "model.backbone=resnet_18"), 5)
    assert torch.equal(m.backbone.net.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert "resnet18-f37072fd.pth" in capsys.readouterr().out


def test_imagenet_swin_from_hf_cache(empty_caches):
    from safetensors.torch import save_file
    from reid_nb.model import SwinBackbone
    src = SwinBackbone(SWIN_T, img_size=(224, 224)).swin
    snap = empty_caches / "hf" / "hub" / "models--timm--swin_tiny_patch4_window7_224.ms_in1k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "model.safetensors"))
    m = build_model(spec_of("model.pretrain_choice=imagenet", f"model.backbone={SWIN_T}"), 5, verbose=False)
    assert torch.equal(m.backbone.swin.layers[2].blocks[1].mlp.fc1.weight, src.layers[2].blocks[1].mlp.fc1.weight)
    run = m.eval()
    with torch.no_grad(): assert run(torch.randn(1, 3, 256, 128)).shape == (1, 256)


def make_ckpt(tmp_path, num_classes=8, *overrides, name="ck.pth"):
    spec = spec_of("model.backbone=resnet_18", "model.feat_dim=64", *overrides)
    model = build_model(spec, num_classes, verbose=False).eval()
    path = save_checkpoint({"model": model.state_dict(), "num_classes": num_classes, "spec": spec.to_dict(),
                            "epoch": 2, "extra": torch.arange(3)}, tmp_path / name)
    return model, path


def test_checkpoint_round_trip(tmp_path):
    model, path = make_ckpt(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["ck.pth"]
    ck = load_checkpoint(path)
    assert ck["epoch"] == 2 and ck["num_classes"] == 8 and torch.equal(ck["extra"], torch.arange(3))
    m2, ck2 = model_from_checkpoint(path)
    assert not m2.training and isinstance(m2, ReidModel) and m2.feat_dim == 64
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad(): assert torch.allclose(m2(x), model(x))
    m3, _ = model_from_checkpoint(str(path), spec_of("model.with_flip_feature=true", "model.neck_feat=before"))
    assert m3.with_flip_feature and m3.neck_feat == "before"


def test_checkpoint_ddp_prefix(tmp_path):
    model, _ = make_ckpt(tmp_path)
    spec = spec_of("model.backbone=resnet_18", "model.feat_dim=64")
    p = save_checkpoint({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "num_classes": 8,
                         "spec": spec.to_dict(), "epoch": 1}, tmp_path / "ddp.pth")
    m2, _ = model_from_checkpoint(p)
    assert torch.equal(m2.classifier.weight, model.classifier.weight)


def test_checkpoint_errors(tmp_path):
    _, path = make_ckpt(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing\.pth: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: cannot read the checkpoint"):
        load_checkpoint(cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"junk\.pth"):
        model_from_checkpoint(junk)
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: not a reid_nb checkpoint.*'model'"):
        load_checkpoint(tmp_path / "other.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth: not a reid_nb checkpoint"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"model": {}}, tmp_path / "nospec.pth")
    with pytest.raises(CheckpointError, match=r"nospec\.pth: .*'spec'"):
        model_from_checkpoint(tmp_path / "nospec.pth")
    with pytest.raises(CheckpointError, match="'model' state dict"):
        save_checkpoint({"epoch": 1}, tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()


def test_failed_checkpoint_write_is_one_clear_error(tmp_path, monkeypatch):
    def full_disk(obj, f): f.write(b"PK"); raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 2")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"ck\.pth: cannot write the checkpoint \(\[enforce fail.*MiB free on its disk\)"):
        save_checkpoint({"model": {}}, tmp_path / "ck.pth")
    assert list(tmp_path.iterdir()) == []                     # neither the file nor its temporary


def test_pretrain_self_skips_classifier(tmp_path, capsys):
    model, path = make_ckpt(tmp_path, 8)
    m = build_model(spec_of("model.backbone=resnet_18", "model.feat_dim=64", "model.pretrain_choice=self",
                            f"model.pretrained_model_path={path}"), 5)
    out = capsys.readouterr().out
    assert "classifier skipped" in out and "mismatched (1): classifier.weight" in out
    assert torch.equal(m.backbone.net.layer4[1].conv2.weight, model.backbone.net.layer4[1].conv2.weight)
    assert torch.equal(m.reduction.weight, model.reduction.weight)
    assert m.classifier.weight.shape == (5, 64)
    # an unrelated state dict in the checkpoint is reported key by key
    save_checkpoint({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "foo.pth")
    build_model(spec_of("model.backbone=resnet_18", "model.pretrain_choice=self",
                        f"model.pretrained_model_path={tmp_path / 'foo.pth'}"), 5)
    out = capsys.readouterr().out
    assert "0 tensors loaded" in out and "unexpected (1): foo.weight" in out and "missing" in out


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
        assert triplet_loss(feat, labels, margin).item() == pytest.approx(brute_triplet(feat, labels, margin), abs=1e-4)


def test_hard_example_mining_uneven_ids():
    feat = torch.randn(7, 5)
    labels = torch.tensor([3, 3, 3, 1, 2, 2, 0])
    ap, an = hard_example_mining(euclidean_dist(feat, feat), labels)
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
    assert torch.allclose(cross_entropy_label_smooth(logits, targets, eps), want, atol=1e-6)
    assert torch.allclose(cross_entropy_label_smooth(logits, targets, 0.0), F.cross_entropy(logits, targets), atol=1e-6)


def test_center_loss_value_and_pull():
    feat, centers = torch.randn(6, 4), torch.randn(3, 4)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(center_loss(feat, centers, targets), ((feat - centers[targets]) ** 2).sum(1).mean())
    cl = CenterLoss(3, 4)
    f = feat.clone().requires_grad_(True)
    opt = torch.optim.SGD([f, cl.centers], lr=0.1)
    d0 = (f - cl.centers[targets]).norm(dim=1).detach()
    for _ in range(5):
        opt.zero_grad(); cl(f, targets).backward(); opt.step()
    d1 = (f - cl.centers[targets]).norm(dim=1).detach()
    assert torch.all(d1 < d0)


@pytest.mark.parametrize("overrides,keys,has_center", [
    ((), {"id", "triplet"}, False),
    (("dataset.sampler=softmax",), {"id"}, False),
    (("dataset.sampler=softmax", "model.metric_loss_type=triplet_center"), {"id"}, False),
    (("model.with_center_loss=true",), {"id", "triplet", "center"}, True),
    (("model.metric_loss_type=center",), {"id", "center"}, True),
    (("model.metric_loss_type=triplet_center",), {"id", "triplet", "center"}, True),
    (("dataset.sampler=triplet",), {"triplet"}, False),
])
def test_make_loss_terms(overrides, keys, has_center):
    spec = spec_of("train.optim.center_loss_weight=0.01", "model.label_smooth=false", *overrides)
    loss = make_loss(spec, 4, 16)
    logits, feat, targets = torch.randn(8, 4), torch.randn(8, 16), torch.arange(4).repeat(2)
    total, parts = loss(logits, feat, targets)
    assert set(parts) == keys and (loss.center is not None) == has_center
    assert torch.allclose(total, sum(parts.values()))
    if "id" in parts: assert torch.allclose(parts["id"], F.cross_entropy(logits, targets))
    if "triplet" in parts: assert torch.allclose(parts["triplet"], triplet_loss(feat, targets, 0.3))
    if has_center:
        assert loss.center.centers.shape == (4, 16)
        assert torch.allclose(parts["center"], 0.01 * center_loss(feat, loss.center.centers, targets))


def test_tiny_overfit():
    "8 ids x 4 coloured-noise images at 64x32, ResNet-18 from scratch: 30 Adam steps more than halve the loss."
    torch.manual_seed(0)
    spec = spec_of("model.backbone=resnet_18", "model.input_height=64", "model.input_width=32", "model.feat_dim=64",
                   "model.with_center_loss=true")
    model = build_model(spec, 8, verbose=False).train()
    loss_fn = make_loss(spec, 8, model.feat_dim)
    targets = torch.arange(8).repeat_interleave(4)
    images = torch.rand(8, 3, 1, 1)[targets] + 0.3 * torch.randn(32, 3, 64, 32)
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    history = []
    for _ in range(30):
        total, parts = loss_fn(*model(images), targets)
        opt.zero_grad(); total.backward(); opt.step()
        history.append(total.item())
    assert set(parts) == {"id", "triplet", "center"}
    assert history[-1] < 0.5 * history[0], history


def test_imagenet_wrong_file_is_an_error(tmp_path):
    import torchvision
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match="tensors fit resnet_50"):
        build_model(spec_of("model.pretrain_choice=imagenet", "model.backbone=resnet_50",
                            f"model.pretrained_model_path={tmp_path / 'r18.pth'}"), 5, verbose=False)
