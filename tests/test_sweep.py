"""Sweeps end to end on the tiny synthetic set: a 2-variant x 2-epoch sweep from the command line,
killed while its second variant trains and resumed without redoing the first, then compared in
its notebook; and (slow) the same sweep through the task notebooks, two variants at once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides

from reid_nb.cli import main
from reid_nb.config import load_spec, save_spec
from reid_nb.sweep import load_sweep, plot_curves, variant_finished, variant_results

VARIANTS = ["re_prob-0.0", "re_prob-0.5"]


def sweep_command(spec_file, *options) -> list[str]:
    "The command line of the tiny sweep: random erasing off and on, two epochs each."
    command = [sys.executable, "-m", "reid_nb", "sweep", "-e", str(spec_file)]
    return [*command, "dataset.re_prob=0.0,0.5", "--name", "tiny", *options]


def tiny_spec_file(tmp_path, synth_root) -> Path:
    "A spec file of the tiny 2-epoch run, re-ranking on, results under `tmp_path/results`."
    overrides = tiny_overrides(tmp_path / "results", synth_root, epochs=2)
    once = ["train.checkpoint_interval=2", "train.validation_interval=2"]  # at the end only
    lean = ["model.input_height=32", "model.input_width=16", "dataset.padding=2"]  # a quarter
    lean += ["re_ranking.k1=6", "re_ranking.k2=3", "evaluate.output_attention_plot="]
    spec = load_spec(overrides=[*overrides, *once, *lean])
    return save_spec(spec, tmp_path / "spec.yaml")


def stamps(folder: Path) -> dict:
    "Modification times of every file under `folder` (what a rerun would change)."
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
    }


def wait_for(condition, process, limit: float = 600):
    "Poll `condition` until it holds; fail if `process` ends first or `limit` seconds pass."
    start = time.monotonic()
    while not condition():
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        assert time.monotonic() - start < limit, "the sweep did not get there"
        time.sleep(0.05)


def check_comparison(folder: Path):
    "The comparison notebook names both variants in its table, and shows both figures."
    nb = json.loads((folder / "comparison.ipynb").read_text())
    outputs = [o for cell in nb["cells"] for o in cell.get("outputs", [])]
    text = json.dumps(outputs)
    for name in VARIANTS:
        assert f"| {name} | " in text, name
        assert f"**{name}**" in "".join(nb["cells"][0]["source"]), (
            name
        )  # the intro lists its overrides
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert (folder / "curves.png").is_file() and (folder / "scores.png").is_file()
    fig = plot_curves(variant_results(load_sweep(folder)))
    for axes in fig.axes:  # loss and mAP: a line per variant, named
        assert [t.get_text() for t in axes.get_legend().get_texts()] == VARIANTS


def test_sweep_is_interrupted_and_resumed(tmp_path, synth_root, capsys):
    spec_file = tiny_spec_file(tmp_path, synth_root)
    folder = tmp_path / "results" / "sweeps" / "tiny"
    first, second = (folder / name for name in VARIANTS)
    log = open(tmp_path / "first_run.log", "w")
    process = subprocess.Popen(
        sweep_command(spec_file, "--no-notebook"), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:  # kill it while the second variant trains
        wait_for(lambda: (second / "train" / "run.json").is_file(), process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    assert variant_finished(first) and not variant_finished(second)
    before = stamps(first)
    capsys.readouterr()
    assert main(sweep_command(spec_file, "--no-notebook")[3:]) == 0  # resumed, in this process
    printed = capsys.readouterr().out
    assert f"finished before, not run again: {VARIANTS[0]}" in printed
    assert f"comparison: {folder / 'comparison.ipynb'}" in printed
    assert stamps(first) == before  # not one file of the first variant was written again
    assert variant_finished(second)
    log = [
        json.loads(line) for line in (second / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["epoch"] for row in log] == [1, 2] and "mAP" in log[-1]
    results = variant_results(load_sweep(folder))
    assert [r["name"] for r in results] == VARIANTS
    assert all("with_re_ranking" in r["metrics"] for r in results)
    check_comparison(folder)


@pytest.mark.slow
def test_sweep_through_the_task_notebooks_two_at_once(tmp_path, synth_root):
    spec_file = tiny_spec_file(tmp_path, synth_root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        sweep_command(spec_file, "-j", "2"), capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "results" / "sweeps" / "tiny"
    for name in VARIANTS:
        assert (folder / name / "train" / "train.ipynb").is_file()  # the reports
        assert (folder / name / "evaluate" / "evaluate.ipynb").is_file()
        record = json.loads((folder / name / "train" / "run.json").read_text())
        assert record["command"].startswith("reid_nb train -e ")
        assert f"dataset.re_prob={name.split('-')[1]}" in record["command"]
    check_comparison(folder)
