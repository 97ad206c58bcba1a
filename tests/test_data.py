"Market-1501 parsing, transforms, samplers and loaders (reid_nb.data, reid_nb.samplers)."
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid_nb.config import load_spec
from reid_nb.data import (DataError, Record, build_transforms, load_data, load_eval_data, make_eval_loader,
                          make_train_loader, parse_name, read_split, set_epoch)
from reid_nb.samplers import PKSampler, ShuffleSampler, make_sampler

TINY = ["model.input_height=32", "model.input_width=16", "dataset.batch_size=8", "dataset.num_instances=2",
        "dataset.val_batch_size=4", "dataset.num_workers=0", "dataset.padding=2"]


def write_images(folder: Path, names, size=(16, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.new("RGB", size, ((40 * i) % 256, 100, 200)).save(folder / n)
    return folder


@pytest.fixture
def market(tmp_path):
    "6 training ids (3 images each over 2 cameras) plus junk and a distractor; query and gallery."
    train = [f"{p:04d}_c{1 + f % 2}s1_{f:06d}_00.jpg" for p in (2, 5, 9, 11, 40, 41) for f in range(3)]
    write_images(tmp_path / "bounding_box_train", train + ["-1_c1s1_000001_00.jpg", "0000_c2s1_000001_00.jpg"])
    write_images(tmp_path / "query", ["0100_c1s1_000001_00.jpg", "0101_c2_f0000001.jpg", "-1_c1s1_000002_00.jpg"])
    write_images(tmp_path / "bounding_box_test", ["0100_c2s1_000003_00.jpg", "0101_c1_f0000009.png",
                                                  "0000_c3s1_000004_00.jpg", "-1_c3s1_000005_00.jpg"])
    return tmp_path


def spec_for(root: Path, *extra):
    dirs = [f"dataset.train_dataset_dir={root / 'bounding_box_train'}", f"dataset.query_dataset_dir={root / 'query'}",
            f"dataset.test_dataset_dir={root / 'bounding_box_test'}", "dataset.num_classes=6"]
    return load_spec(overrides=dirs + TINY + list(extra))


# --- names and splits -------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("0002_c1s1_000451_03.jpg", (2, 1)), ("0001_c2_f0046182.jpg", (1, 2)), ("-1_c3s1_000001_00.jpg", (-1, 3)),
    ("0000_c6s4_002427_02.png", (0, 6)), ("Thumbs.db", None), ("img_c1.jpg", None), ("-_c1.jpg", None)])
def test_parse_name(name, expected):
    assert parse_name(name) == expected


def test_junk_and_distractors(market):
    gallery = read_split(market / "bounding_box_test", "gallery")
    assert [(Path(r.path).name, r.pid, r.camid) for r in gallery] == [
        ("0000_c3s1_000004_00.jpg", 0, 3), ("0100_c2s1_000003_00.jpg", 100, 2), ("0101_c1_f0000009.png", 101, 1)]
    assert all(isinstance(r, Record) for r in gallery)
    for split in ("train", "query"):
        pids = {r.pid for r in read_split(market / "bounding_box_train", split)}
        assert pids == {2, 5, 9, 11, 40, 41}        # no junk, no distractor
    assert [r.pid for r in read_split(market / "query", "query")] == [100, 101]


def test_load_data_relabels_and_prints(market, capsys):
    data = load_data(spec_for(market))
    assert (len(data.train), len(data.query), len(data.gallery), data.num_classes) == (18, 2, 3, 6)
    assert sorted({r.pid for r in data.train}) == list(range(6))
    assert data.train_pids == (2, 5, 9, 11, 40, 41)
    assert [r.pid for r in data.query] == [100, 101]           # query/gallery keep their ids
    out = capsys.readouterr().out
    assert "# ids" in out and "train" in out and "gallery" in out
    ev = load_eval_data(market / "query", market / "bounding_box_test", verbose=False)
    assert ev.train == [] and ev.query == data.query and ev.gallery == data.gallery


def test_num_classes_check(market):
    with pytest.raises(DataError, match=r"dataset.num_classes is 4 but .* holds 6 person ids"):
        load_data(spec_for(market, "dataset.num_classes=4"), verbose=False)
    with pytest.warns(UserWarning, match="dataset.num_classes is 10 but"):
        assert load_data(spec_for(market, "dataset.num_classes=10"), verbose=False).num_classes == 6


# --- bad data: one line naming the path --------------------------------------------------------

def test_missing_dir(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'gone'}: directory not found"):
        read_split(tmp_path / "gone")


def test_missing_dir_named_by_key(market):
    spec = spec_for(market, f"dataset.test_dataset_dir={market / 'gone'}")
    with pytest.raises(DataError, match=r"dataset.test_dataset_dir: .*gone: directory not found"):
        load_data(spec, verbose=False)


def test_empty_dir(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'e'}: directory is empty"):
        read_split(tmp_path / "e", "query")


def test_no_parseable_names(tmp_path):
    write_images(tmp_path / "d", ["a.jpg", "b.jpg", "c.png", "d.jpg", "e.jpg"])
    with pytest.raises(DataError) as e:
        read_split(tmp_path / "d")
    msg = str(e.value)
    assert str(tmp_path / "d") in msg and "no image name has the form" in msg
    assert "a.jpg, b.jpg, c.png, ... (5 in all)" in msg and "\n" not in msg


def test_no_images_only_folders(market):
    with pytest.raises(DataError, match="point to one split folder"):
        read_split(market)


def test_some_unparseable_names_warn(tmp_path):
    write_images(tmp_path / "d", ["0001_c1s1_000001_00.jpg", "oops.jpg"])
    with pytest.warns(UserWarning, match="oops.jpg"):
        assert len(read_split(tmp_path / "d")) == 1


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("content", [b"not an image", "truncated"])
def test_corrupt_image_through_loader(tmp_path, num_workers, content):
    d = write_images(tmp_path / "q", ["0001_c1s1_000001_00.jpg", "0002_c1s1_000001_00.jpg", "0003_c1s1_000001_00.jpg"])
    bad = d / "0002_c1s1_000001_00.jpg"
    if content == "truncated":
        Image.new("RGB", (64, 128), (1, 2, 3)).save(bad, quality=95)
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_bytes(content)
    spec = load_spec(overrides=TINY + [f"dataset.num_workers={num_workers}", "dataset.val_batch_size=1"])
    loader = make_eval_loader(spec, read_split(d, "query"))
    with pytest.raises(DataError) as e:
        list(loader)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: cannot decode image"), msg
    assert "\n" not in msg and "Traceback" not in msg
    with pytest.raises(DataError, match="cannot decode image"):   # the loader is still usable: same error
        list(loader)


# --- samplers -------------------------------------------------------------------------------

def uneven_pids(seed=0, n_ids=40):
    counts = np.random.default_rng(seed).integers(1, 12, n_ids)   # some ids have fewer than K images
    return np.repeat(np.arange(n_ids), counts)


def check_pk_batch(batch, pids, P, K):
    ids = pids[batch]
    assert len(batch) == P * K
    heads = ids[0::K]
    assert len(set(heads.tolist())) == P                  # P identities, none twice
    for j in range(K): assert (ids[j::K] == heads).all()  # K consecutive images of each


def test_pk_batches_and_coverage():
    pids = uneven_pids()
    s = PKSampler(pids, batch_size=16, num_instances=4, seed=5)
    epoch = list(s)
    assert len(epoch) == len(s) > 0
    for b in epoch: check_pk_batch(b, pids, 4, 4)
    assert set(pids[np.concatenate(epoch)].tolist()) == set(pids.tolist())   # every id each epoch


def test_pk_epoch_length_like_strong_baseline():
    pids, K = uneven_pids(1, 200), 4
    counts = np.bincount(pids)
    estimate = sum(max(n, K) - max(n, K) % K for n in counts)        # RandomIdentitySampler's length
    s = PKSampler(pids, batch_size=32, num_instances=K)
    assert abs(len(s) * 32 - estimate) < 32


def test_pk_order_changes_and_is_reproducible():
    pids = uneven_pids()
    a = PKSampler(pids, 16, 4, seed=5)
    e0, e1 = list(a), list(a)          # iterating again without set_epoch moves on
    assert e0 != e1
    a.set_epoch(1); assert list(a) == e1
    b = PKSampler(pids, 16, 4, seed=5)
    for e in (0, 1, 7):
        b.set_epoch(e); assert list(b) == a.epoch_batches(e)
    assert a.epoch_batches(3) != a.epoch_batches(4)
    assert PKSampler(pids, 16, 4, seed=6).epoch_batches(0) != e0


def test_pk_ids_with_few_images_drawn_with_replacement():
    pids = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    s = PKSampler(pids, batch_size=8, num_instances=4)
    for b in s: check_pk_batch(b, pids, 2, 4)


@pytest.mark.parametrize("pids", [np.repeat(np.arange(8), 8), uneven_pids(2)])
def test_pk_distributed_disjoint(pids):
    ranks = [PKSampler(pids, 16, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks: r.set_epoch(2)
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == len(ranks[0]) == len(ranks[1])
    assert not {tuple(b) for b in b0} & {tuple(b) for b in b1}
    assert sorted(map(tuple, b0 + b1)) == sorted(map(tuple, ranks[0].plan(2)))
    if len(set(np.bincount(pids).tolist())) == 1:     # every id has 2K images: no image on both ranks
        assert not set(np.concatenate(b0).tolist()) & set(np.concatenate(b1).tolist())
        assert len(b0) == 2


def test_shuffle_sampler_distributed():
    s = [ShuffleSampler(list(range(101)), 10, seed=1, rank=r, world_size=2) for r in (0, 1)]
    b0, b1 = list(s[0]), list(s[1])
    assert len(b0) == len(b1) == 5 and all(len(b) == 10 for b in b0 + b1)
    assert not set(sum(b0, [])) & set(sum(b1, []))
    assert list(s[0]) != b0


def test_sampler_errors():
    with pytest.raises(DataError, match="at least P = 4 person ids"):
        PKSampler([0, 0, 1, 1, 2, 2], batch_size=16, num_instances=4)
    with pytest.raises(DataError, match="too few for one batch"):
        ShuffleSampler([0, 1, 2], batch_size=8)


def test_make_sampler_from_spec():
    pids = np.repeat(np.arange(8), 4)
    s = make_sampler(load_spec(overrides=["dataset.batch_size=16", "dataset.num_instances=4", "train.seed=9"]), pids)
    assert isinstance(s, PKSampler) and (s.P, s.K, s.seed) == (4, 4, 9)
    assert isinstance(make_sampler(load_spec(overrides=["dataset.sampler=softmax", "dataset.batch_size=8"]), pids), ShuffleSampler)
    assert isinstance(make_sampler(load_spec(overrides=["dataset.sampler=triplet", "dataset.batch_size=8"]), pids), PKSampler)


# --- transforms ---------------------------------------------------------------------------------

def test_transforms_shapes_and_ranges():
    spec = load_spec(overrides=TINY + ["dataset.re_prob=1.0", "dataset.prob=0.5"])
    mean, std = torch.tensor(spec.dataset.pixel_mean), torch.tensor(spec.dataset.pixel_std)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 50, 3), dtype=np.uint8))
    ev = build_transforms(spec, is_train=False)(img)
    assert ev.shape == (3, 32, 16) and ev.dtype == torch.float32
    lo, hi = (-mean / std).view(3, 1, 1), ((1 - mean) / std).view(3, 1, 1)
    assert ((ev >= lo - 1e-5) & (ev <= hi + 1e-5)).all()
    torch.manual_seed(0)
    tr = build_transforms(spec, is_train=True)
    erased = 0
    for _ in range(10):
        t = tr(img)
        assert t.shape == (3, 32, 16)
        assert ((t >= torch.minimum(lo, mean.view(3, 1, 1)) - 1e-5) & (t <= hi + 1e-5)).all()
        erased += int((t == mean.view(3, 1, 1)).all(0).sum() > 0)
    assert erased == 10                                                # re_prob=1: always an erased patch


def test_transforms_grayscale():
    spec = load_spec(overrides=TINY + ["model.input_channels=1", "dataset.pixel_mean=[0.5]", "dataset.pixel_std=[0.5]"])
    img = Image.new("RGB", (20, 40), (255, 255, 255))
    for train in (True, False):
        assert build_transforms(spec, train)(img).shape == (1, 32, 16)
    assert torch.allclose(build_transforms(spec, False)(img), torch.ones(1, 32, 16))


# --- loaders ------------------------------------------------------------------------------------

def test_train_loader_batches(market):
    spec = spec_for(market)
    data = load_data(spec, verbose=False)
    loader = make_train_loader(spec, data.train)
    assert len(loader) == 2                        # 6 ids x 3 images: 6 chunks of K=2, P=4 ids a batch
    assert loader.pin_memory == torch.cuda.is_available() and loader.persistent_workers is False
    orders = []
    for epoch in (0, 1):
        set_epoch(loader, epoch)
        batches = list(loader)
        assert len(batches) == 2
        assert {p for b in batches for p in b[1].tolist()} == set(range(6))   # every id each epoch
        for imgs, pids, camids, idx in batches:
            assert imgs.shape == (8, 3, 32, 16)
            assert (pids[0::2] == pids[1::2]).all() and len(set(pids[0::2].tolist())) == 4
            assert [data.train[i].pid for i in idx.tolist()] == pids.tolist()
        orders.append([b[3].tolist() for b in batches])
    assert orders[0] != orders[1]


def test_train_loader_softmax_drops_last(market):
    spec = spec_for(market, "dataset.sampler=softmax", "dataset.batch_size=5")
    loader = make_train_loader(spec, load_data(spec, verbose=False).train)
    sizes = [len(b[1]) for b in loader]
    assert sizes == [5, 5, 5]                      # 18 images, the last 3 dropped


def test_loaders_with_workers(market):
    spec = spec_for(market, "dataset.num_workers=1")
    data = load_data(spec, verbose=False)
    tl, el = make_train_loader(spec, data.train), make_eval_loader(spec, data.gallery)
    assert tl.num_workers == 1 and tl.persistent_workers and el.persistent_workers
    set_epoch(tl, 0); first = [b[3].tolist() for b in tl]
    set_epoch(tl, 0); assert [b[3].tolist() for b in tl] == first      # persistent workers, same order
    assert [b[3].tolist() for b in el] == [[0, 1, 2]]


def test_loader_without_set_epoch_moves_on(market):
    "The classic bug: an epoch order replayed forever when set_epoch is forgotten."
    spec = spec_for(market, "dataset.num_workers=1")
    tl = make_train_loader(spec, load_data(spec, verbose=False).train)
    orders = [[b[3].tolist() for b in tl] for _ in range(3)]
    assert orders[0] != orders[1] != orders[2]
    assert tl.batch_sampler.epoch == 2
    assert orders[0] == tl.batch_sampler.epoch_batches(0)


def test_synthetic_set_loads(tiny_spec):
    "The embedded synthetic set reads as a Market-1501 set and feeds full PK batches."
    pytest.importorskip("reid_nb.synth")
    spec = tiny_spec()
    data = load_data(spec, verbose=False)
    assert data.num_classes == spec.dataset.num_classes == 12
    assert data.query and data.gallery
    loader = make_train_loader(spec, data.train)
    set_epoch(loader, 0)
    seen = set()
    for imgs, pids, _, _ in loader:
        assert imgs.shape == (16, 3, 64, 32) and len(set(pids.tolist())) == 4
        seen |= set(pids.tolist())
    assert seen == set(range(12))
