"""mpota: over-the-air updates for MicroPython apps on the Raspberry Pi Pico W (the host side).

The parts, top down:

    cli.py        the `mpota` command: one command table, options, hints that name commands
    commands.py   what each command does and shows (display only: the flows are below)
    push.py       the push flow (upload, commit, reset, wait, trial check, confirm) and the
                  legacy UDP flow, as library functions that emit events and return reports
    fleet.py      one command over several devices at once
    client.py     the asyncio client of the native protocol (resumable, pipelined upload)
    images.py     application images: build from a folder (imgtool), load and check
    targets.py    where a device is, which key opens it, the id it must report
    keys.py       image-signing keys (Ed25519, imgtool's format) and the trust store
    provision.py  setting up a board over USB (mpremote): config, keys, agent, target
    deploy.py     which device files a board gets, as .py or .mpy (provision, simulator)
    output.py     rich text, one JSON object per line, or quiet
    errors.py     one exception hierarchy, with the exit code of each
    bootloader_messenger.py  the reference's BootloaderMessenger (legacy UDP)

A script runs the same flow as the CLI (examples/push_script.py):

    from mpota import images, push, targets
    report = asyncio.run(push.push(targets.resolve("sim"), images.load("examples/hello")))
"""
import os
import sys

__version__ = "0.3.0"  # the one place; pyproject.toml reads it from here


def _codec_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.path.join(here, "codec"),                       # installed: mpota/codec
              os.path.join(os.path.dirname(here), "shared")):    # a clone: ../shared
        if os.path.isfile(os.path.join(d, "proto.py")):
            return d
    raise ImportError("mpota: the protocol codec (proto.py, framing.py, ...) is missing")


# The protocol codec is one source that also runs on MicroPython, where its files sit
# flat on the board and import each other flat (`from framing import ...`); relative
# imports would break it there. So it is not a package: pyproject.toml installs its
# files as mpota/codec/ (the clone keeps them in shared/), and its folder goes on
# sys.path, first, so that a same-named module of another distribution (there is a
# `proto` on PyPI) cannot stand in for ours.
CODEC_DIR = _codec_dir()
if CODEC_DIR not in sys.path:
    sys.path.insert(0, CODEC_DIR)
