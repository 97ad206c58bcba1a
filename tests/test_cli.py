"""The command line as a user runs it: `python -m reid_nb <task> -e SPEC key=value ...` in a
subprocess. Success exits 0; a user mistake exits 1 with exactly one line on stderr and no
traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reid_nb.checkpoint import random_init_checkpoint
from reid_nb.config import load_spec, save_spec
from reid_nb.runner import read_records

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("train", "evaluate", "inference", "export")


def cli(*args, timeout=600):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "reid_nb", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def one_line_error(r, *expected):
    "Exit code 1, a single stderr line containing `expected`, no traceback anywhere."
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for e in expected:
        assert e in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def spec_file(tiny_spec, tmp_path):
    return save_spec(tiny_spec(), tmp_path / "spec.yaml")


def test_help():
    "Help from the installed command (12_cli checks the parser of every task in-process)."
    r = cli("-h")
    assert r.returncode == 0 and all(t in r.stdout for t in (*TASKS, "demo"))
    r = cli("train", "-h")
    assert r.returncode == 0, r.stderr
    for option in ("--experiment_spec_file", "--no-notebook", "section.key=value"):
        assert option in r.stdout
    r = cli("demo", "-h")
    assert r.returncode == 0 and "--root" in r.stdout


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("reid_nb")
    if not exe.exists():
        pytest.skip("the reid_nb console script is not installed in this environment")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("reid_nb ")


def test_usage_error_exits_2():
    r = cli("train")  # -e is required
    assert r.returncode == 2 and "experiment_spec_file" in r.stderr and "Traceback" not in r.stderr


def test_bad_key_fails_fast(spec_file, tmp_path):
    r = cli("train", "-e", spec_file, "train.num_epoch=3")
    one_line_error(
        r,
        "reid_nb train: error:",
        "train.num_epoch: unknown key",
        "did you mean 'train.num_epochs'",
    )
    assert not (
        tmp_path / "results"
    ).exists()  # validated before anything ran: no report, no results
    one_line_error(
        cli("evaluate", "-e", spec_file, "dataset.batch_size=many"),
        "dataset.batch_size: expected an integer",
    )
    one_line_error(cli("export", "-e", spec_file, "export.opset_version"), "section.key=value")


def test_bad_spec_file(tmp_path):
    one_line_error(
        cli("train", "-e", tmp_path / "missing.yaml"), "missing.yaml: spec file not found"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: resnet_18\n   feat_dim: 3\n")
    one_line_error(cli("inference", "-e", bad), "bad.yaml line 3")


def test_bad_data_inside_the_notebook(spec_file, tmp_path):
    "A valid spec on bad data: the error is raised inside the task notebook, and is still one line."
    ckpt = tmp_path / "none.pth"
    r = cli(
        "evaluate",
        "-e",
        spec_file,
        f"evaluate.checkpoint={ckpt}",
        f"evaluate.query_dataset={tmp_path / 'nowhere'}",
    )
    line = one_line_error(r, "reid_nb evaluate: error:")
    assert "nowhere" in line or "none.pth" in line
    assert (
        tmp_path / "results" / "evaluate" / "evaluate.ipynb"
    ).is_file()  # the report, with the error in it
    # a failed run claims nothing: the same folder takes the next run, of another checkpoint
    good = random_init_checkpoint(load_spec(spec_file), tmp_path / "good.pth")
    r = cli("evaluate", "-e", spec_file, f"evaluate.checkpoint={good}", "--no-notebook", "-q")
    assert r.returncode == 0, r.stderr[-3000:]


def test_each_task_without_notebook(spec_file, tmp_path):
    "train -> evaluate -> inference -> export through the command line, calling the functions."
    r = cli("train", "-e", spec_file, "--no-notebook", "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "results" / "train" / "reid_model_latest.pth"
    assert ckpt.is_file() and "train: checkpoint:" in r.stdout
    r = cli(
        "evaluate",
        "-e",
        spec_file,
        f"evaluate.checkpoint={ckpt}",
        "re_ranking.re_ranking=false",
        "--no-notebook",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "results" / "evaluate" / "metrics.json").read_text())
    assert "with_re_ranking" not in metrics
    assert set(metrics["metrics"]) >= {"mAP", "rank1", "rank5", "rank10", "mINP"}
    assert f"evaluate: mAP: {json.dumps(metrics['metrics']['mAP'])}" in r.stdout
    r = cli("inference", "-e", spec_file, f"inference.checkpoint={ckpt}", "--no-notebook")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(json.loads((tmp_path / "results" / "inference" / "inference.json").read_text())) > 0
    r = cli("export", "-e", spec_file, f"export.checkpoint={ckpt}", "--no-notebook")
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt.with_suffix(".onnx").is_file()
    # exporting again refuses to overwrite: a user mistake, one line
    one_line_error(
        cli("export", "-e", spec_file, f"export.checkpoint={ckpt}", "--no-notebook"),
        "already exists",
    )


def test_task_through_its_notebook(spec_file, tmp_path):
    "The default: papermill runs the task notebook and keeps it as the report in results_dir."
    ckpt = random_init_checkpoint(load_spec(spec_file), tmp_path / "init.pth")
    onnx = tmp_path / "out" / "m.onnx"
    r = cli("export", "-e", spec_file, f"export.checkpoint={ckpt}", f"export.onnx_file={onnx}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == ""  # kernel and papermill chatter goes to stdout; stderr is for errors
    report = tmp_path / "results" / "export" / "export.ipynb"
    assert f"export: report: {report}" in r.stdout
    assert "exported" in r.stdout  # the notebook's output, relayed
    assert read_records(report)["result"]["onnx_file"] == str(onnx) and onnx.is_file()


def _snapshot(folder):
    "Every file under `folder` (hidden ones too): its bytes and modification time."
    return {
        path.relative_to(folder): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(  # inference in `make test`; the two longer ones in `make test-slow`
    "task",
    [
        pytest.param("evaluate", marks=pytest.mark.slow),
        "inference",
        pytest.param("export", marks=pytest.mark.slow),
    ],
)
def test_a_run_never_replaces_another_runs_results(task, spec_file, tmp_path):
    "Issue 19: a saved spec with results_dir=/elsewhere writes there; the first folder stays."
    first = random_init_checkpoint(load_spec(spec_file), tmp_path / "first.pth")
    second = random_init_checkpoint(load_spec(spec_file), tmp_path / "second.pth")
    mode = [] if task == "evaluate" else ["--no-notebook"]  # the report notebook for one task
    r = cli(task, "-e", spec_file, f"{task}.checkpoint={first}", *mode)
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "results" / task
    before = _snapshot(folder)
    assert json.loads((folder / "run.json").read_text())["identity"]["checkpoint"] == str(first)
    saved = folder / "spec.yaml" if task == "evaluate" else spec_file  # evaluate saves its spec
    elsewhere = tmp_path / "elsewhere"
    r = cli(task, "-e", saved, f"results_dir={elsewhere}", f"{task}.checkpoint={second}", *mode)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((elsewhere / task / "run.json").read_text())
    assert record["identity"]["checkpoint"] == str(second)
    assert record["command"].startswith(f"reid_nb {task} -e {saved}")
    assert _snapshot(folder) == before  # untouched: same bytes, same times
    r = cli(task, "-e", spec_file, f"{task}.checkpoint={second}", *mode)
    one_line_error(r, f"{folder}: holds the results of another run", f"{task}.overwrite=true")
    assert _snapshot(folder) == before
    r = cli(task, "-e", spec_file, f"{task}.checkpoint={first}", *mode)  # the same run again
    if task == "export":  # the folder may be written, but not the existing ONNX file
        one_line_error(r, "first.onnx: already exists")
    else:
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow  # runs every task (about 100 s on 2 cores)
def test_every_file_a_task_writes_has_the_mode_open_gives(spec_file, tmp_path):
    "Issue 19: under umask 022 every file of the four tasks (their reports too) has mode 0644."
    ckpt = tmp_path / "results" / "train" / "reid_model_latest.pth"
    runs = [
        ("train",),
        ("evaluate", f"evaluate.checkpoint={ckpt}"),
        ("inference", f"inference.checkpoint={ckpt}"),
        ("export", f"export.checkpoint={ckpt}"),
    ]
    for task, *overrides in runs:
        r = subprocess.run(
            [sys.executable, "-m", "reid_nb", task, "-e", str(spec_file), *overrides, "-q"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            preexec_fn=lambda: os.umask(0o022),
        )
        assert r.returncode == 0, (task, r.stderr[-3000:])
    written = [path for path in (tmp_path / "results").rglob("*") if path.is_file()]
    names = {path.name for path in written}
    assert {"train.ipynb", "evaluate.ipynb", "inference.ipynb", "export.ipynb"} <= names
    assert {"reid_model_latest.pth", "metrics.json", "cmc_curve.png", "spec.yaml"} <= names
    assert {"run.json", "inference.json", "reid_model_latest.onnx"} <= names
    modes = {str(path): oct(path.stat().st_mode & 0o777) for path in written}
    assert set(modes.values()) == {"0o644"}, modes
