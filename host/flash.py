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


if __name__ == "__main__":
    _load_package()
    from mpota.cli import main

    sys.exit(main(prog="flash.py"))
