"""The host side as a library: the push flow a script can call, hints that lead
somewhere, the CLI's table and options, and no asyncio noise after a run."""
import asyncio
import gc
import os
import re
import shlex
import subprocess
import sys
import types

import pytest

from conftest import REPO
from mpota import cli, commands, errors, push
from simproc import Sim

# --- every hint names a real command and real flags ------------------------------------

def _ctx(command, spec="pico"):
    return types.SimpleNamespace(prog="mpota", command=command, spec=spec)


def _all_hinted_errors():
    errs = [errors.Unreachable("x"), errors.DeviceTimeout("x"), errors.AuthError("x"),
            errors.NoSpace("x"), errors.VersionRefused("x"), errors.BadImage("x"),
            push.OldSlotBooted("x"), push.AppCrashed("x", rollback_slot="a", max_trials=3),
            push.AppCrashed("x", rollback_slot=None)]
    for code in ("incorrect_state", "out_of_range", "no_memory", "internal", "auth_required"):
        errs.append(errors.device_error(code, "x"))
    return errs


@pytest.mark.parametrize("command", ["push", "status", "ping", "legacy", "build"])
def test_every_hint_names_real_commands_and_flags(command):
    parser = cli.build_parser("mpota")
    flags = {s for a in parser._actions for s in a.option_strings}
    for sub in cli.COMMANDS:
        sp = parser._subparsers._group_actions[0].choices[sub.name]
        flags |= {s for a in sp._actions for s in a.option_strings}
    for err in _all_hinted_errors():
        hint = commands.with_cli_hint(err, _ctx(command)).hint
        assert hint, err
        for quoted in re.findall(r"`([^`]+)`", hint):
            words = shlex.split(quoted)
            assert words[0] == "mpota", hint
            args = cli.parse_args(words[1:], "mpota")  # SystemExit if it is not a real command line
            assert args.command in cli.BY_NAME
        sim_flags = (REPO / "tools" / "sim.py").read_text()
        for m in re.finditer(r"(tools/sim.py )?(?<![\w`])(--[a-z][a-z-]+)", hint):
            assert m.group(2) in (sim_flags if m.group(1) else flags), (m.group(2), hint)
        assert "flash.py" not in hint and "boot_note" not in hint and "slot_size" not in hint


def test_library_errors_name_no_command():
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.MpotaError):
            assert "`" not in cls.default_hint and "--" not in cls.default_hint, cls
    for _, hint in errors._BY_CODE.values():
        assert hint is None or ("`" not in hint and "--" not in hint), hint


def test_a_ping_that_fails_does_not_suggest_ping():
    assert "ping" not in commands.with_cli_hint(errors.Unreachable("x"), _ctx("ping")).hint
    assert "`mpota -t pico ping`" in commands.with_cli_hint(errors.Unreachable("x"), _ctx("status")).hint


def test_crashed_trial_suggests_rollback_then_reset_or_says_what_happens():
    h = commands.with_cli_hint(push.AppCrashed("x", rollback_slot="b", max_trials=3), _ctx("push")).hint
    assert h.index("`mpota -t pico rollback`") < h.index("`mpota -t pico reset`")
    assert "rolls back by itself after 3 unconfirmed resets" in h
    h = commands.with_cli_hint(push.AppCrashed("x"), _ctx("push")).hint
    assert "no confirmed version" in h


def test_hints_go_by_exception_class_and_error_code_not_by_message_text():
    # the class decides: a text that reads like another error's changes nothing
    err = errors.Unreachable("cannot resolve picow-1.local: no such name")
    assert "mDNS" not in err.hint and "--key-file" not in commands.with_cli_hint(err, _ctx("status")).hint
    err = errors.LocalNameUnresolved("name lookup failed", "mDNS help", name="picow-1")
    assert "--key-file" in commands.with_cli_hint(err, _ctx("status")).hint
    err = errors.VersionRefused("security counter 1 is below this device's floor 3")
    assert "--allow-downgrade" in commands.with_cli_hint(err, _ctx("push")).hint
    # a subclass gets its class's hint (a name match would miss it)
    class Smaller(errors.NoSpace):
        pass
    assert "`mpota -t pico status`" in commands.with_cli_hint(Smaller("x"), _ctx("push")).hint
    # refinements keep the name --json reports
    assert err.as_dict()["error"] == "VersionRefused"
    assert errors.LocalNameUnresolved("x").as_dict()["error"] == "Unreachable"


def test_error_codes_are_the_codecs_names_as_values():
    from mpota.codec import mpota_lineproto as lineproto

    names = [lineproto.error_name(n) for n in range(len(errors.Code))]
    assert [c.value for c in errors.Code] == names and lineproto.error_name(len(names)).startswith("error_")
    assert errors.Code.BUSY == "busy" and "%s" % errors.Code.BUSY == "busy"
    rows = [c for h in commands.HINTS for c in h.codes] + list(errors._BY_CODE)
    assert rows and all(isinstance(c, errors.Code) for c in rows)
    assert isinstance(errors.device_error("busy", "x"), errors.BusyError)
    floor = errors.device_error("version_refused", "security counter 1 is below this device's floor 7 "
                                "(anti-rollback: no flag allows it)", op="commit")
    assert isinstance(floor, errors.BelowFloor) and floor.floor == 7


def test_provision_ready_timeout_hint_names_ping():
    from mpota import provision

    ctx = types.SimpleNamespace(prog="mpota", command="provision", spec=None,
                                args=types.SimpleNamespace(name="picow-1"))
    err = errors.BoardNotReady("the board did not print the line", "its serial output says why")
    assert isinstance(err, provision.BoardError) and err.as_dict()["error"] == "BoardError"
    assert commands.with_cli_hint(err, ctx).hint.endswith("`mpota -t picow-1 ping`")


# --- the command table and its options --------------------------------------------------

def test_one_table_drives_parser_default_command_and_fleet():
    names = [c.name for c in cli.COMMANDS]
    assert len(names) == len(set(names)) == len(cli.BY_NAME)
    for c in cli.COMMANDS:
        assert cli.parse_args([c.name] + _required(c), "mpota").command == c.name
    assert {c.name for c in cli.COMMANDS if c.fleet} == {"push", "status", "ping", "reset", "confirm"}


def _required(c):
    return {"push": ["x.img"], "build": ["app"], "read": ["--slot", "a"], "dump": ["--slot", "a"],
            "erase": ["--slot", "a"], "legacy": ["x.img"], "rollout": ["status"],
            "publish": ["x.img", "--dir", "releases"], "serve": ["--dir", "releases"],
            "provision": ["--port", "/dev/ttyACM0", "--name", "p", "--ssid", "s"]}.get(c.name, [])


def _help(*args):
    env = dict(os.environ, COLUMNS="80")
    r = subprocess.run([sys.executable, str(REPO / "host" / "flash.py")] + list(args) + ["--help"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_sub_command_help_shows_only_what_applies_and_explains_every_option():
    build = _help("build")
    for absent in ("--target", "--key-file", "--timeout", "--parallel", "--udp-port", "--port"):
        assert absent not in build
    assert "--udp-port" not in _help("status") and "--parallel" in _help("status")
    assert "--parallel" not in _help("read") and "--udp-port" in _help("legacy")
    assert "--key-file" not in _help("legacy")
    for cmd in cli.COMMANDS:
        text = _help(cmd.name)
        assert "examples:" in text, cmd.name
        parser = cli.build_parser()._subparsers._group_actions[0].choices[cmd.name]
        for a in parser._actions:
            assert a.help, (cmd.name, a.option_strings)  # every option explained
    read = _help("read")
    for flag in ("--slot", "--offset", "--length", "-o FILE"):
        assert flag in read


@pytest.mark.parametrize("argv", [
    ["--timeout", "-3", "status"], ["--timeout", "0", "status"], ["status", "--connect-timeout", "0"],
    ["push", "x.img", "--window", "0"], ["push", "x.img", "--wait", "-1"], ["--parallel", "0", "status"],
    ["push", "x.img", "--retries", "-1"], ["read", "--slot", "a", "--offset", "-5"], ["--port", "0", "ping"],
])
def test_non_positive_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.parse_args(argv)
    assert ei.value.code == errors.EXIT_USAGE
    assert "must be" in capsys.readouterr().err


def test_version_names_the_tool_and_the_protocol(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.parse_args(["--version"], "mpota")
    assert ei.value.code == 0
    out = capsys.readouterr().out
    import mpota
    from mpota.codec import mpota_lineproto as lineproto
    assert out.strip() == "mpota %s (protocol %d)" % (mpota.__version__, lineproto.PROTO)
    # `--version` after an image or folder is still the image version
    assert cli.parse_args(["app", "--version", "1.2.3"]).version == "1.2.3"


def test_shell_completion_lists_commands(tmp_path):
    out = tmp_path / "completions"
    env = dict(os.environ, _ARGCOMPLETE="1", COMP_LINE="mpota sta", COMP_POINT="9",
               _ARGCOMPLETE_STDOUT_FILENAME=str(out), _ARGCOMPLETE_IFS="\n")
    r = subprocess.run([sys.executable, "-m", "mpota"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_text().split() == ["status"]


# --- no asyncio noise ---------------------------------------------------------------------

def test_a_request_given_up_on_leaves_no_unretrieved_future():
    """A request that stopped waiting (timeout, Ctrl-C, a failed drain) and the
    connection then failing must not print "Future exception was never retrieved"."""
    from mpota.client import Client

    noise = []

    async def go():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: noise.append(context.get("message")))
        c = Client("127.0.0.1", 1)
        c._pending[7] = loop.create_future()  # nobody awaits it any more
        c._fail_all(errors.ConnectionLost("gone"))
        gc.collect()
        await asyncio.sleep(0)
    asyncio.run(go())
    gc.collect()
    assert not noise, noise


# --- a script runs the same flow as the CLI -------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_push_script_runs_a_whole_push_against_the_simulator(tmp_path):
    with Sim(state=tmp_path / "dev") as sim:
        key = tmp_path / "dev.key"
        key.write_text(sim.key.hex())
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
        env["MPOTA_TARGETS"] = os.devnull
        r = subprocess.run([sys.executable, str(REPO / "examples" / "push_script.py"),
                            "127.0.0.1:%d" % sim.tcp_port, str(key), str(REPO / "examples" / "hello")],
                           capture_output=True, text=True, timeout=150, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is confirmed in slot" in r.stdout and "done " in r.stdout
