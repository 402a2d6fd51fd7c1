"""Docs that cannot drift (issue 18): every `module.name` that docs/, README.md and the
code's comments and docstrings cite resolves in the code, every file path they cite
exists, and docs/protocol.md's error and limit tables are the code's own tables."""
import ast
import io
import re
import tokenize

import pytest

from conftest import REPO
from mpota.codec import mpota_lineproto as lineproto

DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
CODE_DIRS = ("device", "shared", "host", "tools", "tests", "tests/codec", "tests/vectors", "examples/hello")
HOST = {p.stem for p in (REPO / "host").glob("*.py")} - {"__init__", "__main__", "flash"}
DEVICE = {p.stem for p in (REPO / "device").glob("*.py")} | {p.stem for p in (REPO / "shared").glob("*.py")}
# what follows a dot after a module-like word but names a file or a key, not an attribute
NOT_ATTRS = {"py", "mpy", "toml", "json", "md", "txt", "img", "pem", "key", "bin", "uf2", "local", "pub", "ini", "new"}
REF = re.compile(r"(?<![\w/.\[-])((?:mpota_\w+|%s)(?:\.\w+)+)(?![\w-])(\(\))?" % "|".join(sorted(HOST)))
PATH = re.compile(r"(?<![\w.-])((?:device|shared|host|tools|tests|docs|examples)/[\w./-]+\.(?:py|md|ini|json))\b")


def _source(mod):
    for d in ("device", "shared", "host", "tools"):
        p = REPO / d / (mod + ".py")
        if p.exists():
            return p.resolve()
    return None


_TREES = {}


def _names(mod):
    """{top-level name: {attribute names}} of a module (None where a name's attributes
    cannot be known: a variable, an imported object)."""
    if mod not in _TREES:
        tree = ast.parse(_source(mod).read_text())
        out = {}
        for node in tree.body:
            for n in _defined(node):
                out[n] = None
            if isinstance(node, ast.ClassDef):
                attrs = set()
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        attrs.add(sub.name)
                    elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) \
                            and sub.value.id in ("self", "cls") and isinstance(sub.ctx, ast.Store):
                        attrs.add(sub.attr)
                    elif isinstance(sub, (ast.Assign, ast.AnnAssign)):
                        for t in (sub.targets if isinstance(sub, ast.Assign) else [sub.target]):
                            attrs.update(e.id for e in ast.walk(t) if isinstance(e, ast.Name))
                out[node.name] = attrs
        _TREES[mod] = out
    return _TREES[mod]


def _defined(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        ts = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [e.id for t in ts for e in ast.walk(t) if isinstance(e, ast.Name)]
    if isinstance(node, (ast.If, ast.Try)):
        body = list(node.body) + list(node.orelse) + [s for h in getattr(node, "handlers", []) for s in h.body]
        return [n for s in body for n in _defined(s)]
    return []


def _unresolved(ref, where=""):
    parts = ref.split(".")
    if where.startswith(("device/", "shared/")) and _source("mpota_" + parts[0]):
        parts[0] = "mpota_" + parts[0]  # device code names its modules by their import aliases
    mod, rest = parts[0], parts[1:]
    if rest[0] in NOT_ATTRS or _source(mod) is None:
        return None if rest[0] in NOT_ATTRS else "no module %s" % mod
    names = _names(mod)
    if rest[0] not in names:
        return "%s has no %s" % (mod, rest[0])
    attrs = names[rest[0]]
    if len(rest) > 1 and attrs is not None and rest[1] not in attrs:
        return "%s.%s has no %s" % (mod, rest[0], rest[1])
    return None


def _texts():
    """(where, text) for every doc and every comment and docstring of the code."""
    for p in DOCS:
        yield str(p.relative_to(REPO)), p.read_text()
    for d in CODE_DIRS:
        for p in sorted((REPO / d).glob("*.py")):
            if p.is_symlink():
                continue
            src = p.read_text()
            where = str(p.relative_to(REPO))
            for tok in tokenize.generate_tokens(io.StringIO(src).readline):
                if tok.type == tokenize.COMMENT:
                    yield "%s:%d" % (where, tok.start[0]), tok.string
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=False)
                    if doc:
                        yield "%s:%s" % (where, getattr(node, "lineno", 1)), doc


def test_every_cited_name_exists():
    bad = []
    for where, text in _texts():
        for m in REF.finditer(text):
            why = _unresolved(m.group(1).rstrip("."), where)
            if why:
                bad.append("%s: %s (%s)" % (where, m.group(1), why))
    assert not bad, "stale references:\n" + "\n".join(bad)


def test_every_cited_file_exists():
    bad = []
    for where, text in _texts():
        for m in PATH.finditer(text):
            p = m.group(1).rstrip(".")
            if not (REPO / p).exists() and not p.startswith("tests/vectors/") or "*" in p:
                bad.append("%s: %s" % (where, p))
    assert not bad, "missing files:\n" + "\n".join(bad)


def test_the_checker_finds_a_stale_name():
    assert _unresolved("mpota_hal.flash") == "mpota_hal has no flash"
    assert _unresolved("mpota_slots.Slots.no_such_method") == "mpota_slots.Slots has no no_such_method"
    assert _unresolved("mpota_slots.Slots.confirm") is None
    assert _unresolved("mpota_no_such_module.x") == "no module mpota_no_such_module"


def _table(doc, heading):
    """The rows (lists of cells) of the first table after `heading` in `doc`."""
    text = (REPO / "docs" / doc).read_text()
    after = text[text.index(heading):]
    rows = []
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set(cells[0]) <= set("- "):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header row


def test_protocol_error_table_is_the_codecs():
    rows = _table("protocol.md", "## 3. Error codes")
    doc = {int(r[0], 16): (r[1], int(r[2], 16)) for r in rows}
    code = {}
    n = 0
    while lineproto.error_name(n) != "error_%d" % n:
        code[n] = (lineproto.error_name(n), lineproto.error_flags(n))
        n += 1
    assert doc == code
    for r in rows:
        flags = int(r[2], 16)
        assert (r[3] == "yes") == (not flags & lineproto.F_NO_RETRY), r
        assert (r[4] == "yes") == bool(flags & lineproto.F_FATAL), r


def _config_defaults():
    tree = ast.parse((REPO / "device" / "mpota_config.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_SPEC":
            spec = eval(compile(ast.Expression(node.value), "mpota_config", "eval"),
                        {"__builtins__": {}, "str": str, "int": int, "bool": bool})
            return {k: v[0] for k, v in spec.items()}
    raise AssertionError("no _SPEC in mpota_config.py")


def test_protocol_limits_table_is_the_codes():
    """Each row of §6 names a config key (its default) or a constant (`module.NAME`)
    and the value the code has."""
    rows = _table("protocol.md", "## 6. Timeouts and limits")
    assert len(rows) >= 8
    cfg = _config_defaults()
    for r in rows:
        name, value = r[0].strip("`"), r[1]
        if "." in name:
            mod, attr = name.split(".")
            tree = ast.parse(_source(mod).read_text())
            consts = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign)
                      for t in n.targets if isinstance(t, ast.Name)}
            env = {}
            for k, v in consts.items():
                try:
                    env[k] = eval(compile(ast.Expression(v), "<c>", "eval"), {}, dict(env))
                except Exception:
                    pass
            actual = env[attr]
        else:
            assert name in cfg, "§6 names %r, which is not a config key" % name
            actual = cfg[name]
        assert str(actual) == value.split()[0].replace(",", ""), (r, actual)


@pytest.mark.parametrize("doc", [p.name for p in DOCS if p.parent.name == "docs"])
def test_docs_have_no_agent_version_stamp(doc):
    """Docs describe the code as it is; a version stamped in a heading goes stale."""
    assert not re.search(r"agent \d+\.\d+\.\d+", (REPO / "docs" / doc).read_text())
