"""Groups in the targets file (`-t @lab`, `-t pico-1,@lab`, a pattern group
"gh-*") and the shell completion of -t: target names and @group names."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from mpota import cli, targets
from mpota.errors import UsageError

FILE = '''[targets.pico-1]
host = "10.0.0.1"
[targets.pico-2]
host = "10.0.0.2"
[targets.gh-1]
host = "10.0.1.1"
[targets.gh-2]
host = "10.0.1.2"

[groups]
lab = ["pico-1", "pico-2"]
greenhouse = "gh-*"
all = ["@lab", "greenhouse", "10.0.0.9:8472"]
'''


@pytest.fixture
def tf(tmp_path):
    f = tmp_path / "targets.toml"
    f.write_text(FILE)
    return str(f)


def test_at_group_comma_lists_and_patterns(tf):
    assert targets.expand("@lab", tf, env={}) == ["pico-1", "pico-2"]
    assert targets.expand("pico-2,@lab", tf, env={}) == ["pico-2", "pico-1"]  # order kept, once each
    assert targets.expand("@greenhouse", tf, env={}) == ["gh-1", "gh-2"]     # the pattern, file order
    assert targets.expand("greenhouse", tf, env={}) == ["gh-1", "gh-2"]      # a bare group name still works
    assert targets.expand("@all", tf, env={}) == ["pico-1", "pico-2", "gh-1", "gh-2", "10.0.0.9:8472"]
    # -t repeated and comma lists join into one value before expansion
    assert cli.parse_args(["-t", "gh-1", "status", "-t", "@lab"]).target == "gh-1,@lab"


def test_unknown_group_names_the_groups_and_suggests(tf):
    with pytest.raises(targets.UnknownGroup) as e:
        targets.expand("pico-1,@labb", tf, env={})
    assert e.value.message == "no group named 'labb'; groups: @lab, @greenhouse, @all"
    assert e.value.hint.startswith("did you mean @lab?") and e.value.exit_code == 1
    with pytest.raises(targets.UnknownGroup) as e:
        targets.expand("@gree", tf, env={})  # a prefix of a group
    assert e.value.suggestion == "@greenhouse"
    with pytest.raises(targets.UnknownGroup):
        targets.expand("@pico-1", tf, env={})  # a target, not a group


def test_unknown_group_through_the_cli(tf):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    r = subprocess.run([sys.executable, str(REPO / "host" / "flash.py"), "--targets", tf, "-t", "@lba", "status"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=str(REPO))
    assert r.returncode == 1 and "no group named 'lba'" in r.stderr and "did you mean @lab?" in r.stderr, r.stderr


def test_a_pattern_that_matches_nothing_is_an_error(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('[targets.a]\nhost = "h"\n[groups]\ng = "zz-*"\n')
    with pytest.raises(UsageError) as e:
        targets.expand("@g", str(f), env={})
    assert "the pattern 'zz-*' matches no target" in e.value.message and "the targets are a" in e.value.hint


def test_targets_command_shows_a_pattern_and_its_matches(tf):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    r = subprocess.run([sys.executable, str(REPO / "host" / "flash.py"), "--targets", tf, "--json", "targets"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=str(REPO))
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"event": "group", "name": "greenhouse", "members": ["gh-1", "gh-2"], "pattern": "gh-*"} in evs


def test_complete_offers_targets_and_groups(tf):
    every = ["pico", "sim", "pico-1", "pico-2", "gh-1", "gh-2", "@lab", "@greenhouse", "@all"]
    assert targets.complete("", tf, env={}) == every
    assert targets.complete("gh", tf, env={}) == ["gh-1", "gh-2"]
    assert targets.complete("pico-1,@", tf, env={}) == ["pico-1,@lab", "pico-1,@greenhouse", "pico-1,@all"]
    # an unreadable targets file completes the built-ins, with no error
    bad = os.path.join(os.path.dirname(tf), "bad.toml")
    with open(bad, "w") as f:
        f.write("[targets.x\n")
    assert targets.complete("", bad, env={}) == ["pico", "sim"]


def test_shell_completion_through_argcomplete(tf, tmp_path):
    """What bash gets: argcomplete run by the real entry point, the -t completer wired on
    the main parser and on a sub-command, --targets honoured."""
    outf = tmp_path / "completions"

    def comp(line):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
        env.update(_ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)), _ARGCOMPLETE_IFS="\n",
                   _ARGCOMPLETE_STDOUT_FILENAME=str(outf), MPOTA_TARGETS=tf)
        r = subprocess.run([sys.executable, str(REPO / "host" / "flash.py")], capture_output=True, text=True,
                           timeout=60, env=env, cwd=str(REPO))
        assert r.returncode == 0, r.stderr
        return sorted(x.strip() for x in outf.read_text().split("\n") if x.strip())

    assert comp("mpota -t @") == ["@all", "@greenhouse", "@lab"]
    assert comp("mpota status -t pico-") == ["pico-1", "pico-2"]
    other = tmp_path / "other.toml"
    other.write_text('[targets.solo]\nhost = "10.0.0.3"\n[groups]\nx = ["solo"]\n')
    assert comp("mpota --targets %s -t " % other) == ["@x", "pico", "sim", "solo"]
