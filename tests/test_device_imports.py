"""Device imports point one way: every device module imports alone and in any
order under MicroPython, and the import graph (lazy imports included) has no
cycle. Run on the .venv interpreter and, where present, the 32-bit v1.27 build."""
import ast
import random
import subprocess

import pytest

from conftest import INTERPRETERS, REPO

DEVICE = REPO / "device"
# main.py runs the device when imported: it is the top, nothing imports it.
MODULES = sorted(p.stem for p in DEVICE.glob("*.py") if p.stem != "main")


def _imports(path):
    """Every device module that `path` imports, at top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found & set(MODULES)


def test_import_graph_has_no_cycle():
    graph = {m: _imports(DEVICE / (m + ".py")) for m in MODULES}
    done, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for n in sorted(graph[m]):
            visit(n)
        stack.pop()
        done.add(m)

    for m in MODULES:
        visit(m)
    assert "mpota_agent" not in graph["mpota_legacy"] and "mpota_service" not in graph["mpota_update"]


def _run(mp, order):
    code = "import sys\nsys.path.insert(0, %r)\n" % str(DEVICE)
    code += "".join("import %s\n" % m for m in order) + "print('ok', len(sys.modules))\n"
    r = subprocess.run([mp, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    return r.returncode, (r.stdout + r.stderr).strip()


@pytest.mark.parametrize("mp", INTERPRETERS)
def test_every_module_imports_alone(mp):
    bad = []
    for m in MODULES:
        rc, out = _run(mp, [m])
        if rc != 0 or not out.startswith("ok"):
            bad.append("%s: %s" % (m, out.splitlines()[-1] if out else rc))
    assert not bad, bad


@pytest.mark.parametrize("mp", INTERPRETERS)
def test_modules_import_in_any_order(mp):
    rnd = random.Random(12)
    for _ in range(5):
        order = MODULES[:]
        rnd.shuffle(order)
        rc, out = _run(mp, order)
        assert rc == 0 and out.startswith("ok"), (order, out)
