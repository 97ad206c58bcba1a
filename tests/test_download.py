"""ImageNet weights downloaded into an empty torch cache, from a loopback server standing in for
download.pytorch.org: fetched, checked and cached once; a corrupt or cut download leaves nothing."""

import hashlib
import io
from pathlib import Path

import pytest
import torch
import torchvision
from loopback import serving

from reid_nb import download, model
from reid_nb.config import load_spec
from reid_nb.model import ModelError, build_model

ROOT = Path(__file__).resolve().parent.parent
HOST = "https://download.pytorch.org"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    "Empty torch / Hugging Face caches, downloads on (whatever the environment says)."
    for key in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def weights_file(arch: str) -> tuple[bytes, str]:
    "A random torchvision `arch` as saved bytes, and its name with torchvision's hash prefix."
    buffer = io.BytesIO()
    torch.save(getattr(torchvision.models, arch)().state_dict(), buffer)
    data = buffer.getvalue()
    return data, f"{arch}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def point_sources_at(monkeypatch, server, file: str):
    "The lookup's source for every ResNet: `file` on download.pytorch.org, served by `server`."
    monkeypatch.setitem(download.MIRRORS, HOST, server.url)
    monkeypatch.setattr(
        model, "_resnet_sources", lambda name, hub: ([hub / file], [f"{HOST}/models/{file}"])
    )


def market_spec(*overrides):
    return load_spec(ROOT / "params" / "market1501.yaml", overrides=list(overrides))


def test_market1501_model_downloads_once(empty_cache, monkeypatch):
    data, file = weights_file("resnet50")
    with serving({f"/models/{file}": data}) as server:
        point_sources_at(monkeypatch, server, file)
        first = build_model(market_spec(), 751, verbose=False)
        assert server.requests == [f"/models/{file}"]
        assert sorted(p.name for p in empty_cache.iterdir()) == [file]
        assert (empty_cache / file).read_bytes() == data
        second = build_model(market_spec(), 751, verbose=False)
        assert len(server.requests) == 1  # the cache answered
    reference = torch.load(io.BytesIO(data), weights_only=True)
    for built in (first, second):
        assert torch.equal(
            built.backbone.net.layer4[2].conv3.weight, reference["layer4.2.conv3.weight"]
        )


def test_corrupt_and_cut_downloads_leave_nothing(empty_cache, monkeypatch):
    data, _ = weights_file("resnet18")
    bad = "resnet18-00000000.pth"
    with serving({f"/models/{bad}": data}) as server:
        point_sources_at(monkeypatch, server, bad)
        spec = market_spec("model.backbone=resnet_18")
        with pytest.raises(ModelError, match="does not start with 00000000: refused"):
            build_model(spec, 751, verbose=False)
        assert list(empty_cache.iterdir()) == []
        monkeypatch.setitem(download.MIRRORS, HOST, f"{server.url}/cut")
        with pytest.raises(ModelError, match=r"connection cut after \d+ of \d+ bytes") as error:
            build_model(spec, 751, verbose=False)
        assert list(empty_cache.iterdir()) == []
        assert len(server.requests) == 2
    message = str(error.value)
    assert "\n" not in message
    assert f"fetch {HOST}/models/{bad} on a machine with network" in message
    assert f"put it at {empty_cache / bad}" in message


def test_downloads_off_and_offline_never_ask(empty_cache, monkeypatch):
    data, file = weights_file("resnet18")
    with serving({f"/models/{file}": data}) as server:
        point_sources_at(monkeypatch, server, file)
        spec = market_spec("model.backbone=resnet_18", "model.download=false")
        with pytest.raises(ModelError, match="downloads are off"):
            build_model(spec, 751, verbose=False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ModelError, match=f"put it at {empty_cache / file}"):
            build_model(market_spec("model.backbone=resnet_18"), 751, verbose=False)
        assert server.requests == []
