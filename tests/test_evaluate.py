"""The evaluate and inference tasks on the synthetic set: files written, plots, metrics, JSON round trip, explorer."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from reid_nb.config import ReidError, load_spec
from reid_nb.evaluate import (COLOURS, compute_distances, extract_features, list_images, match_explorer,
                              run_evaluation, run_inference)


def fresh_checkpoint(spec, path):
    "A freshly initialised model of `spec` saved as a reid_nb checkpoint at `path`."
    from reid_nb.model import build_model, save_checkpoint
    torch.manual_seed(0)
    model = build_model(spec, spec.dataset.num_classes, verbose=False)
    return save_checkpoint({"model": model.state_dict(), "num_classes": spec.dataset.num_classes,
                            "spec": spec.to_dict(), "epoch": 0}, path)


@pytest.fixture
def eval_spec(tiny_spec, tmp_path):
    "`make(*overrides)`: a tiny spec whose evaluate/inference checkpoint is a fresh resnet_18."
    ckpt = fresh_checkpoint(tiny_spec(), tmp_path / "fresh.pth")
    return lambda *o: tiny_spec(f"evaluate.checkpoint={ckpt}", f"inference.checkpoint={ckpt}", *o)


def colour_pixels(path, colour):
    img = np.asarray(Image.open(path).convert("RGB"))
    return int((img == np.array(colour, np.uint8)).all(-1).sum())


def test_evaluate_trained_model_writes_results(tiny_spec):
    "One epoch of training (fresh init when the trainer is absent), then evaluation with re-ranking."
    spec = tiny_spec()
    try:
        from reid_nb.train import train
        ckpt = train(spec, verbose=False)["checkpoint"]
    except ImportError:
        ckpt = fresh_checkpoint(spec, spec.train.results_dir + "/reid_model_latest.pth")
    spec = tiny_spec(f"evaluate.checkpoint={ckpt}", "re_ranking.re_ranking=true")
    result = run_evaluation(spec, verbose=False)
    out = json.loads(open(result["files"]["metrics"]).read())
    assert out["re_ranking"]["re_ranking"] is True
    for key in ("without_re_ranking", "with_re_ranking"):
        m = out[key]
        assert 0 <= m["mAP"] <= 1 and 0 <= m["mINP"] <= 1
        assert m["rank-1"] <= m["rank-5"] <= m["rank-10"] <= 1
        assert len(m["cmc"]) == 50 and m["num_valid"] > 0
    assert out["metrics"] == out["with_re_ranking"]
    assert result["mAP"] == out["with_re_ranking"]["mAP"]
    assert load_spec(result["files"]["spec"]).evaluate.checkpoint == str(ckpt)
    # both plots are PNGs where the spec asked for them
    for key, target in (("cmc_curve", spec.evaluate.output_cmc_curve_plot),
                        ("sampled_matches", spec.evaluate.output_sampled_matches_plot)):
        assert result["files"][key] == target
        assert Image.open(target).format == "PNG"
    # the grid has query (blue), same-person (green) and other-person (red) borders
    for colour in COLOURS.values():
        assert colour_pixels(spec.evaluate.output_sampled_matches_plot, colour) > 100


def test_metrics_agree_with_direct_computation(eval_spec):
    "The reported figures against the sort-then-scan reference on squared Euclidean distances of L2-normalised features."
    import torch.nn.functional as F
    from reid_nb.metrics import evaluate_reference
    spec = eval_spec("re_ranking.re_ranking=false")
    result = run_evaluation(spec, verbose=False)
    assert "with_re_ranking" not in result and result["re_ranking"]["re_ranking"] is False
    d = compute_distances(spec, verbose=False)
    qf, gf = F.normalize(d.qf.double(), dim=1), F.normalize(d.gf.double(), dim=1)
    distmat = ((qf[:, None] - gf[None]) ** 2).sum(-1).numpy()
    direct = evaluate_reference(distmat, d.q_pids, d.g_pids, d.q_camids, d.g_camids)
    assert result["mAP"] == pytest.approx(direct["mAP"])
    assert result["rank-1"] == pytest.approx(direct["cmc"][0])
    assert result["rank-5"] == pytest.approx(direct["cmc"][4])


def test_extract_features_matches_the_model(eval_spec):
    from reid_nb.data import load_eval_data, make_eval_loader
    from reid_nb.model import model_from_checkpoint
    spec = eval_spec()
    model, _ = model_from_checkpoint(spec.evaluate.checkpoint, spec)
    data = load_eval_data(spec.evaluate.query_dataset, spec.evaluate.test_dataset, verbose=False)
    feats, pids, camids = extract_features(model, make_eval_loader(spec, data.query))
    x = torch.stack([make_eval_loader(spec, data.query).dataset[i][0] for i in (0, 5)])
    with torch.no_grad(): ref = model(x)
    torch.testing.assert_close(feats[[0, 5]], ref, atol=1e-5, rtol=1e-5)
    assert pids.tolist() == [r.pid for r in data.query] and camids.tolist() == [r.camid for r in data.query]


def test_evaluate_without_checkpoint_names_the_key(tiny_spec):
    with pytest.raises(ReidError, match="evaluate.checkpoint"):
        run_evaluation(tiny_spec(), verbose=False)


def test_inference_json_round_trip(eval_spec):
    from reid_nb.data import build_transforms, load_image
    from reid_nb.model import model_from_checkpoint
    spec = eval_spec("inference.save_npy=true")
    out = run_inference(spec, verbose=False)
    assert str(out) == spec.inference.output_file
    items = json.loads(out.read_text())
    paths = list_images(spec.inference.query_dataset) + list_images(spec.inference.test_dataset)
    assert [i["img_path"] for i in items] == paths
    emb = np.array([i["embedding"] for i in items], dtype=np.float32)
    assert emb.shape == (len(paths), 64)
    np.testing.assert_array_equal(np.load(out.with_suffix(".npy")), emb)
    # the embeddings are the model's for those images
    model, _ = model_from_checkpoint(spec.inference.checkpoint, spec)
    tf = build_transforms(spec, is_train=False)
    pick = [0, 7, len(paths) - 1]
    with torch.no_grad(): ref = model(torch.stack([tf(load_image(paths[i])) for i in pick])).numpy()
    np.testing.assert_allclose(emb[pick], ref, atol=1e-5)


def test_inference_leaves_nothing_on_a_bad_image(eval_spec, tmp_path):
    import shutil
    from reid_nb.data import DataError
    spec = eval_spec()
    gallery = tmp_path / "gallery"
    shutil.copytree(spec.inference.test_dataset, gallery)
    (gallery / "0001_c1s1_000001_00.jpg").write_bytes(b"not a jpeg")
    spec = eval_spec(f"inference.test_dataset={gallery}", "inference.save_npy=true")
    with pytest.raises(DataError, match="0001_c1s1_000001_00.jpg"):
        run_inference(spec, verbose=False)
    out_dir = tmp_path / "results" / "inference"
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_match_explorer_updates_with_the_query(eval_spec):
    d = compute_distances(eval_spec("re_ranking.re_ranking=true"), verbose=False)
    box = match_explorer(d, size=(64, 32))
    first_img, first_info = box.image.value, box.info.value
    assert first_img[:4] == b"\x89PNG" and "query 0" in first_info
    box.slider.value = 4
    assert box.image.value != first_img and "query 4" in box.info.value
    shown = box.info.value
    box.rerank.value = False
    assert box.info.value != shown
