"""`reid_nb prepare`: miniature archives of each public layout, made by the synthetic renderer,
laid out in the Market-1501 format and checked against a small expected table; your own crops;
bad input one line with nothing half-written; and (slow) the prepared folders end to end."""

import contextlib
import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides
from PIL import Image

from reid_nb.cli import main
from reid_nb.config import DataError, load_spec
from reid_nb.data import load_data, read_split
from reid_nb.prepare import (
    MANIFEST_CSV,
    PREPARED,
    Expected,
    count_folder,
    make_miniature,
    prepare_folder,
    prepare_set,
)

SPLITS = ("train", "query", "gallery")


def expected_of(counts: dict, gallery_ids: int = 0, gallery_images: int = 0, cameras=None):
    "An expected table from the counts of the synthetic source, adjusted for a layout."
    ids, images = counts["gallery"]
    return Expected(
        tuple(counts["train"]),
        tuple(counts["query"]),
        (ids + gallery_ids, images + gallery_images),
        cameras or counts["cameras"],
        "miniature",
    )


# what each layout keeps of the synthetic set: 3 distractors and 3 junk boxes in its gallery
LAYOUTS = {
    "market1501": dict(),  # as the synthetic set: distractors and junk kept
    "dukemtmc": dict(gallery_ids=3, gallery_images=-3),  # distractors are people, no junk
    "msmt17": dict(gallery_images=-6),  # neither distractors nor junk
    "cuhk03_np": dict(gallery_images=-6, cameras=2),  # and two cameras
}


def files_of(folder: Path) -> dict:
    "Every file under `folder` and its modification time."
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "name, archive, extra_top",
    [
        ("market1501", True, True),
        ("dukemtmc", True, False),
        ("msmt17", False, False),
        ("msmt17", True, True),
        ("cuhk03_np", False, True),
    ],
)
def test_each_layout_prepares_and_a_second_run_only_verifies(tmp_path, name, archive, extra_top):
    source = make_miniature(name, tmp_path / "src", archive=archive, extra_top=extra_top)
    synthetic = count_folder(tmp_path / "src" / "synthetic")
    expected = expected_of(synthetic, **LAYOUTS[name])
    variant = "detected" if name == "cuhk03_np" else None
    dest = prepare_set(name, source, tmp_path / "data", variant, expected=expected, verbose=False)
    counts = count_folder(dest)
    assert [counts[s] for s in SPLITS] == [expected.train, expected.query, expected.gallery]
    assert counts["cameras"] == expected.cameras
    spec = load_spec(dest / "spec.yaml")  # ready for -e
    data = load_data(spec, verbose=False)
    assert data.num_classes == expected.train[0] == spec.dataset.num_classes
    rows = list(csv.DictReader(open(dest / MANIFEST_CSV)))
    assert len(rows) == sum(counts[s][1] for s in SPLITS)
    assert all((dest / row["path"]).is_file() for row in rows)
    before = files_of(dest)
    assert prepare_set(name, source, tmp_path / "data", variant, verbose=False) == dest
    assert files_of(dest) == before  # verified, nothing rewritten
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [dest.name]


def test_msmt17_names_are_renamed_and_mapped_back(tmp_path):
    source = make_miniature("msmt17", tmp_path / "src")
    expected = expected_of(count_folder(tmp_path / "src" / "synthetic"), gallery_images=-6)
    dest = prepare_set("msmt17", source, tmp_path / "data", expected=expected, verbose=False)
    rows = list(csv.DictReader(open(dest / MANIFEST_CSV)))
    first = rows[0]
    assert first["path"].startswith("bounding_box_train/0001_c")  # label 0 is person 1
    assert first["original"].startswith("train/0000/0000_")  # relative to SRC
    camera = int(Path(first["original"]).name.split("_")[2])
    assert first["camera"] == str(camera) and f"_c{camera}s1_" in first["path"]


def test_msmt17_reads_in_place_from_its_lists(tmp_path):
    source = make_miniature("msmt17", tmp_path / "src")
    synthetic = count_folder(tmp_path / "src" / "synthetic")
    train = read_split(source, "train")  # list_train.txt + list_val.txt
    assert len(train) == synthetic["train"][1]
    assert min(r.pid for r in train) == 1
    assert len(read_split(source / "list_query.txt", "query")) == synthetic["query"][1]


def test_bad_input_is_one_line_and_nothing_half_written(tmp_path):
    archive = make_miniature("market1501", tmp_path / "m", archive=True)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    no_gallery = make_miniature("dukemtmc", tmp_path / "d")
    for path in (no_gallery / "bounding_box_test").iterdir():
        path.unlink()
    (no_gallery / "bounding_box_test").rmdir()
    odd = make_miniature("dukemtmc", tmp_path / "o")
    Image.new("RGB", (8, 16)).save(odd / "bounding_box_train" / "IMG_0001.jpg")
    cases = [
        ("market1501", truncated, "truncated.zip: not a readable zip archive"),
        ("dukemtmc", no_gallery, "bounding_box_test not found"),
        ("dukemtmc", odd, "IMG_0001.jpg: name does not parse"),
        ("market1501", archive, "train split: 4 identities found, 751 published"),
    ]
    for name, source, message in cases:
        with pytest.raises(DataError) as error:
            prepare_set(name, source, tmp_path / "out", verbose=False)
        assert message in str(error.value)
        assert "\n" not in str(error.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_corrupt_member_names_the_member(tmp_path):
    archive = make_miniature("market1501", tmp_path / "m", archive=True)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as opened:
        info = next(i for i in opened.infolist() if i.filename.endswith(".jpg"))
    data[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # a byte of its data
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="cannot be extracted"):
        prepare_set("market1501", archive, tmp_path / "out", verbose=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_destination_holding_something_else_is_left_alone(tmp_path):
    source = make_miniature("market1501", tmp_path / "m")
    (tmp_path / "data" / "market1501").mkdir(parents=True)
    (tmp_path / "data" / "market1501" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and holds something else"):
        prepare_set("market1501", source, tmp_path / "data", verbose=False)
    assert (tmp_path / "data" / "market1501" / "notes.txt").read_text() == "mine"


def test_a_changed_prepared_folder_fails_verification(tmp_path):
    source = make_miniature("market1501", tmp_path / "m")
    expected = expected_of(count_folder(tmp_path / "m" / "synthetic"))
    dest = prepare_set("market1501", source, tmp_path / "data", expected=expected, verbose=False)
    next((dest / "query").iterdir()).unlink()
    with pytest.raises(DataError, match="query: .* found, .* when it was prepared"):
        prepare_set("market1501", source, tmp_path / "data", verbose=False)


def own_crops(root: Path, cameras: bool) -> Path:
    "Six people, four crops each (two cameras of two when `cameras`); one person with one crop."
    for person in range(6):
        for index in range(4):
            folder = root / f"person_{person}"
            if cameras:
                folder = folder / f"cam_{index % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16), (person * 40, index * 60, 9)).save(folder / f"{index}.jpg")
    (root / "loner").mkdir()
    Image.new("RGB", (8, 16)).save(root / "loner" / "only.jpg")
    return root


@pytest.mark.parametrize("cameras", [True, False])
def test_own_crops_split_by_identity(tmp_path, cameras):
    source = own_crops(tmp_path / "crops", cameras)
    dest = prepare_folder(source, tmp_path / "data", name="own", seed=3, verbose=False)
    spec = load_spec(dest / "spec.yaml")
    assert spec.evaluate.protocol == ("market" if cameras else "no_camera")
    data = load_data(spec, verbose=False)
    train_people = {data.train_pids[r.pid] for r in data.train}
    test_people = {r.pid for r in data.gallery}
    assert not train_people & test_people  # identities are split, never images
    assert len(train_people) + len(test_people) == 7
    queries_per_person = len(data.query) / len({r.pid for r in data.query})
    assert queries_per_person == (2 if cameras else 1)  # one per person per camera
    again = prepare_folder(source, tmp_path / "again", name="own", seed=3, verbose=False)
    assert sorted(p.name for p in (again / "query").iterdir()) == sorted(
        p.name for p in (dest / "query").iterdir()
    )  # seeded


def test_own_crops_from_a_csv_list(tmp_path):
    source = own_crops(tmp_path / "crops", cameras=True)
    lines = ["path,person,camera"]
    for path in sorted(source.rglob("*.jpg")):
        relative = path.relative_to(tmp_path)
        camera = path.parent.name if path.parent.name.startswith("cam_") else ""
        lines.append(f"{relative.as_posix()},{relative.parts[1]},{camera}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    dest = prepare_folder(tmp_path / "list.csv", tmp_path / "data", verbose=False)
    record = json.loads((dest / PREPARED).read_text())
    assert record["kind"] == "folder" and record["counts"]["cameras"] == 2


def run_cli(*argv) -> tuple[int, str, str]:
    "`reid_nb ARGV` in this process: exit code, stdout, stderr."
    with contextlib.redirect_stdout(io.StringIO()) as out:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            code = main([str(arg) for arg in argv])
    return code, out.getvalue(), err.getvalue()


def test_cli_prepare(tmp_path):
    source = make_miniature("market1501", tmp_path / "m", archive=True)
    code, out, err = run_cli("prepare", "market1501", source, "--root", tmp_path / "data")
    assert code == 1 and err.count("\n") == 1 and "--allow-mismatch" in err
    assert list((tmp_path / "data").iterdir()) == []
    code, out, err = run_cli(
        "prepare", "market1501", source, "--root", tmp_path / "data", "--allow-mismatch"
    )
    assert code == 0, err
    assert f"spec: {tmp_path / 'data' / 'market1501' / 'spec.yaml'}" in out
    code, _, err = run_cli("prepare", "viper", source, "--root", tmp_path / "data")
    assert code == 1 and err == "reid_nb prepare: error: viper: unknown set; " + (
        "expected one of market1501, dukemtmc, msmt17, cuhk03_np (or 'folder')\n"
    )
    crops = own_crops(tmp_path / "crops", cameras=False)
    code, out, err = run_cli("prepare", "folder", crops, "--root", tmp_path / "data", "--seed", 1)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "data" / "own" / "spec.yaml").read_text())["evaluate"] == {
        "protocol": "no_camera"
    }


# ---- end to end (slow): prepared folders through train, evaluate and inference ----


def prepared(tmp_path, name: str, **layout) -> Path:
    "A miniature of `name` prepared under tmp_path/data (counts checked against the miniature)."
    source = make_miniature(name, tmp_path / "src" / name, archive=True)
    expected = expected_of(count_folder(tmp_path / "src" / name / "synthetic"), **LAYOUTS[name])
    return prepare_set(name, source, tmp_path / "data", expected=expected, verbose=False)


def tiny(tmp_path) -> list[str]:
    "The CPU-sized overrides of conftest's `tiny_overrides`, without its synthetic dataset keys."
    synthetic = Path(__file__).parent  # any folder: its dataset keys are dropped
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("reid_nb.synth.synth_overrides", lambda root: [])
        return tiny_overrides(tmp_path / "results", synthetic)


@pytest.mark.slow
def test_prepared_folder_trains_evaluates_and_infers_unchanged(tmp_path):
    dest = prepared(tmp_path, "market1501")
    spec = dest / "spec.yaml"
    for task, extra in (
        ("train", []),
        ("evaluate", [f"evaluate.checkpoint={tmp_path}/results/train/reid_model_latest.pth"]),
        ("inference", [f"inference.checkpoint={tmp_path}/results/train/reid_model_latest.pth"]),
    ):
        code, out, err = run_cli(task, "-e", spec, *tiny(tmp_path), *extra, "--no-notebook", "-q")
        assert code == 0, (task, err)
    embeddings = json.loads((tmp_path / "results" / "inference" / "inference.json").read_text())
    assert len(embeddings) == count_folder(dest)["query"][1] + count_folder(dest)["gallery"][1]


@pytest.mark.slow
def test_two_set_training_prefixes_identities(tmp_path):
    market, duke = prepared(tmp_path, "market1501"), prepared(tmp_path, "dukemtmc")
    train_dirs = f"[{market / 'bounding_box_train'}, {duke / 'bounding_box_train'}]"
    overrides = [
        *tiny(tmp_path),
        f"dataset.train_dataset_dir={train_dirs}",
        f"dataset.query_dataset_dir=[{market / 'query'}, {duke / 'query'}]",
        f"dataset.test_dataset_dir=[{market / 'bounding_box_test'}, {duke / 'bounding_box_test'}]",
        "dataset.num_classes=8",
    ]
    data = load_data(load_spec(overrides=overrides), verbose=False)
    assert data.num_classes == 8  # 4 + 4: the sum
    assert sum(pid > 100_000 for pid in data.train_pids) == 4  # the second set's, prefixed
    code, _, err = run_cli("train", "-e", market / "spec.yaml", *overrides, "--no-notebook", "-q")
    assert code == 0, err
    checkpoint = tmp_path / "results" / "train" / "reid_model_latest.pth"
    code, _, err = run_cli(
        "evaluate", "-e", market / "spec.yaml", *overrides,
        f"evaluate.checkpoint={checkpoint}", "--no-notebook", "-q",
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "results" / "evaluate" / "metrics.json").read_text())
    assert [row["test_set"] for row in metrics["test_sets"]] == ["market1501", "dukemtmc"]
    assert metrics["train_set"] == "market1501+dukemtmc"


@pytest.mark.slow
def test_own_crops_without_cameras_train_and_evaluate_with_no_camera(tmp_path):
    crops = own_crops(tmp_path / "crops", cameras=False)
    dest = prepare_folder(crops, tmp_path / "data", name="own", seed=0, verbose=False)
    overrides = [*tiny(tmp_path), "dataset.batch_size=6", "dataset.num_instances=2"]
    code, _, err = run_cli("train", "-e", dest / "spec.yaml", *overrides, "--no-notebook", "-q")
    assert code == 0, err
    checkpoint = f"evaluate.checkpoint={tmp_path}/results/train/reid_model_latest.pth"
    args = ("evaluate", "-e", dest / "spec.yaml", *overrides, checkpoint)
    code, _, err = run_cli(*args, "--no-notebook", "-q")
    assert code == 0, err
    metrics = json.loads((tmp_path / "results" / "evaluate" / "metrics.json").read_text())
    assert metrics["protocol"] == "no_camera" and metrics["num_query"] > 0
    market = ("evaluate.protocol=market", "evaluate.overwrite=true", "--no-notebook", "-q")
    code, _, err = run_cli(*args, *market)
    assert code == 1 and "evaluate.protocol=no_camera" in err  # the Market rule cannot score it


@pytest.mark.slow
def test_cross_domain_from_cli_and_papermill(tmp_path):
    market, duke = prepared(tmp_path, "market1501"), prepared(tmp_path, "dukemtmc")
    spec = market / "spec.yaml"
    code, _, err = run_cli("train", "-e", spec, *tiny(tmp_path), "--no-notebook", "-q")
    assert code == 0, err
    checkpoint = tmp_path / "results" / "train" / "reid_model_latest.pth"
    cross = [
        *tiny(tmp_path),
        f"evaluate.checkpoint={checkpoint}",
        f"evaluate.query_dataset={duke / 'query'}",
        f"evaluate.test_dataset={duke / 'bounding_box_test'}",
    ]
    direct = tmp_path / "direct"
    code, out, err = run_cli("evaluate", "-e", spec, *cross, f"evaluate.results_dir={direct}",
                             "--no-notebook")  # fmt: skip
    assert code == 0, err
    assert "market1501 -> dukemtmc" in out
    code, out, err = run_cli("evaluate", "-e", spec, *cross, "-q")  # through papermill
    assert code == 0, err
    report = tmp_path / "results" / "evaluate" / "evaluate.ipynb"
    assert "market1501 -> dukemtmc" in report.read_text()  # the report names both sets
    for folder in (direct, tmp_path / "results" / "evaluate"):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert (metrics["train_set"], metrics["test_set"]) == ("market1501", "dukemtmc")
        assert metrics["test_sets"][0]["mAP"] == metrics["metrics"]["mAP"]
