"""``hpcflow report``: the HTML file from real runs, checked as text and in headless Chromium.

The browser tests open the file the way a user does (``file://``, no server, no network)
with Debian's ``chromium``: ``--dump-dom`` gives the DOM after the inline script ran,
``--screenshot`` a PNG that must not be blank. They skip when Chromium is absent
(``apt-get install chromium``), unless ``HPCFLOW_REQUIRE_CHROMIUM=1`` (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import hpcflow as hf
from hpcflow.cli.load import load
from hpcflow.engine.runner import EngineConfig, run_workflow
from hpcflow.report.html import write_report
from hpcflow.report.status import load_run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sweep" / "workflow.yaml"
pytestmark = pytest.mark.timeout(180)

FAILING = """\
name: failing
tasks:
  - id: prep
    shell: "echo preparing"
  - id: boom
    shell: "echo about to fail >&2; exit 3"
    args: {x: "${prep}"}
  - id: after
    shell: "echo never"
    args: {y: "${boom}"}
  - id: side
    shell: "sleep 0.1; echo fine {k}"
    sweep:
      product: {k: [1, 2, 3]}
"""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


MIB = 2**20
ALLOC = "\"$HPCFLOW_PYTHON\" -c 'b = bytearray(200 * 2**20)'"


def allocate(mib):
    return len(bytearray(mib * MIB)) // MIB


def memory_workflow() -> hf.Workflow:
    """Peaks of ~200 MiB (a shell command, a Python task, a failing command) against
    requests of 100M, and a tiny command that asked for 1G."""
    big_shell = hf.shell(ALLOC, name="big_shell", memory="100M")()
    big_python = hf.task(allocate, name="big_python", memory="100M")(200)
    tiny = hf.shell("true", name="tiny", memory="1G")()
    fails = hf.shell(ALLOC + "; exit 3", name="fails")()
    return hf.workflow("memory", outputs=[big_shell, big_python, tiny, fails])


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("memory") / "run"
    run_workflow(memory_workflow(), EngineConfig(workers=2, run_dir=str(run)))
    return write_report(run)


def memory_cells(html: str) -> dict[str, tuple[str, str, str]]:
    """Task name -> (sort value, class attribute, text) of its measured-memory cell."""
    found = re.findall(r'<tr data-name="([^"]+)".*?<td data-v="(-?\d+)"( class="[^"]*")?'
                       r'(?: title="[^"]*")?>([^<]*)</td><td>(?:<a|—)', html)
    return {name: (v, css.strip(), text) for name, v, css, text in found}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A succeeded run of the sweep example and a failed run, each with its report."""
    base = tmp_path_factory.mktemp("runs")
    spec = base / "failing.yaml"
    spec.write_text(FAILING)
    out = {}
    for key, path in (("ok", EXAMPLE), ("failed", spec)):
        run = base / key
        run_workflow(load(str(path)), EngineConfig(workers=3, run_dir=str(run), spec=str(path)))
        out[key] = write_report(run)
    return out


def rows(html: str) -> list[str]:
    return re.findall(r"<tr data-name=[^>]*>", html)


def bars(html: str) -> list[str]:
    return re.findall(r'<rect class="bar [^"]*"', html)


def measured(run: Path) -> tuple[nx.DiGraph, dict[int, float]]:
    """The run's task graph and measured durations, built here independently (networkx)."""
    with np.load(run / "plan.npz") as plan:
        ptr, pred = plan["pred_ptr"], plan["pred"]
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(ptr) - 1))
    for i in range(len(ptr) - 1):
        graph.add_edges_from((int(p), i) for p in pred[ptr[i] : ptr[i + 1]])
    view = load_run(run)
    return graph, {i: float(np.nan_to_num(view.end[i] - view.start[i])) for i in graph}


def test_report_is_one_offline_file_with_every_task(runs):
    html = runs["ok"].read_text()
    assert runs["ok"].name == "report.html" and runs["ok"].parent.name == "ok"
    assert not re.search(r"<link|<script[^>]+src=|@import|url\((?!#)|(src|href)=\"(https?:)?//", html)
    assert len(rows(html)) == 17 and len(bars(html)) == 17
    assert html.count('<g class="node') == 6  # the DAG's groups
    assert "oscillator-sweep" in html and "succeeded" in html


def test_critical_path_is_the_longest_chain_by_measured_time(runs):
    html = runs["ok"].read_text()
    graph, duration = measured(runs["ok"].parent)
    best: dict[int, float] = {}
    for i in nx.topological_sort(graph):
        best[i] = duration[i] + max((best[p] for p in graph.predecessors(i)), default=0.0)
    marked = [int(m) for m in re.findall(r'<tr data-name="[^"]*" data-state="[^"]*" class="crit">'
                                         r"<td>(\d+)</td>", html)]
    assert marked and nx.is_path(graph, marked)
    assert sum(duration[i] for i in marked) == pytest.approx(max(best.values()))
    assert len(re.findall(r'<rect class="bar done crit"', html)) == len(marked)
    assert f"critical path</th><td>{len(marked)} tasks" in html


def test_failed_run_shows_the_failure_and_its_log(runs):
    html = runs["failed"].read_text()
    assert len(rows(html)) == 6 and len(bars(html)) == 5  # 'after' was skipped: no bar
    assert '<rect class="bar failed' in html
    assert re.search(r'data-name="boom" data-state="failed".*?<a href="tasks/boom/stderr.log">', html)
    assert 'data-name="after" data-state="skipped"' in html
    assert (runs["failed"].parent / "tasks" / "boom" / "stderr.log").is_file()


def test_large_runs_are_capped_with_a_note(runs, tmp_path):
    out = write_report(runs["failed"].parent, tmp_path / "small.html", max_bars=4, max_rows=2)
    html = out.read_text()
    assert 'id="capped"' in html and "the table lists 2" in html
    assert len(rows(html)) == 2 and 'data-name="boom"' in html  # failed tasks come first
    assert len(bars(html)) <= 4


def _explode(x):
    raise ValueError("<script>alert('x')</script> & more")


def test_error_text_is_escaped(tmp_path):
    wf = hf.workflow("hostile", outputs={"x": hf.task(_explode)(1)})
    run_workflow(wf, EngineConfig(workers=1, run_dir=str(tmp_path / "run")))
    html = write_report(tmp_path / "run").read_text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html


def test_cli_output_elsewhere_keeps_log_links_working(runs, tmp_path):
    out = tmp_path / "elsewhere" / "r.html"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-m", "hpcflow", "report", str(runs["failed"].parent),
                           "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"report: {out}"
    links = re.findall(r'<a href="([^"#]+)"', out.read_text())
    assert links and all((out.parent / link).exists() for link in links)


def test_measured_memory_is_journalled_and_shown_against_the_request(memory_run):
    view = load_run(memory_run.parent)
    by_name = {view.name(i): extra for i, extra in view.extra.items()}
    assert by_name["big_shell"]["peak_rss"] >= 200 * MIB
    python = by_name["big_python"]
    assert python["peak_rss"] - python["base_rss"] >= 195 * MIB  # above the worker's own
    assert by_name["fails"]["peak_rss"] >= 200 * MIB  # from the FAIL event
    assert max(by_name["tiny"].get("peak_rss", 0), by_name["tiny"].get("peak_rss_bound", 0)) \
        < 200 * MIB  # not the worker's history, nor anything huge
    cells = memory_cells(memory_run.read_text())
    assert set(cells) == {"big_shell", "big_python", "tiny", "fails"}
    for name in ("big_shell", "big_python"):
        value, css, text = cells[name]
        assert int(value) >= 200 * MIB and css == 'class="mem-over"' and text[-1] in "MG"
    assert cells["tiny"][1] == 'class="mem-under"'
    assert cells["fails"][1] == "" and int(cells["fails"][0]) >= 200 * MIB
    summary = re.search(r"peak memory</th><td>largest (\d+(?:\.\d+)?)([MG]) \(big_(shell|python)\); "
                        r"2 tasks above their request, 1 under a quarter of it", memory_run.read_text())
    assert summary, "no peak-memory line in the summary"
    # a forked worker's peak includes what it inherited from the test process: >= 200M
    assert float(summary[1]) * (1024 if summary[2] == "G" else 1) >= 200


def test_without_jinja2_hpcflow_imports_and_report_names_the_extra(runs):
    code = ("import sys; sys.modules['jinja2'] = None\n"
            "import hpcflow, hpcflow.report.status, hpcflow.report.progress\n"
            "from hpcflow.cli import main\n"
            f"sys.exit(main(['report', {str(runs['ok'].parent)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "pip install 'hpcflow-mpi[report]'" in done.stderr


# -- in a real browser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "needs Chromium to check the report in a browser: apt-get install chromium"
        if os.environ.get("HPCFLOW_REQUIRE_CHROMIUM") == "1":
            pytest.fail(reason + " (HPCFLOW_REQUIRE_CHROMIUM=1)")
        pytest.skip(reason)
    return path


def browse(chromium: str, url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=90, check=True)


def test_dom_in_chromium(chromium, runs, tmp_path):
    dom = browse(chromium, runs["ok"].as_uri(), tmp_path, "--dump-dom").stdout
    assert len(bars(dom)) == 17 and len(rows(dom)) == 17
    assert 'id="row-count">17 of 17 rows<' in dom  # the inline script ran
    assert len(re.findall(r'<rect class="bar done crit"', dom)) >= 2
    assert dom.count('<g class="node') == 6
    crit_groups = len(re.findall(r'<g class="node [a-z-]+ crit"', dom))
    assert crit_groups >= 3 and dom.count('class="edge crit"') == crit_groups - 1


def test_sort_and_filter_in_chromium(chromium, runs, tmp_path):
    url = runs["failed"].as_uri()
    dom = browse(chromium, url + "#state=failed", tmp_path, "--dump-dom").stdout
    visible = [r for r in rows(dom) if "hidden" not in r]
    assert len(visible) == 1 and 'data-name="boom"' in visible[0]
    assert 'id="row-count">1 of 6 rows<' in dom
    dom = browse(chromium, url + "#sort=duration&desc=1", tmp_path, "--dump-dom").stdout
    durations = [float(v) for v in re.findall(r'<td data-v="([-\d.e]+)">[^<]*</td><td data-v="[^"]*">'
                                              r"\d\d:\d\d:\d\d", dom)]
    assert len(durations) == 6 and durations == sorted(durations, reverse=True)


def test_measured_memory_in_chromium(chromium, memory_run, tmp_path):
    dom = browse(chromium, memory_run.as_uri() + "#sort=measured%20memory&desc=1", tmp_path,
                 "--dump-dom").stdout
    cells = memory_cells(dom)
    assert len(cells) == 4
    values = [int(v) for v, _, _ in cells.values()]  # in the DOM's order: sorted by the script
    assert values == sorted(values, reverse=True) and list(cells)[-1] == "tiny"
    for name in ("big_shell", "big_python", "fails"):
        value, _, text = cells[name]
        assert int(value) >= 200 * MIB
        number = float(text.rstrip("MG")) * (1024 if text.endswith("G") else 1)
        assert number >= 200, text  # human units, as requested memory is written
    assert cells["big_shell"][1] == 'class="mem-over"'


def png_ink(path: Path) -> tuple[int, int, float]:
    """Width, height and the share of non-zero bytes in the filtered scanlines: a page of
    one colour filters to (almost) all zeros."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, size = 8, b"", (0, 0)
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    raw = zlib.decompress(idat)
    stride = len(raw) // size[1]
    pixels = bytearray(raw)
    del pixels[::stride]  # the filter-type byte of each scanline
    return size[0], size[1], 1 - pixels.count(0) / len(pixels)


def test_screenshot_is_not_blank(chromium, runs, tmp_path):
    shot = tmp_path / "report.png"
    browse(chromium, runs["ok"].as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1400,1000")
    width, height, ink = png_ink(shot)
    assert (width, height) == (1400, 1000)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    empty = tmp_path / "blank.png"
    browse(chromium, blank.as_uri(), tmp_path, f"--screenshot={empty}", "--window-size=1400,1000")
    # a blank page scores ~1e-6, a line of text ~2e-4; the report's charts ~2e-2
    assert png_ink(empty)[2] < 1e-4 and ink > 5e-3
    keep = os.environ.get("HPCFLOW_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
