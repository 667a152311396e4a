"""The floors of the house hold: import-linter's contracts pass and no module imports itself in a circle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("opsloop.schemas", "opsloop.config", "opsloop.models", "opsloop.connectors", "opsloop.streams",
            "opsloop.ops")


def import_cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative: the graph is deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), str(ROOT / "pyproject.toml")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_no_module_imports_itself_through_others():
    assert import_cycles(grimp.build_graph(*PACKAGES)) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> c -> a, d alone
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        modules = set(edges)

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert import_cycles(Graph()) == [["a", "b", "c"]]


def test_generic_top_level_names_are_not_importable_from_outside_the_checkout(tmp_path):
    probe = "import importlib.util as u; print(u.find_spec('models'), u.find_spec('opsloop.models') is not None)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout.split() == ["None", "True"], run.stdout + run.stderr


def test_a_wheel_installs_only_the_opsloop_namespace_with_its_assets(tmp_path):
    wheels, venv, source = tmp_path / "wheels", tmp_path / "venv", tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):  # a copy: the build writes build/ beside the sources
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(source)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    wheel = next(wheels.glob("opsloop-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
                   check=True, capture_output=True)
    assert sorted(p.name for p in Path(site).iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") == ["opsloop"]
    probe = ("import importlib.util as u, opsloop.config.assets as a; "  # the wheel's dependencies are not installed
             "print(u.find_spec('models'), a.DEMO_SITE.exists(), len(a.sop_texts()) > 40, 'VIEW' in a.views_sql())")
    run = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout.split() == ["None", "True", "True", "True"], run.stdout + run.stderr
    assert len(list(Path(site, "opsloop", "schemas", "released").glob("*/v1.avsc"))) >= 12
    noc = Path(site, "opsloop", "ops")  # the NOC's templates, script and stylesheet
    assert (noc / "noc_templates" / "page.html").is_file() and (noc / "noc_static" / "noc.js").is_file()
