"""mpota: over-the-air updates for MicroPython apps on the Raspberry Pi Pico W (the host side).

The parts, top down:

    cli.py        the `mpota` command: one command table, options, hints that name commands
    commands.py   what each command does and shows (display only: the flows are below)
    push.py       the flows: the resumable upload, the push (upload, commit, reset, wait,
                  trial check, confirm) and the legacy UDP flow, as library functions that
                  emit events and return reports
    fleet.py      one command over several devices at once
    rollout.py    rollouts in waves (canary, soak, auto-pause), over any Transport
    mqtt.py       beyond one LAN: signed commands and retained states through an MQTT
                  broker (paho-mqtt), MqttTransport for the same rollout engine
    release.py    `publish`: an image and its signed record where boards pull it over HTTP
    httpserve.py  `serve`: a folder over HTTP/1.1 with Range (http.server)
    client.py     the asyncio client of the native protocol: connection, auth, requests,
                  pipelined upload and read (the protocol only, no flow)
    status.py     the device's status reply, typed (Status)
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
__version__ = "0.5.0"  # the one place; pyproject.toml reads it from here

# The protocol codec (shared/, flat modules that also run on MicroPython) is the
# subpackage mpota.codec: pyproject.toml installs shared/ there, and in a clone
# host/codec is a link to ../shared. Its modules import each other relatively here
# and flat on the board, and all are named mpota_*, so the host never puts the codec
# on sys.path and no other distribution's module can stand in for one of them.
