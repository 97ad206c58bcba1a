"""The documentation site: `docs/build.py` renders nbs/ with Sphinx + MyST-NB, and headless Chromium
opens the landing page and an API page and finds what a reader should see there."""

import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium():
    "A headless Chromium: on PATH, or installed now by `make browser-deps` (root + apt-get)."
    for b in BROWSERS:
        if shutil.which(b):
            return shutil.which(b)
    if os.geteuid() == 0 and shutil.which("apt-get") and shutil.which("make"):
        subprocess.run(["make", "-C", str(ROOT), "browser-deps"], capture_output=True, timeout=900)
        for b in BROWSERS:
            if shutil.which(b):
                return shutil.which(b)
    return None


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        pytest.skip(
            "headless Chromium is not installed and cannot be installed here "
            "(run `make browser-deps` as root: it installs the Debian package chromium)"
        )
    return exe


def dump_dom(exe, page: Path) -> str:
    "The page's DOM after Chromium loaded it (scripts run), from a throwaway profile, offline."
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def text(dom: str) -> str:
    "What a reader sees of a DOM: tags dropped, entities decoded, spaces collapsed."
    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", dom)).split())


def build(tmp_path, *args) -> Path:
    out = tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "docs" / "build.py"),
            "--out",
            str(out),
            "--proc",
            str(tmp_path / "proc"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site without executing the notebooks (the page structure, the API pages): quick."
    return build(tmp_path_factory.mktemp("docs"), "--no-execute")


def test_every_notebook_is_a_page(site):
    for nb in list((ROOT / "nbs").glob("*.ipynb")) + list((ROOT / "nbs" / "tasks").glob("*.ipynb")):
        assert (site / nb.relative_to(ROOT / "nbs")).with_suffix(".html").is_file(), nb
    for mod in ("config", "checkpoint", "runner", "cli", "demo", "train", "evaluate", "export"):
        assert (site / "api" / f"{mod}.html").is_file(), mod


def test_pages_in_a_browser(site, chromium):
    index = dump_dom(chromium, site / "index.html")
    assert re.search(r"<h1>reid_nb\b", index)  # the README's title
    assert "make demo" in text(index) and "API reference" in text(index)
    api = dump_dom(chromium, site / "api" / "evaluate.html")
    assert 'id="reid_nb.evaluate.run_evaluation"' in api  # an API entry
    assert "The evaluate task: metrics (plain and re-ranked)" in text(api)  # with its docstring
    runner = text(dump_dom(chromium, site / "api" / "runner.html"))
    assert "run_task" in runner and "main" in text(dump_dom(chromium, site / "api" / "cli.html"))
    nb = text(dump_dom(chromium, site / "00_config.html"))
    assert "Experiment specs" in nb and "load_spec" in nb
    assert "make test" in text(index)  # both README commands on the landing page


def test_signature_beside_its_example(site, chromium):
    "Each exported definition is followed by its signature and docstring summary, as show_doc does."
    dom = dump_dom(chromium, site / "00_config.html")
    box = re.search(
        r'<div class="api-signature"><code>(load_spec\([^<]*)</code><p>([^<]*)</p>', dom
    )
    assert box, "no signature box for load_spec"
    assert "overrides" in html.unescape(box.group(1)) and box.group(2)


OVERFLOW_PROBE = """<script>
window.addEventListener("load", () => {
  const blocks = [...document.querySelectorAll("div.highlight pre")];
  const wide = blocks.filter((b) => b.scrollWidth > b.clientWidth + 1);
  document.body.setAttribute("data-probe", blocks.length + "/" + wide.length);
});
</script>"""


def test_code_of_100_characters_needs_no_scrolling(site, chromium, tmp_path):
    "A code block whose longest line is 100 characters fits its column on a 1280-pixel screen."
    page = (site / "00_config.html").read_text()
    line = "x = " + "1234567890" * 9 + "123456"  # exactly 100 characters
    assert len(line) == 100
    block = f'<div class="highlight"><pre>{line}</pre></div>'
    probe = site / "probe.html"
    probe.write_text(
        page.replace("</article>", block + "</article>", 1).replace(
            "</body>", OVERFLOW_PROBE + "</body>"
        )
    )
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1280,900",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=3000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    probe.unlink()
    found = re.search(r'data-probe="(\d+)/(\d+)"', r.stdout)
    assert found, r.stderr[-2000:]
    blocks, wide = map(int, found.groups())
    assert blocks > 1 and wide == 0, f"{wide} of {blocks} code blocks scroll sideways"


@pytest.mark.slow
def test_full_build_shows_outputs(tmp_path, chromium):
    "`make docs`: the notebooks are executed and their outputs are on the pages."
    site = build(tmp_path)
    page = text(dump_dom(chromium, site / "index.html"))
    assert (
        "('resnet_18', 3, '/tmp/reid/train')" in page
    )  # the output of the landing page's code cell
    ev = dump_dom(chromium, site / "09_evaluate.html")
    assert "cell_output" in ev and re.search(
        r'<img[^>]+src="_images/[^"]+\.png"', ev
    )  # plots of the run
