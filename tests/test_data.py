"""What the data notebooks cannot check on their own: loaders with worker processes, sampler
property sweeps over many random data sets, and the embedded synthetic set end to end."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_nb.config import DataError, load_spec
from reid_nb.data import load_data, make_eval_loader, read_split, set_epoch
from reid_nb.samplers import PKSampler, ShuffleSampler, make_train_loader

TINY = [
    "model.input_height=32",
    "model.input_width=16",
    "dataset.batch_size=8",
    "dataset.num_instances=2",
    "dataset.val_batch_size=4",
    "dataset.num_workers=0",
    "dataset.padding=2",
]


def write_images(folder: Path, names, size=(16, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.new("RGB", size, ((40 * i) % 256, 100, 200)).save(folder / n)
    return folder


@pytest.fixture
def market(tmp_path):
    "6 training ids (3 images each over 2 cameras) plus junk and a distractor; query and gallery."
    train = [
        f"{p:04d}_c{1 + f % 2}s1_{f:06d}_00.jpg" for p in (2, 5, 9, 11, 40, 41) for f in range(3)
    ]
    write_images(
        tmp_path / "bounding_box_train",
        train + ["-1_c1s1_000001_00.jpg", "0000_c2s1_000001_00.jpg"],
    )
    write_images(tmp_path / "query", ["0100_c1s1_000001_00.jpg", "0101_c2_f0000001.jpg"])
    write_images(
        tmp_path / "bounding_box_test",
        ["0100_c2s1_000003_00.jpg", "0101_c1_f0000009.png", "0000_c3s1_000004_00.jpg"],
    )
    return tmp_path


def spec_for(root: Path, *extra):
    dirs = [
        f"dataset.train_dataset_dir={root / 'bounding_box_train'}",
        f"dataset.query_dataset_dir={root / 'query'}",
        f"dataset.test_dataset_dir={root / 'bounding_box_test'}",
        "dataset.num_classes=6",
    ]
    return load_spec(overrides=dirs + TINY + list(extra))


# --- worker processes ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("content", [b"not an image", "truncated"])
def test_corrupt_image_through_loader(tmp_path, num_workers, content):
    names = ["0001_c1s1_000001_00.jpg", "0002_c1s1_000001_00.jpg", "0003_c1s1_000001_00.jpg"]
    d = write_images(tmp_path / "q", names)
    bad = d / "0002_c1s1_000001_00.jpg"
    if content == "truncated":
        Image.new("RGB", (64, 128), (1, 2, 3)).save(bad, quality=95)
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_bytes(content)
    spec = load_spec(
        overrides=TINY + [f"dataset.num_workers={num_workers}", "dataset.val_batch_size=1"]
    )
    loader = make_eval_loader(spec, read_split(d, "query"))
    with pytest.raises(DataError) as e:
        list(loader)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: cannot decode image"), msg
    assert "\n" not in msg and "Traceback" not in msg
    with pytest.raises(DataError, match="cannot decode image"):  # still usable: the same error
        list(loader)


def test_loaders_with_workers(market):
    spec = spec_for(market, "dataset.num_workers=1")
    data = load_data(spec, verbose=False)
    tl, el = make_train_loader(spec, data.train), make_eval_loader(spec, data.gallery)
    assert tl.num_workers == 1 and tl.persistent_workers and el.persistent_workers
    set_epoch(tl, 0)
    first = [b[3].tolist() for b in tl]
    assert first == tl.batch_sampler.epoch_batches(0)
    set_epoch(tl, 0)
    assert [b[3].tolist() for b in tl] == first  # persistent workers, same order
    assert [b[3].tolist() for b in el] == [[0, 1, 2]]


def test_loader_without_set_epoch_moves_on(market):
    """The classic bug: one epoch order replayed forever when set_epoch is forgotten (here with
    a worker, as the loader then calls iter() on the sampler more than once)."""
    spec = spec_for(market, "dataset.num_workers=1")
    tl = make_train_loader(spec, load_data(spec, verbose=False).train)
    orders = [[b[3].tolist() for b in tl] for _ in range(3)]
    assert orders[0] != orders[1] != orders[2]
    assert tl.batch_sampler.epoch == 2
    assert orders == [tl.batch_sampler.epoch_batches(e) for e in range(3)]


# --- sampler sweeps -----------------------------------------------------------------------------


def uneven_pids(seed=0, n_ids=40):
    counts = np.random.default_rng(seed).integers(1, 12, n_ids)  # some ids have fewer than K
    return np.repeat(np.arange(n_ids), counts)


def check_pk_batch(batch, pids, P, K):
    ids = pids[batch]
    assert len(batch) == P * K
    heads = ids[0::K]
    assert len(set(heads.tolist())) == P  # P identities, none twice
    for j in range(K):
        assert (ids[j::K] == heads).all()  # K consecutive images of each


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_pk_sweep(seed, world_size):
    "Random data sets: full P x K batches, every id every epoch, ranks disjoint and equally long."
    pids = uneven_pids(seed, n_ids=20 + 7 * seed)
    P, K = 4, 4
    ranks = [
        PKSampler(pids, P * K, K, seed=seed, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for epoch in (0, 3):
        plan = ranks[0].plan(epoch)
        assert len(plan) == len(ranks[0]) * world_size
        for batch in plan:
            check_pk_batch(batch, pids, P, K)
        assert set(pids[np.concatenate(plan)].tolist()) == set(pids.tolist())
        seen = [r.epoch_batches(epoch) for r in ranks]
        assert len({len(s) for s in seen}) == 1
        assert sorted(map(tuple, sum(seen, []))) == sorted(map(tuple, plan))
    assert ranks[0].plan(0) != ranks[0].plan(1)


def test_pk_epoch_length_like_strong_baseline():
    pids, K = uneven_pids(1, 200), 4
    counts = np.bincount(pids)
    estimate = sum(max(n, K) - max(n, K) % K for n in counts)  # RandomIdentitySampler's length
    s = PKSampler(pids, batch_size=32, num_instances=K)
    assert abs(len(s) * 32 - estimate) < 32


@pytest.mark.parametrize("n, batch_size, world_size", [(101, 10, 2), (57, 8, 3), (64, 16, 1)])
def test_shuffle_sweep(n, batch_size, world_size):
    ranks = [
        ShuffleSampler(list(range(n)), batch_size, seed=1, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    seen = [list(r) for r in ranks]
    assert len({len(s) for s in seen}) == 1 and all(len(b) == batch_size for s in seen for b in s)
    assert len(seen[0]) == -(-n // world_size) // batch_size
    flat = [i for s in seen for b in s for i in b]
    if n % world_size == 0:  # no wrap-around padding: no index twice
        assert len(set(flat)) == len(flat)
    assert [list(r) for r in ranks] != seen  # the next epoch


# --- the synthetic set --------------------------------------------------------------------------


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
