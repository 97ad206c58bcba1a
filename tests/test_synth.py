"""The synthetic set at its default size (5,800 images): too slow for the notebook's checks, which
test every piece on small sets."""

import json
import time

import pytest

from reid_nb.synth import MANIFEST, SPLITS, make_dataset, synth_overrides


@pytest.mark.slow
def test_default_set_is_complete_and_found_again(tmp_path):
    root = make_dataset(tmp_path / "full")
    counts = {split: len(list((root / split).glob("*.jpg"))) for split in SPLITS}
    manifest = json.loads((root / MANIFEST).read_text())
    assert sum(counts.values()) == manifest["num_images"] == 5800
    assert counts == manifest["counts"]
    assert synth_overrides(root)[-1] == "dataset.num_classes=300"
    start = time.perf_counter()
    make_dataset(root)  # complete: nothing is redrawn
    assert time.perf_counter() - start < 5
