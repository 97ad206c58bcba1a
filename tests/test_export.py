"""ONNX export: names, dynamic batch, onnxruntime agreement, overwrite refusal, inference from .onnx."""
import json

import numpy as np
import onnx
import pytest
import torch

from reid_nb.export import ExportError, OnnxEmbedder, check_onnx, export, onnx_path, sample_batches, to_onnx


def fresh_checkpoint(spec, path):
    from reid_nb.model import build_model, save_checkpoint
    torch.manual_seed(0)
    model = build_model(spec, spec.dataset.num_classes, verbose=False).eval()
    save_checkpoint({"model": model.state_dict(), "num_classes": spec.dataset.num_classes,
                     "spec": spec.to_dict(), "epoch": 1}, path)
    return model, path


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_exported(spec, model, path, feat_dim):
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [(i.name, dims(i)) for i in proto.graph.input] == [("input", ["batch", 3, 64, 32])]
    assert [(o.name, dims(o)) for o in proto.graph.output] == [("fc_pred", ["batch", feat_dim])]
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")][0] >= 17
    emb = OnnxEmbedder(path, device="cpu")
    real = sample_batches(spec)[0][0]
    for x in (real, real[:1], real[:7], torch.randn(5, 3, 64, 32)):  # the batch axis is dynamic
        with torch.no_grad(): ref = model(x).numpy()
        got = emb(x)
        assert got.shape == (len(x), feat_dim)
        assert np.abs(got - ref).max() <= 1e-4
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() >= 0.99999


def test_export_resnet(tiny_spec, tmp_path, capsys):
    spec = tiny_spec()
    model, ckpt = fresh_checkpoint(spec, tmp_path / "ckpt" / "reid.pth")
    out = export(tiny_spec(f"export.checkpoint={ckpt}"))
    assert out == tmp_path / "ckpt" / "reid.onnx"  # default: beside the checkpoint
    check_exported(spec, model, out, 64)
    printed = capsys.readouterr().out
    assert "opset 17" in printed and "[batch, 3, 64, 32]" in printed and "max abs difference" in printed
    assert "images of" in printed  # checked on real images of the dataset
    meta = OnnxEmbedder(out).metadata  # what inference from the .onnx needs travels with it
    assert meta["model"]["input_height"] == 64 and meta["dataset"]["pixel_mean"] == list(spec.dataset.pixel_mean)


def test_export_flip_average_any_batch(tiny_spec, tmp_path):
    "A flip-averaging model: the mirrored pass is in the graph and still works for every batch size."
    spec = tiny_spec("model.with_flip_feature=true", "export.opset_version=18")
    model, ckpt = fresh_checkpoint(spec, tmp_path / "flip.pth")
    out = export(tiny_spec("model.with_flip_feature=true", "export.opset_version=18", f"export.checkpoint={ckpt}",
                           f"export.onnx_file={tmp_path / 'out' / 'flip.onnx'}"), verbose=False)
    assert out == tmp_path / "out" / "flip.onnx"
    assert onnx.load(str(out)).opset_import[0].version == 18
    check_exported(spec, model, out, 64)


def test_export_refuses_to_overwrite(tiny_spec, tmp_path):
    spec = tiny_spec()
    _, ckpt = fresh_checkpoint(spec, tmp_path / "reid.pth")
    target = tmp_path / "model.onnx"
    target.write_bytes(b"precious")
    with pytest.raises(ExportError, match=f"{target}: already exists.*export.overwrite=true"):
        export(tiny_spec(f"export.checkpoint={ckpt}", f"export.onnx_file={target}"), verbose=False)
    assert target.read_bytes() == b"precious"
    export(tiny_spec(f"export.checkpoint={ckpt}", f"export.onnx_file={target}", "export.overwrite=true"), verbose=False)
    onnx.checker.check_model(onnx.load(str(target)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_export_needs_a_checkpoint(tiny_spec, tmp_path):
    with pytest.raises(ExportError, match="export.checkpoint"):
        export(tiny_spec(), verbose=False)
    with pytest.raises(Exception, match="missing.pth"):
        export(tiny_spec(f"export.checkpoint={tmp_path / 'missing.pth'}"), verbose=False)
    assert onnx_path(tiny_spec("export.checkpoint=/a/b.pth")).as_posix() == "/a/b.onnx"


def test_check_onnx_catches_a_disagreement(tiny_spec):
    from reid_nb.model import build_model
    spec = tiny_spec()
    a = build_model(spec, 4, verbose=False).eval()
    b = build_model(spec, 4, verbose=False).eval()
    data = to_onnx(a, (3, 64, 32))
    report = check_onnx(a, data, [torch.randn(1, 3, 64, 32), torch.randn(7, 3, 64, 32)])
    assert report["batch_sizes"] == [1, 7] and report["max_abs_diff"] <= 1e-4
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        check_onnx(b, data, [torch.randn(2, 3, 64, 32)])


def test_inference_from_onnx_matches_pth(tiny_spec, tmp_path):
    from reid_nb.evaluate import run_inference
    spec = tiny_spec()
    _, ckpt = fresh_checkpoint(spec, tmp_path / "reid.pth")
    onnx_file = export(tiny_spec(f"export.checkpoint={ckpt}"), verbose=False)
    # the inference spec need not repeat the model section: both checkpoints carry it
    pth = run_inference(tiny_spec(f"inference.checkpoint={ckpt}", f"inference.output_file={tmp_path / 'pth.json'}",
                                  "model.input_height=256", "model.input_width=128"), verbose=False)
    onx = run_inference(tiny_spec(f"inference.checkpoint={onnx_file}", f"inference.output_file={tmp_path / 'onnx.json'}",
                                  "model.input_height=256", "model.input_width=128"), verbose=False)
    a, b = json.loads(pth.read_text()), json.loads(onx.read_text())
    assert [i["img_path"] for i in a] == [i["img_path"] for i in b] and len(a) > 100
    ea, eb = np.array([i["embedding"] for i in a]), np.array([i["embedding"] for i in b])
    assert ea.shape == eb.shape == (len(a), 64)
    assert np.abs(ea - eb).max() <= 1e-4


@pytest.mark.slow
def test_export_swin_tiny(tiny_spec, tmp_path):
    spec = tiny_spec("model.backbone=swin_tiny_patch4_window7_224")
    model, ckpt = fresh_checkpoint(spec, tmp_path / "swin.pth")
    out = export(tiny_spec("model.backbone=swin_tiny_patch4_window7_224", f"export.checkpoint={ckpt}"), verbose=False)
    check_exported(spec, model, out, 64)


def test_evaluate_from_onnx_matches_pth(tiny_spec, tmp_path):
    from reid_nb.evaluate import run_evaluation
    spec = tiny_spec()
    _, ckpt = fresh_checkpoint(spec, tmp_path / "reid.pth")
    onnx_file = export(tiny_spec(f"export.checkpoint={ckpt}"), verbose=False)
    runs = [run_evaluation(tiny_spec(f"evaluate.checkpoint={c}", "re_ranking.re_ranking=false",
                                     f"evaluate.results_dir={tmp_path / c.suffix[1:]}"), verbose=False)
            for c in (ckpt, onnx_file)]
    for key in ("mAP", "rank-1", "rank-5", "mINP"):
        assert runs[1][key] == pytest.approx(runs[0][key], abs=1e-3)
