#!/usr/bin/env python3
"""The front door in a clone: `python host/flash.py --target pico app.img` runs the
same CLI as the installed `mpota` command (docs/cli.md).

host/ is the `mpota` package. Run as a script, this file loads it from this clone
(even when another mpota is installed) and calls its CLI.
"""
import importlib.util
import os
import sys


def _load_package() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == here:
        del sys.path[0]  # host/*.py are modules of the package, not top-level ones
    spec = importlib.util.spec_from_file_location("mpota", os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    assert spec is not None and spec.loader is not None
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["mpota"] = pkg
    spec.loader.exec_module(pkg)


def _missing(e: ModuleNotFoundError) -> int:
    """A runtime dependency is missing from this Python: run again with the clone's
    .venv (made by `make setup`) when there is one, else say how to get it."""
    here = os.path.dirname(os.path.abspath(__file__))
    venv = os.path.join(os.path.dirname(here), ".venv")
    venv_py = os.path.join(venv, "bin", "python")
    if os.path.exists(venv_py) and os.path.realpath(sys.prefix) != os.path.realpath(venv) \
            and not os.environ.get("MPOTA_NO_REEXEC"):
        os.environ["MPOTA_NO_REEXEC"] = "1"  # once: that Python must have them
        os.execv(venv_py, [venv_py, os.path.abspath(__file__)] + sys.argv[1:])
    sys.stderr.write("error: this Python (%s) lacks the package %r that mpota needs\n"
                     "hint: run `make setup` in the clone, then `.venv/bin/python host/flash.py ...` "
                     "(or `pip install .`, which gives the `mpota` command)\n" % (sys.executable, e.name))
    return 1


if __name__ == "__main__":
    try:
        _load_package()
        from mpota.cli import main
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "mpota":
            raise
        sys.exit(_missing(e))
    sys.exit(main(prog="flash.py"))
