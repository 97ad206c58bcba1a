"""The explain chapter's maps on tiny inputs: the similarity decomposition is exact, every kind of
map has the crop's shape and range, the synthetic person masks and the embedding map. The
chapter's own checks (ResNet-50, Swin, a trained model) are in nbs/08a_explain.ipynb."""

import numpy as np
import pytest
import torch
from PIL import Image

from reid_nb.explain import (
    MAP_KINDS,
    MAP_STYLES,
    decomposition_gap,
    explain_maps,
    explained_rows,
    load_batch,
    name_pids,
    plot_embedding_map,
    project_2d,
    randomise_bnneck,
    synthetic_masks,
)
from reid_nb.model import ReidModel, build_backbone, build_model


@pytest.fixture(scope="module")
def images():
    "Three random 'crops' at 64x32."
    return torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(0))


def test_similarity_terms_add_up_to_the_similarity(images):
    torch.manual_seed(0)
    model = ReidModel(build_backbone("resnet_18"), 4, feat_dim=32)
    randomise_bnneck(model)  # a BNNeck that scales and shifts, so a mistake would show
    for neck_feat in ("after", "before"):
        for flip in (False, True):
            model.neck_feat, model.with_flip_feature = neck_feat, flip
            gap = decomposition_gap(model, images[0], images[1:])
            assert gap < 1e-4, (neck_feat, flip, gap)


def test_every_kind_of_map_fits_the_crop(images):
    torch.manual_seed(0)
    model = ReidModel(build_backbone("resnet_18"), 4, feat_dim=32).eval()
    for kind in MAP_KINDS:
        query_maps, gallery_maps = explain_maps(model, images[0], images[1:], kind)
        assert query_maps.shape == gallery_maps.shape == (2, 64, 32)
        low, high = MAP_STYLES[kind][1]
        both = torch.cat([query_maps, gallery_maps])
        assert both.min() >= low - 1e-6 and both.max() <= high + 1e-6
        assert both.abs().max() == pytest.approx(1.0, abs=1e-5)  # scaled to the largest
    assert all(parameter.grad is None for parameter in model.parameters())


def test_explained_rows_and_masks_on_the_synthetic_set(synth_root, tiny_spec):
    spec = tiny_spec()
    masks = synthetic_masks(synth_root, "query")
    paths = list(masks)[:3]
    assert all(0.05 < masks[path].mean() < 0.7 for path in paths)  # a person, not the whole box
    assert load_batch(spec, paths)[1].shape == (3, 64, 32, 3)
    model = build_model(spec, 12, verbose=False)
    rows = explained_rows(model, spec, [(paths[0], [(paths[1], True), (paths[2], False)])])
    query_cell, matches = rows[0]
    assert query_cell.shape == (64, 32, 3) and query_cell.dtype == np.uint8
    assert [same for _, same in matches] == [True, False]


def test_embedding_map(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = np.concatenate([rng.normal(0, 0.1, (20, 6)), rng.normal(0, 0.1, (20, 6)) + 2])
    first_axis = project_2d(embeddings)[:, 0]
    assert (np.sign(first_axis[:20]) == -np.sign(first_axis[20:])).all()  # two clouds apart
    names = [f"{pid:04d}_c1s1_000001_01.jpg" for pid in [1] * 20 + [2] * 20]
    assert name_pids(names).tolist() == [1] * 20 + [2] * 20
    is_query = np.arange(40) % 10 == 0
    plot_embedding_map(embeddings, name_pids(names), is_query, tmp_path / "map.png")
    assert Image.open(tmp_path / "map.png").format == "PNG"
