"""Device imports point one way: every device module imports alone and in any
order under MicroPython, and the import graph (lazy imports and imports made
by name included) has no cycle but the app's own `main`; the shared codec
imports no device module and nothing by a name held in a string. Run on the
.venv interpreter and, where present, the 32-bit v1.27 build."""
import ast
import random
import subprocess

import pytest

from conftest import INTERPRETERS, REPO

DEVICE = REPO / "device"
SHARED = REPO / "shared"
# main.py runs the device when imported: it is the top, nothing imports it.
MODULES = sorted(p.stem for p in DEVICE.glob("*.py") if p.stem != "main")
# the device's own modules (device/ also links the shared codec's files)
OWN = {p.stem for p in DEVICE.glob("*.py") if not p.is_symlink()}
BY_NAME = ("__import__", "_use")  # calls that import the module named by their argument


def _imports(path, names):
    """Every module of `names` that `path` imports, at top level or inside a
    function, by an import statement or by name (BY_NAME with a literal)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BY_NAME
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found & set(names)


def _cycles(graph):
    """Every import cycle found by a depth-first walk, each as a list."""
    found, done, stack = [], set(), []

    def visit(m):
        if m in stack:
            found.append(stack[stack.index(m):] + [m])
            return
        if m in done:
            return
        stack.append(m)
        for n in sorted(graph[m]):
            visit(n)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    return found


def test_import_graph_has_no_cycle_but_the_apps_main():
    every = MODULES + ["main"]
    graph = {m: _imports(DEVICE / (m + ".py"), every) for m in every}
    assert "main" in graph["mpota_bootmgr"]  # the app's main.py, imported by name: counted
    bad = [c for c in _cycles(graph) if "main" not in c]
    assert not bad, ["import cycle: " + " -> ".join(c) for c in bad]
    assert "mpota_agent" not in graph["mpota_legacy"] and "mpota_service" not in graph["mpota_update"]


def test_the_codec_imports_no_device_module_and_nothing_by_name():
    for p in sorted(SHARED.glob("*.py")):
        tree = ast.parse(p.read_text())
        assert not _imports(p, OWN), (p.name, _imports(p, OWN))
        by_name = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                   and isinstance(n.func, ast.Name) and n.func.id in BY_NAME]
        assert not by_name, "%s imports by a name at line %s" % (p.name, by_name)


def test_every_loaded_module_has_one_declared_lifetime():
    """agent._MODS/_LIFE (the runtime scopes) and bootmgr._BOOT (the boot
    scope) name device modules; every module is in one of them or resident."""
    def const(path, name):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
                return node.value
        raise AssertionError("%s: no %s" % (path.name, name))

    mods = ["mpota_" + n for n in ast.literal_eval(const(DEVICE / "mpota_agent.py", "_MODS")).split()]
    life = const(DEVICE / "mpota_agent.py", "_LIFE")
    assert len(life.args[0].elts) == len(mods), "one _LIFE entry per _MODS entry"
    boot = ast.literal_eval(const(DEVICE / "mpota_bootmgr.py", "_BOOT"))
    assert len(set(mods)) == len(mods) and set(mods) | set(boot) <= set(MODULES)
    resident = {"mpota", "mpota_agent", "mpota_hal", "mpota_wifi", "mpota_udp", "mpota_smpudp", "mpota_pace",
                "mpota_mqtt",
                "mpota_logring",  # the console ring, while "log_size" is not 0
                "mpota_slotio",  # a slot's reader: the app's mount keeps one (slots.py imports it at boot)
                "mpota_bootmgr"}
    assert set(MODULES) - set(mods) - set(boot) == resident


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
