"""Build the reid_nb documentation site from nbs/, offline: `make docs` (or `python docs/build.py`).

1. Every notebook in nbs/ becomes a page. Module notebooks (and index.ipynb) are executed the way
   `nbdev_test` executes them -- same working directory, same skipped cells (`#| slow`, `#| cuda`,
   `#| eval: false`) -- so each page shows the outputs of a real run; two notebooks run at a time.
   The task notebooks in nbs/tasks/ are shown as source: running one *is* a training run.
2. nbdev directives (`#| export`, ...) are dropped from the shown code; `#| hide` cells are dropped.
   After each exported cell comes a box with the signature and first docstring line of every public
   function and class it defines (as nbdev's `show_doc` does), right before the cell that uses it.
3. One API page per exported module, from its docstrings (Sphinx autodoc).
4. Sphinx + MyST-NB render everything to static HTML in _site/ (open _site/index.html).

Options: --no-execute (pages without outputs: a quick check of the site itself),
--workers N (notebooks executed at once), --out DIR (default _site), --proc DIR (default _proc).
"""

from __future__ import annotations

import argparse
import ast
import html
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
SKIP_FLAGS = {
    "slow",
    "cuda",
}  # settings.ini tst_flags: not run by default, not run for the docs either


def _notebooks() -> list[Path]:
    "index first, then the numbered notebooks, then the task notebooks."
    top = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("."))
    top.sort(key=lambda p: (p.name != "index.ipynb", p.name))
    return top + sorted((NBS / "tasks").glob("*.ipynb"))


def _skip(cell) -> bool:
    "True for cells that `nbdev_test` would not run either."
    if cell.cell_type != "code":
        return True
    d = getattr(cell, "directives_", {}) or {}
    if d.get("eval:", [""])[0].lower() == "false":
        return True
    return bool(SKIP_FLAGS & d.keys())


def _shown(cell) -> bool:
    d = getattr(cell, "directives_", {}) or {}
    if cell.cell_type != "code":
        return True
    return not ({"hide", "default_exp"} & d.keys()) and bool(cell.source.strip())


def _signature(node) -> str:
    "`name(args) -> result` of a function, or of a class's constructor."
    if isinstance(node, ast.ClassDef):
        init = next(
            (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
        )
        if init is None:
            return f"class {node.name}"
        args = ast.unparse(init.args).removeprefix("self, ").removeprefix("self")
        return f"class {node.name}({args})"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{node.name}({ast.unparse(node.args)}){returns}"


def signature_boxes(source: str) -> str:
    "HTML boxes with the signature and docstring summary of each public definition in `source`."
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    boxes = []
    for node in tree.body:
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        if not isinstance(node, kinds) or node.name.startswith("_"):
            continue
        summary = (ast.get_docstring(node) or "").strip().split("\n\n")[0].replace("\n", " ")
        boxes.append(
            f'<div class="api-signature"><code>{html.escape(_signature(node))}</code>'
            f"<p>{html.escape(summary)}</p></div>"
        )
    return "\n".join(boxes)


def _page_cells(cell) -> list[dict]:
    "The page cells for one notebook cell: the cell, then the signature boxes of what it exports."
    out = [_plain(cell)]
    directives = getattr(cell, "directives_", {}) or {}
    if cell.cell_type == "code" and ({"export", "exports"} & directives.keys()):
        boxes = signature_boxes(cell.source)
        if boxes:
            out.append({"cell_type": "markdown", "metadata": {}, "source": boxes})
    return out


def _plain(cell) -> dict:
    "An nbformat-4 cell dict (outputs kept for code cells)."
    out = {"cell_type": cell.cell_type, "metadata": {}, "source": cell.source}
    if cell.cell_type == "code":
        out.update(execution_count=None, outputs=[dict(o) for o in (cell.get("outputs") or [])])
    return out


def process_notebook(args) -> tuple[str, bool, float, str]:
    "Read (and execute) one notebook; write its page under `proc`. Runs in a worker process."
    src, dest, execute = args
    src, dest = Path(src), Path(dest)
    os.environ.setdefault("MPLBACKEND", "Agg")
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor

    start, ok, err = time.time(), True, ""
    nb = NBProcessor(src, procs=FrontmatterProc, process=True).nb
    if execute:
        from execnb.shell import CaptureShell
        from fastcore.xtras import working_directory

        shell = CaptureShell(src)
        try:
            with working_directory(src.parent):
                shell.run_all(nb, exc_stop=True, preproc=_skip)
        except BaseException:
            ok, err = False, shell.prettytb(fname=src)
    cells = [page_cell for c in nb.cells if _shown(c) for page_cell in _page_cells(c)]
    fm = getattr(nb, "frontmatter_", {}) or {}  # nbdev moved the "# Title" / "> summary" cell here
    if fm.get("title"):
        head = f"# {fm['title']}" + (f"\n\n> {fm['description']}" if fm.get("description") else "")
        cells.insert(0, {"cell_type": "markdown", "metadata": {}, "source": head})
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i}"
    kernelspec = {"display_name": "Python 3", "language": "python", "name": "python3"}
    page = {
        "cells": cells,
        "metadata": {"kernelspec": kernelspec, "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(page, indent=1, ensure_ascii=False, default=str))
    return str(src.relative_to(ROOT)), ok, time.time() - start, err


def _modules() -> list[str]:
    "The exported modules, from the package itself (what users import)."
    pkg = ROOT / "reid_nb"
    return sorted(p.stem for p in pkg.glob("*.py") if not p.stem.startswith("_"))


API_PAGE = """# reid_nb.{mod}

```{{eval-rst}}
.. automodule:: reid_nb.{mod}
   :members:
   :show-inheritance:
```
"""


def write_api(proc: Path) -> list[str]:
    api = proc / "api"
    api.mkdir(parents=True, exist_ok=True)
    mods = _modules()
    for m in mods:
        (api / f"{m}.md").write_text(API_PAGE.format(mod=m))
    toc = "\n".join(mods)
    (api / "index.md").write_text(
        f"# API reference\n\nThe functions and classes each module exports, "
        f"with their docstrings.\n\n```{{toctree}}\n:maxdepth: 1\n\n{toc}\n```\n"
    )
    return mods


def add_toctree(index: Path, pages: list[str]):
    "Append the site's table of contents to the landing page."
    nb = json.loads(index.read_text())
    toc = "\n".join(pages)
    nb["cells"].append(
        {
            "cell_type": "markdown",
            "metadata": {},
            "id": "contents",
            "source": f"## Contents\n\n```{{toctree}}\n:maxdepth: 1\n\n{toc}\napi/index\n```\n",
        }
    )
    index.write_text(json.dumps(nb, indent=1, ensure_ascii=False))


def build(out: Path, proc: Path, execute: bool = True, workers: int = 2) -> Path:
    t0 = time.time()
    if proc.exists():
        shutil.rmtree(proc)
    proc.mkdir(parents=True)
    nbs = _notebooks()
    if not (NBS / "index.ipynb").exists():
        sys.exit("docs: nbs/index.ipynb (the landing page) is missing")
    jobs = [(str(p), str(proc / p.relative_to(NBS)), execute and p.parent == NBS) for p in nbs]

    # Each notebook runs in a fresh interpreter (`build.py --one ...`), at most `workers` at a time:
    # no state shared between notebooks, and a notebook may start DataLoader workers of its own.
    def run_one(job):
        src, dest, ex = job
        r = subprocess.run(
            [sys.executable, __file__, "--one", src, dest, "1" if ex else "0"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"OMP_NUM_THREADS": "1", **os.environ} if workers > 1 else None,
        )  # as `make nbtest`
        try:
            return tuple(json.loads(r.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            return str(Path(src).relative_to(ROOT)), False, 0.0, (r.stdout + r.stderr)[-5000:]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(run_one, jobs))
    failed = [r for r in results if not r[1]]
    for name, ok, secs, _ in results:
        verb = "ran " if execute and "tasks/" not in name else "read"
        print(f"  {verb} {name:32s} {secs:6.1f} s{'' if ok else '  FAILED'}")
    if failed:
        for name, _, _, err in failed:
            print(f"\n{name} failed:\n{err}", file=sys.stderr)
        sys.exit(
            f"docs: {len(failed)} notebook(s) failed to run: {', '.join(f[0] for f in failed)}"
        )
    write_api(proc)
    pages = [str(p.relative_to(NBS).with_suffix("")) for p in nbs if p.name != "index.ipynb"]
    add_toctree(proc / "index.ipynb", pages)
    # Sphinx writes into proc/_build/html (MyST-NB puts its image files beside the output folder,
    # so that folder's parent must be ours); the finished site is then moved to `out`.
    html = proc / "_build" / "html"
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-b",
        "html",
        "-q",
        "-c",
        str(ROOT / "docs"),
        "-d",
        str(proc / "_build" / "doctrees"),
        str(proc),
        str(html),
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    if out.exists():
        shutil.rmtree(out)
    shutil.move(str(html), str(out))
    print(f"docs: built {out / 'index.html'} in {time.time() - t0:.0f} s")
    return out / "index.html"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--no-execute", action="store_true", help="render the notebooks without running them"
    )
    ap.add_argument("--workers", type=int, default=2, help="notebooks executed at once (default 2)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "_site", help="output folder (default _site)"
    )
    ap.add_argument(
        "--proc", type=Path, default=ROOT / "_proc", help="intermediate folder (default _proc)"
    )
    ap.add_argument("--one", nargs=3, metavar=("SRC", "DEST", "EXECUTE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:  # worker mode: one notebook, the result as a JSON line
        print(json.dumps(process_notebook((a.one[0], a.one[1], a.one[2] == "1"))))
        return
    try:
        build(a.out.resolve(), a.proc.resolve(), execute=not a.no_execute, workers=a.workers)
    except subprocess.CalledProcessError as e:
        sys.exit(f"docs: sphinx-build failed (exit {e.returncode})")


if __name__ == "__main__":
    main()
