"""The evaluate task against the slow reference of reid_nb.metrics on the shared synthetic set,
larger than the chapter's example, re-ranking off and on. The chapter's own checks are in
nbs/09_evaluate.ipynb."""

import json

import numpy as np
import pytest
import torch.nn.functional as F

from reid_nb.checkpoint import random_init_checkpoint
from reid_nb.evaluate import RANKS, compute_distances, run_evaluation
from reid_nb.metrics import ranking_metrics_reference


def euclidean_distances(dist):
    "Squared Euclidean distances of the L2-normalised embeddings, in float64: [Q, G]."
    query = F.normalize(dist.qf.double(), dim=1)
    gallery = F.normalize(dist.gf.double(), dim=1)
    return ((query[:, None] - gallery[None]) ** 2).sum(-1).numpy()


def scorable_queries(dist):
    "Queries with at least one gallery image of the same person from another camera."
    same_person = dist.q_pids[:, None] == dist.g_pids[None]
    other_camera = dist.q_camids[:, None] != dist.g_camids[None]
    return int((same_person & other_camera).any(1).sum())


@pytest.mark.parametrize("re_ranking", [False, True])
def test_evaluation_matches_the_reference(tiny_spec, tmp_path, re_ranking):
    ckpt = random_init_checkpoint(tiny_spec(), tmp_path / "fresh.pth")
    flag = "true" if re_ranking else "false"
    spec = tiny_spec(f"evaluate.checkpoint={ckpt}", f"re_ranking.re_ranking={flag}")
    result = run_evaluation(spec, verbose=False)
    dist = compute_distances(spec, verbose=False)
    distances = dist.distmat_rr if re_ranking else euclidean_distances(dist)
    ids = (dist.q_pids, dist.g_pids, dist.q_camids, dist.g_camids)
    reference = ranking_metrics_reference(distances, *ids)
    assert result["mAP"] == pytest.approx(reference["mAP"], abs=1e-6)
    assert result["mINP"] == pytest.approx(reference["mINP"], abs=1e-6)
    for rank in RANKS:
        assert result[f"rank{rank}"] == pytest.approx(reference["cmc"][rank - 1], abs=1e-6)
    saved = json.loads(open(result["files"]["metrics"]).read())
    assert saved["metrics"]["num_valid"] == scorable_queries(dist) > 0
    np.testing.assert_allclose(saved["metrics"]["cmc"], reference["cmc"], atol=1e-6)
    assert ("with_re_ranking" in saved) is re_ranking


def test_reports_draw_the_maps_and_the_explorer_toggles_them(tiny_spec, tmp_path):
    "The evaluate report's grid with maps, the explorer's map toggle, the inference map."
    from PIL import Image

    from reid_nb.evaluate import match_explorer, run_inference

    ckpt = random_init_checkpoint(tiny_spec(), tmp_path / "fresh.pth")
    spec = tiny_spec(f"evaluate.checkpoint={ckpt}", f"inference.checkpoint={ckpt}")
    result = run_evaluation(spec, verbose=False, num_sampled_queries=4, topk=5)
    maps = Image.open(result["files"]["attention_maps"])
    assert maps.format == "PNG" and maps.size[1] > Image.open(result["files"]["cmc_curve"]).size[1]
    box = match_explorer(compute_distances(spec, verbose=False), topk=5, size=(64, 32))
    plain = box.image.value
    box.maps.value = "similarity"  # what a click on the toggle does
    assert box.image.value != plain and "similarity maps" in box.info.value
    run_inference(spec, verbose=False)
    assert Image.open(spec.inference.output_embedding_plot).format == "PNG"
