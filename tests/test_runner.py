"""The task notebooks that `reid_nb.runner` runs, run headlessly with papermill, each fed its
parameters one of the ways a user would (papermill's command line, `-f` style section dicts, a spec
file + shortcut, a YAML list of overrides); the recorded results are checked against the files the
task wrote."""

import json
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest

from reid_nb.checkpoint import random_init_checkpoint
from reid_nb.config import save_spec
from reid_nb.runner import read_records, task_notebook

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def checkpoint(tiny_spec, tmp_path):
    "A random checkpoint of the tiny spec's model (evaluate, infer and export need no training)."
    return random_init_checkpoint(tiny_spec(), tmp_path / "init" / "random_init.pth")


def injected(nb_path) -> str:
    "Source of the cell papermill injected."
    nb = json.loads(Path(nb_path).read_text())
    return "".join(
        next(
            c["source"]
            for c in nb["cells"]
            if "injected-parameters" in c["metadata"].get("tags", [])
        )
    )


def test_notebooks_have_a_parameters_cell():
    for task in ("train", "evaluate", "inference", "export"):
        nb = json.loads(task_notebook(task).read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
        assert len(tagged) == 1, task
        src = "".join(tagged[0]["source"])
        for name in (
            "spec_file",
            "overrides",
            "results_dir",
            "model",
            "dataset",
            "train",
            "evaluate",
            "export",
        ):
            assert f"\n{name} = " in "\n" + src, (task, name)
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert (ROOT / "nbs" / "tasks" / ".notest").exists()


def test_train_notebook_with_papermill_cli(tiny_spec, tmp_path):
    "`papermill train.ipynb out.ipynb -p spec_file S -p num_epochs 1 -p overrides '[...]'`."
    spec_file = save_spec(tiny_spec("train.num_epochs=5"), tmp_path / "spec.yaml")
    out = tmp_path / "train_out.ipynb"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(task_notebook("train")),
            str(out),
            "-p",
            "spec_file",
            str(spec_file),
            "-p",
            "num_epochs",
            "1",
            "-p",
            "overrides",
            '["train.seed=7"]',
            "--no-progress-bar",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = read_records(out)["result"]
    assert rec["epochs"] == 1  # the shortcut beat the spec file's 5
    results = tmp_path / "results" / "train"
    assert (
        Path(rec["checkpoint"]) == results / "reid_model_latest.pth"
        and Path(rec["checkpoint"]).is_file()
    )
    saved = (results / "spec.yaml").read_text()
    assert "seed: 7" in saved and "num_epochs: 1" in saved
    lines = (results / "metrics.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines if line.strip()]
    assert rec["last_validation"]["mAP"] == pytest.approx(log[-1]["mAP"])
    assert rec["last_validation"]["rank1"] == pytest.approx(log[-1]["rank1"])
    assert (results / "loss_curve.png").is_file()


def test_evaluate_notebook_with_section_dicts(tiny_spec, checkpoint, tmp_path):
    "The spec's sections as dicts, as `papermill -f spec.yaml` injects them, and a shortcut."
    params = {**tiny_spec().to_dict(), "checkpoint": str(checkpoint)}
    out = tmp_path / "evaluate_out.ipynb"
    pm.execute_notebook(
        str(task_notebook("evaluate")), str(out), parameters=params, progress_bar=False
    )
    assert "dataset = {" in injected(out)
    rec = read_records(out)["result"]
    ev = tmp_path / "results" / "evaluate"
    written = json.loads((ev / "metrics.json").read_text())
    assert rec["mAP"] == pytest.approx(written["metrics"]["mAP"])
    assert rec["with_re_ranking"]["mAP"] == pytest.approx(written["with_re_ranking"]["mAP"])
    assert rec["without_re_ranking"]["rank1"] == pytest.approx(
        written["without_re_ranking"]["rank1"]
    )
    assert "cmc" not in rec["without_re_ranking"] and rec["checkpoint"] == str(checkpoint)
    assert (ev / "cmc_curve.png").is_file() and (ev / "sampled_matches.png").is_file()
    assert (ev / "sampled_matches_maps.png").is_file()  # the grid with similarity maps
    nb = json.loads(out.read_text())  # the report shows both plots
    assert (
        sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
        >= 2
    )


def test_inference_notebook_with_yaml_overrides(tiny_spec, checkpoint, tmp_path):
    "A spec file and the overrides as one YAML list string (what `-p overrides '[...]'` gives)."
    spec_file = save_spec(tiny_spec(), tmp_path / "spec.yaml")
    out_json = tmp_path / "emb" / "embeddings.json"
    params = {
        "spec_file": str(spec_file),
        "overrides": f'["inference.checkpoint={checkpoint}", "inference.output_file={out_json}"]',
    }
    out = tmp_path / "inference_out.ipynb"
    pm.execute_notebook(
        str(task_notebook("inference")), str(out), parameters=params, progress_bar=False
    )
    rec = read_records(out)["result"]
    rows = json.loads(out_json.read_text())
    assert rec["output_file"] == str(out_json) and rec["num_embeddings"] == len(rows) > 0
    assert rec["embedding_size"] == len(rows[0]["embedding"]) == 64
    assert set(rows[0]) == {"img_path", "embedding"}
    assert Path(rec["embedding_map"]).is_file()  # the embedding map, in the results folder


def test_export_notebook(tiny_spec, checkpoint, tmp_path):
    spec_file = save_spec(tiny_spec(), tmp_path / "spec.yaml")
    out = tmp_path / "export_out.ipynb"
    onnx_file = tmp_path / "model.onnx"
    pm.execute_notebook(
        str(task_notebook("export")),
        str(out),
        progress_bar=False,
        parameters={
            "spec_file": str(spec_file),
            "checkpoint": str(checkpoint),
            "overrides": [f"export.onnx_file={onnx_file}"],
        },
    )
    rec = read_records(out)["result"]
    assert rec["onnx_file"] == str(onnx_file) and onnx_file.stat().st_size == rec["size_bytes"]
    assert rec["input_shape"][1:] == [3, 64, 32] and rec["output_shape"][-1] == 64
