"""Imported weights give the source model's own embeddings.

fast-reid 1.4.0 and torchreid 0.2.5 are the real packages (test-only: `make peers`): each test
builds the source model with random weights, saves it the way the tool saves it, imports the
file, and compares reid_nb's embedding of a fixed image batch with the source model's forward,
each side preparing the images its own way. The reference tool and reid-strong-baseline are not
installable here: their state dicts are built from the layouts in their sources, and the
reference forward is written out below from their definition (a ResNet whose stem has no ReLU,
average pooling, an optional 1x1 reduction, the BNNeck).

Both sides run in float64: through fifty layers float32 rounding of the two sides' pixel
normalisations grows to about 1e-4, which would hide what 1e-5 is meant to measure, the mapping.
ResNet-50 sources take 10-30 s on two cores: those tests are marked slow."""

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms.functional import normalize

from reid_nb.checkpoint import model_from_checkpoint
from reid_nb.config import load_spec
from reid_nb.import_weights import import_checkpoint

torch.set_num_threads(2)
HEIGHT, WIDTH = 64, 32


def spec_of(*overrides):
    sizes = [f"model.input_height={HEIGHT}", f"model.input_width={WIDTH}"]
    return load_spec(overrides=["model.pretrain_choice=", *sizes, *overrides])


def images():
    "A fixed batch of 0-1 images [3, 3, H, W], in float64."
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)


def calibrate(model: torch.nn.Module, forward=None) -> torch.nn.Module:
    """Give every BatchNorm the running statistics of a random batch (cumulative average) and a
    random affine part, as training would: none is the identity, and the activations stay near 1
    through all stages, so that 1e-5 measures the mapping, not float rounding of huge values."""
    generator = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in norms:
        layer.reset_running_stats()
        layer.momentum = None
        layer.weight.data.copy_(torch.rand(layer.num_features, generator=generator) * 0.4 + 0.8)
        if layer.bias.requires_grad:  # a BNNeck's shift stays frozen at 0
            layer.bias.data.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)
    model.eval()
    for layer in norms:
        layer.train()
    with torch.no_grad():
        (forward or model)(torch.rand(8, 3, HEIGHT, WIDTH, generator=generator))
    return model.eval()


def reid_embedding(path, x01):
    "reid_nb's embedding of the 0-1 images `x01`, normalised by the imported spec's statistics."
    model, ckpt = model_from_checkpoint(path)
    model = model.double()
    dataset = ckpt["spec"]["dataset"]
    with torch.no_grad():
        return model(normalize(x01, dataset["pixel_mean"], dataset["pixel_std"]))


# ---- fast-reid -----------------------------------------------------------------------------------


PIXEL_MEAN_255 = [123.675, 116.28, 103.53]  # fast-reid's MODEL.PIXEL_MEAN / PIXEL_STD defaults
PIXEL_STD_255 = [58.395, 57.12, 57.375]


def fastreid_model(depth: str, embedding_dim: int = 0, num_classes: int = 10):
    "fast-reid's Baseline from its default config, Bag-of-Tricks head, random weights."
    pytest.importorskip("fastreid", reason="fast-reid is a test-only extra: make peers")
    from fastreid.config import get_cfg
    from fastreid.modeling import build_model

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.DEPTH = depth
    cfg.MODEL.BACKBONE.FEAT_DIM = 512 if depth in ("18x", "34x") else 2048
    cfg.MODEL.HEADS.WITH_BNNECK = True
    cfg.MODEL.HEADS.NECK_FEAT = "before"  # Bag-of-Tricks; the evaluation forward ignores it
    cfg.MODEL.HEADS.EMBEDDING_DIM = embedding_dim
    cfg.MODEL.HEADS.NUM_CLASSES = num_classes
    torch.manual_seed(0)
    model = build_model(cfg)
    return calibrate(model, lambda x: model(x * 255))


@pytest.mark.parametrize(
    "depth, embedding_dim, backbone, feat_dim",
    [
        ("18x", 0, "resnet_18", 512),
        pytest.param("50x", 256, "resnet_50", 256, marks=pytest.mark.slow),
    ],
)
def test_fastreid_embeddings_match(tmp_path, depth, embedding_dim, backbone, feat_dim):
    from fastreid.utils.checkpoint import Checkpointer

    source = fastreid_model(depth, embedding_dim)
    Checkpointer(source, str(tmp_path)).save("model_final")  # {"model": state_dict, ...}
    spec = spec_of(
        f"model.backbone={backbone}", f"model.feat_dim={feat_dim}", "dataset.num_classes=10"
    )
    report = import_checkpoint(
        spec, "fastreid", tmp_path / "model_final.pth", tmp_path / "out.pth", verbose=False
    )
    assert report["unused"] == [] and not report["classifier_dropped"]
    x01 = images()
    source = source.double()  # its mean/std buffers hold float32 roundings of its constants:
    source.pixel_mean.copy_(
        torch.tensor(PIXEL_MEAN_255, dtype=torch.float64).view(1, 3, 1, 1)
    )  # the exact values
    source.pixel_std.copy_(torch.tensor(PIXEL_STD_255, dtype=torch.float64).view(1, 3, 1, 1))
    with torch.no_grad():
        expected = source(x01 * 255)  # fast-reid takes 0-255 images and normalises inside
    assert expected.shape == (3, feat_dim)
    torch.testing.assert_close(
        reid_embedding(tmp_path / "out.pth", x01), expected, atol=1e-5, rtol=0
    )


def test_fastreid_variants_are_refused(tmp_path):
    source = fastreid_model("18x")
    state = dict(source.state_dict())
    state["heads.pool_layer.p"] = torch.tensor([3.0])  # learnable GeM, as in fast-reid's SBS
    torch.save({"model": state}, tmp_path / "sbs.pth")
    spec = spec_of("model.backbone=resnet_18", "model.feat_dim=512")
    with pytest.raises(Exception, match=r"sbs.pth: not supported: GeM pooling"):
        import_checkpoint(spec, "fastreid", tmp_path / "sbs.pth", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


# ---- torchreid -----------------------------------------------------------------------------------


def torchreid_module(name: str, module: str):
    """A module of the installed torchreid, loaded from its file: the package's `__init__` imports
    its data and engine stacks, which need SciPy, OpenCV, gdown and tensorboard."""
    found = importlib.util.find_spec("torchreid")
    if found is None:
        pytest.skip("torchreid is a test-only extra: make peers")
    path = f"{found.submodule_search_locations[0]}/reid/{module.replace('.', '/')}.py"
    loaded = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
    sys.modules[name] = loaded
    loaded.__spec__.loader.exec_module(loaded)
    return loaded


def torchreid_resnet50(tmp_path, num_classes: int, **state):
    "A calibrated torchreid ResNet-50, saved by torchreid's `save_checkpoint` with `state`."
    torchreid_module("torchreid.reid.utils.tools", "utils.tools")
    torchtools = torchreid_module("torchreid.reid.utils.torchtools", "utils.torchtools")
    resnet = torchreid_module("torchreid.reid.models.resnet", "models.resnet")
    torch.manual_seed(0)
    source = calibrate(resnet.resnet50(num_classes=num_classes, loss="softmax", pretrained=False))
    torchtools.save_checkpoint({"state_dict": source.state_dict(), **state}, str(tmp_path))
    return source  # in tmp_path/model.pth.tar-{epoch}


@pytest.mark.slow
def test_torchreid_resnet50_embeddings_match(tmp_path):
    source = torchreid_resnet50(tmp_path, 10, epoch=60, rank1=0.5)  # model.pth.tar-60
    spec = spec_of("model.feat_dim=2048", "dataset.num_classes=10")
    report = import_checkpoint(
        spec, "torchreid", tmp_path / "model.pth.tar-60", tmp_path / "out.pth", verbose=False
    )
    assert report["unused"] == ["classifier.bias"]
    assert report["spec"].model.last_stride == 2 and report["spec"].model.neck == ""
    x01 = images()
    with torch.no_grad():  # torchreid normalises with ImageNet's statistics in its transforms
        expected = source.double()(normalize(x01, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    torch.testing.assert_close(
        reid_embedding(tmp_path / "out.pth", x01), expected, atol=1e-5, rtol=0
    )


def test_torchreid_fc512_is_refused(tmp_path):
    resnet = torchreid_module("torchreid.reid.models.resnet", "models.resnet")
    source = resnet.resnet50_fc512(num_classes=10, loss="softmax", pretrained=False)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "fc512.pth")
    with pytest.raises(Exception, match="fc512.pth: not supported: torchreid's fc layers"):
        import_checkpoint(
            spec_of("model.feat_dim=512"), "torchreid", tmp_path / "fc512.pth", tmp_path / "o.pth"
        )


# ---- the reference tool and reid-strong-baseline: layouts from their sources --------------------


def baseline_state(feat_dim=2048, num_classes=10) -> dict:
    """A `Baseline` state dict of the reference / reid-strong-baseline: a ResNet-50 under `base.`
    (bottleneck blocks, torchvision's names), `base.feature` (1x1 conv with bias) when feat_dim is
    not 2048, `bottleneck` (BatchNorm1d, shift 0) and a bias-free `classifier`."""
    torch.manual_seed(0)
    net = calibrate(torchvision.models.resnet50())
    state = {f"base.{n}": v for n, v in net.state_dict().items() if not n.startswith("fc.")}
    if feat_dim != 2048:
        state["base.feature.weight"] = torch.randn(feat_dim, 2048, 1, 1) * 0.02
        state["base.feature.bias"] = torch.randn(feat_dim) * 0.1
    neck = torch.nn.BatchNorm1d(feat_dim)
    calibrate(neck, lambda _: neck(torch.randn(16, feat_dim) * 2 + 0.5))
    neck.bias.data.zero_()
    state.update({f"bottleneck.{n}": v for n, v in neck.state_dict().items()})
    state["classifier.weight"] = torch.randn(num_classes, feat_dim) * 0.001
    return state


def norm(x, state, prefix):
    return F.batch_norm(
        x,
        state[prefix + "running_mean"],
        state[prefix + "running_var"],
        state[prefix + "weight"],
        state[prefix + "bias"],
        False,
        0.0,
        1e-5,
    )


def bottleneck_block(x, state, prefix, stride):
    "A bottleneck block: 1x1, 3x3 (carrying the stride), 1x1, each normalised; the shortcut."
    out = F.relu(norm(F.conv2d(x, state[prefix + "conv1.weight"]), state, prefix + "bn1."))
    out = F.conv2d(out, state[prefix + "conv2.weight"], stride=stride, padding=1)
    out = F.relu(norm(out, state, prefix + "bn2."))
    out = norm(F.conv2d(out, state[prefix + "conv3.weight"]), state, prefix + "bn3.")
    if prefix + "downsample.0.weight" in state:
        x = F.conv2d(x, state[prefix + "downsample.0.weight"], stride=stride)
        x = norm(x, state, prefix + "downsample.1.")
    return F.relu(out + x)


def baseline_forward(state, x, last_stride=1, neck_feat="after"):
    "The reference's evaluation forward, written from its definition (no flip averaging)."
    state = {n: v.double() if v.is_floating_point() else v for n, v in state.items()}
    x = norm(F.conv2d(x, state["base.conv1.weight"], stride=2, padding=3), state, "base.bn1.")
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # no ReLU before it
    for stage, stride in zip((1, 2, 3, 4), (1, 2, 2, last_stride)):
        blocks = sorted(
            {int(n.split(".")[2]) for n in state if n.startswith(f"base.layer{stage}.")}
        )
        for block in blocks:
            x = bottleneck_block(
                x, state, f"base.layer{stage}.{block}.", stride if block == 0 else 1
            )
    if "base.feature.weight" in state:
        x = F.conv2d(x, state["base.feature.weight"], state["base.feature.bias"])
    pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return norm(pooled, state, "bottleneck.") if neck_feat == "after" else pooled


@pytest.mark.slow
@pytest.mark.parametrize("neck_feat", ["after", "before"])
def test_bot_embeddings_match(tmp_path, neck_feat):
    state = baseline_state()
    torch.save(state, tmp_path / "bot.pth")  # the Baseline's state_dict()
    spec = spec_of("model.feat_dim=2048", f"model.neck_feat={neck_feat}", "dataset.num_classes=10")
    import_checkpoint(spec, "bot", tmp_path / "bot.pth", tmp_path / "out.pth", verbose=False)
    x01 = images()
    with torch.no_grad():
        expected = baseline_forward(
            state, normalize(x01, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), neck_feat=neck_feat
        )
    torch.testing.assert_close(
        reid_embedding(tmp_path / "out.pth", x01), expected, atol=1e-5, rtol=0
    )


@pytest.mark.slow
def test_tao_lightning_embeddings_match(tmp_path):
    state = baseline_state(feat_dim=256, num_classes=751)
    lightning = {
        "epoch": 120,
        "global_step": 1000,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": {f"model.{n}": v for n, v in state.items()},
    }
    torch.save(lightning, tmp_path / "reid_model.ckpt")
    spec = spec_of()  # the reference's defaults: resnet_50, feat_dim 256, 751 ids
    report = import_checkpoint(
        spec, "tao", tmp_path / "reid_model.ckpt", tmp_path / "out.pth", verbose=False
    )
    assert report["unused"] == [] and report["spec"].model.stem_relu is False
    x01 = images()
    mean, std = spec.dataset.pixel_mean, spec.dataset.pixel_std  # the spec's, as the reference
    with torch.no_grad():
        expected = baseline_forward(state, normalize(x01, mean, std))
    torch.testing.assert_close(
        reid_embedding(tmp_path / "out.pth", x01), expected, atol=1e-5, rtol=0
    )


# ---- import -> evaluate -> export ---------------------------------------------------------------


def fastreid_file(tmp_path):
    from fastreid.utils.checkpoint import Checkpointer

    Checkpointer(fastreid_model("18x", num_classes=12), str(tmp_path)).save("model_final")
    return tmp_path / "model_final.pth", ["model.feat_dim=512"]


def torchreid_file(tmp_path):
    torchreid_resnet50(tmp_path, 12, epoch=1)
    return tmp_path / "model.pth.tar-1", ["model.backbone=resnet_50", "model.feat_dim=2048"]


def bot_file(tmp_path):
    torch.save(baseline_state(num_classes=12), tmp_path / "bot.pth")
    return tmp_path / "bot.pth", ["model.backbone=resnet_50", "model.feat_dim=2048"]


def tao_file(tmp_path):
    state = {f"model.{n}": v for n, v in baseline_state(feat_dim=256, num_classes=12).items()}
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "reid_model.ckpt")
    return tmp_path / "reid_model.ckpt", ["model.backbone=resnet_50", "model.feat_dim=256"]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["fastreid", "torchreid", "bot", "tao"])
def test_imported_model_evaluates_and_exports(tmp_path, tiny_spec, source):
    from reid_nb.evaluate import run_evaluation
    from reid_nb.export import run_export

    src, overrides = globals()[f"{source}_file"](tmp_path)
    out = tmp_path / "imported.pth"
    spec = tiny_spec(*overrides, "dataset.num_classes=12")
    import_checkpoint(spec, source, src, out, verbose=False)
    result = run_evaluation(tiny_spec(f"evaluate.checkpoint={out}"), verbose=False)
    assert 0.0 < result["mAP"] <= 1.0
    onnx = run_export(tiny_spec(f"export.checkpoint={out}"), verbose=False)
    assert onnx.is_file() and onnx.stat().st_size > 1_000_000
