"""The results-folder lock across processes: what the notebook (one process) cannot show."""

import os
import subprocess
import sys

import pytest

from reid_nb.runs import LOCK_FILE, LOCKS_ENV, LockError, results_lock

HOLD = """
import sys, time
from reid_nb.runs import results_lock
with results_lock(sys.argv[1], command="the first run"):
    print("held", flush=True)
    time.sleep(120)
"""

TAKE = """
import sys
from reid_nb.runs import results_lock
with results_lock(sys.argv[1], command="a child"):
    print("inside", flush=True)
"""


def environment(**changes) -> dict:
    "This process's environment without `REID_NB_LOCKS`, plus `changes`."
    env = {key: value for key, value in os.environ.items() if key != LOCKS_ENV}
    return {**env, **changes}


def test_a_live_holder_is_named_and_a_killed_one_taken_over(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError) as error:
            with results_lock(tmp_path):
                pass
        assert f"in use by `the first run` (pid {holder.pid} on host" in str(error.value)
    finally:
        holder.kill()  # kill -9: no chance to remove the lock
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()
    with results_lock(tmp_path, command="the second run"):
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE).read_text()
    note = capsys.readouterr().out
    assert note.startswith(f"note: {tmp_path.resolve()}: taking over the lock of pid {holder.pid}")
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_child_process_runs_under_its_parents_lock(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCKS_ENV, raising=False)
    with results_lock(tmp_path, command="the parent"):
        child = subprocess.run(
            [sys.executable, "-c", TAKE, str(tmp_path)], capture_output=True, text=True
        )
        assert (child.returncode, child.stdout) == (0, "inside\n"), child.stderr
        assert "the parent" in (tmp_path / LOCK_FILE).read_text()  # the child took nothing
        unrelated = subprocess.run(
            [sys.executable, "-c", TAKE, str(tmp_path)],
            capture_output=True,
            text=True,
            env=environment(),
        )
        assert unrelated.returncode == 1
        assert "in use by `the parent`" in unrelated.stderr
