#!/usr/bin/env python3
"""A whole push through the library: the flow `mpota push` runs, without the CLI.

    python examples/push_script.py HOST:PORT KEY_FILE [APP_FOLDER_OR_IMAGE] [--version X.Y.Z]

Needs the mpota package (`pip install .`, or `make setup` in a clone).
"""
import argparse
import asyncio
import sys

from mpota import images, push, targets
from mpota.errors import MpotaError


def show(event, **fields):
    if event in ("begin", "committed", "booted", "done"):
        print(event, " ".join("%s=%s" % kv for kv in sorted(fields.items())))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("address", help="HOST:PORT of the device's agent")
    p.add_argument("key_file", help="file holding the device's key (64 hex characters)")
    p.add_argument("app", nargs="?", default="examples/hello", help="app folder or image file")
    p.add_argument("--version", help="version when building from a folder")
    a = p.parse_args()
    try:
        target = targets.resolve(a.address, key_file=a.key_file)
        image = images.load(a.app, a.version)
        report = asyncio.run(push.push(target, image, on_event=show))
    except push.AppCrashed as e:
        print("the new version crashed on trial:", e.message, file=sys.stderr)
        return e.exit_code
    except MpotaError as e:
        print("failed:", e, file=sys.stderr)
        return e.exit_code
    print("%s is %s in slot %s (%.1f KiB/s)" % (report.version, report.state, report.slot,
                                                report.upload.rate / 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
