"""Targets: where a device is and which key opens it.

`--target NAME` is looked up in a TOML targets file (--targets FILE, else
$MPOTA_TARGETS, else $XDG_CONFIG_HOME/mpota/targets.toml, XDG_CONFIG_HOME
defaulting to ~/.config), then in the built-ins `pico` and `sim`. A spec
`usb:PORT` is the board on that USB serial port (usb:/dev/ttyACM0, usb:COM3;
host/usb.py). Only a spec
that looks like a host (a dot or a colon in it, an IP literal, `localhost`)
is read as HOST[:PORT] (IPv6 in brackets: [fe80::1]:8472); any other unknown
name is a usage error listing the known names, never a DNS query. Format
(docs/cli.md):

    [targets.kitchen]
    host = "192.168.1.50"     # name or address
    port = 8472               # TCP, native protocol
    udp_port = 8473           # legacy UDP service
    key_file = "~/.config/mpota/kitchen.key"   # 64 hex chars (or 32 raw bytes)
    device_id = "e6614c311b6a7a2f"            # recorded by `mpota provision`
    sign_key = "~/.config/mpota/signing-key.pem"   # signs folder builds pushed here

A top-level `sign_key = "PATH"` (before any table) is the default signing key
of every folder build (`push`, `build`); a target's own sign_key wins, and
--sign-key wins over both. Any other key is an error naming its line and the
closest known key.

    [groups]
    lab = ["kitchen", "pico2", "10.0.0.7:8472"]   # names, HOST[:PORT], groups (@lab or lab)
    greenhouse = "gh-*"                           # a pattern: the file's targets it matches

`-t` may name several devices (`-t a -t b`, `-t a,b`, `-t @lab`, `-t pico-1,@lab`):
expand() turns that into the list of single-device specs, each resolved on its
own. `@NAME` names a group only; a bare NAME a target or a group.

Keys come from (first wins): --key-file, $MPOTA_KEY (hex), $MPOTA_KEY_FILE, the
target's key_file. Never from a command-line value; never printed.
"""
from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None  # type: ignore[assignment]

from .codec import mpota_lineproto as lineproto
from .errors import UsageError

# Where the targets file was before XDG_CONFIG_HOME was honoured: still read when
# the XDG location has none.
DEFAULT_TARGETS = Path("~/.config/mpota/targets.toml")

USB = "usb:"  # a target usb:PORT is a board on a USB serial port (host/usb.py)

BUILTINS = {
    "pico": {"host": "PicoW.local", "port": lineproto.TCP_PORT, "udp_port": lineproto.UDP_PORT},
    "sim": {"host": "127.0.0.1", "port": lineproto.TCP_PORT, "udp_port": lineproto.UDP_PORT,
            "key_file": ".sim-state/device.key"},
}


@dataclass
class Target:
    name: str
    host: str
    port: int = lineproto.TCP_PORT
    udp_port: int = lineproto.UDP_PORT
    key_file: Optional[str] = None
    key: Optional[bytes] = field(default=None, repr=False)  # never shown
    key_source: str = "none"                                # where the key came from (no value)
    device_id: Optional[str] = None  # the id the device must report (hex), when recorded
    sign_key: Optional[str] = None   # signing key for folder builds: the target's, else the file's default

    @property
    def address(self) -> str:
        if self.host.startswith(USB):
            return self.host  # usb:PORT (host/usb.py): no TCP port
        h = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (h, self.port)

    def describe(self) -> dict:
        """What may be shown: everything but the key itself."""
        return {"target": self.name, "host": self.host, "port": self.port,
                "udp_port": self.udp_port, "key": self.key_source, "device_id": self.device_id}


def config_dir(env: Optional[dict] = None) -> Path:
    """The user's mpota folder: $XDG_CONFIG_HOME/mpota, XDG_CONFIG_HOME defaulting
    to ~/.config. It holds targets.toml, the device keys (keys/NAME.key) and the
    signing key `mpota keygen` makes."""
    env = os.environ if env is None else env
    return Path(env.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "mpota"


def targets_path(override: Optional[str] = None, env: Optional[dict] = None) -> Path:
    """--targets FILE, else $MPOTA_TARGETS, else config_dir()/targets.toml (or the
    old ~/.config/mpota/targets.toml when only that one exists)."""
    env = os.environ if env is None else env
    p = override or env.get("MPOTA_TARGETS")
    if p:
        return Path(p).expanduser()
    path = config_dir(env) / "targets.toml"
    old = DEFAULT_TARGETS.expanduser()
    return old if not path.exists() and old.exists() else path


def looks_like_host(spec: str) -> bool:
    """Only these are ever looked up as hosts: a name with a dot (picow-1.local), any
    HOST:PORT or IPv6 form (a colon), an IP literal, or localhost."""
    if "." in spec or ":" in spec or spec.startswith("[") or spec.split(":")[0] == "localhost":
        return True
    try:
        ipaddress.ip_address(spec)
    except ValueError:
        return False
    return True


def known_names(table: dict, groups: Optional[dict] = None) -> list:
    """Built-ins first, then the file's targets and groups, each once."""
    return list(dict.fromkeys(list(BUILTINS) + list(table) + list(groups or {})))


class UnknownTarget(UsageError):
    """A name that is neither a target, a group, a built-in nor host-like."""

    def __init__(self, spec: str, known: list, path: Path):
        close = difflib.get_close_matches(spec, known, n=1, cutoff=0.6)
        self.spec, self.known, self.path = spec, known, path
        self.suggestion = close[0] if close else None
        super().__init__("no target named %r; known: %s" % (spec, ", ".join(known)),
                         "%sthe targets file is %s%s; a host name needs a dot (%s.local), an address "
                         "or HOST:PORT" % ("did you mean %s? " % close[0] if close else "", path,
                                           "" if path.exists() else " (absent)", spec))


def unknown_target(spec: str, table: dict, groups: Optional[dict], path: Path) -> UnknownTarget:
    return UnknownTarget(spec, known_names(table, groups), path)


# The keys a targets file may hold: a typo must not pass silently (`keyfile`, `prot`
# would leave the default key or port, and the command would talk to another device).
TARGET_KEYS = ("host", "port", "udp_port", "key_file", "device_id", "sign_key")
TOP_KEYS = ("targets", "groups", "sign_key")


def _line_of(text: str, section: Optional[str], key: str) -> Optional[int]:
    """The line number of `key = ...` in table `section` (e.g. the table of target x; None: the top level)."""
    current: Optional[str] = None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$", line)
        if m:
            current = re.sub(r"[\s\"']", "", m.group(1))
        elif current == section and re.match(r"^\s*[\"']?%s[\"']?\s*=" % re.escape(key), line):
            return n
    return None


def _unknown_key(path: Path, text: str, key: str, known: tuple, where: str, section: Optional[str]):
    line = _line_of(text, section, key)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return UsageError("unknown key %r %s (%s%s)%s" % (
        key, where, path, " line %d" % line if line else "", ": did you mean %r?" % close[0] if close else ""),
        "the keys are %s (docs/cli.md)" % ", ".join(known))


def _check_keys(path: Path, text: str, data: dict) -> None:
    for k in data:
        if k not in TOP_KEYS:
            raise _unknown_key(path, text, k, TOP_KEYS, "at the top of the targets file", None)
    for name, entry in (data.get("targets") or {}).items():
        if not isinstance(entry, dict):
            continue  # load_config says what is wrong
        for k in entry:
            if k == "key":
                raise UsageError("target %s: keys are not stored in the targets file (%s)" % (name, path),
                                 "put the key in a file and give its path as key_file")
            if k not in TARGET_KEYS:
                raise _unknown_key(path, text, k, TARGET_KEYS, "in target %r" % name, "targets." + name)


def load_config(path: Path, required: bool = False) -> dict:
    """A targets file as {"targets": {name: table}, "groups": {name: [spec, ...]},
    "sign_key": the default signing key's path or None}; empty when the default
    file is absent. Unknown keys are an error naming the line and the closest key."""
    if not path.exists():
        if required:
            raise UsageError("targets file %s not found" % path, "create it (docs/cli.md shows the format)")
        return {"targets": {}, "groups": {}, "sign_key": None}
    if tomllib is None:
        raise UsageError("reading %s needs Python 3.11+ (tomllib)" % path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError("cannot read targets file %s: %s" % (path, e))
    _check_keys(path, text, data)
    table = data.get("targets", {})
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UsageError("%s: expected [targets.NAME] tables" % path)
    groups = data.get("groups", {})
    if not isinstance(groups, dict):
        raise UsageError("%s: expected a [groups] table of NAME = [targets]" % path)
    for name, members in groups.items():
        if isinstance(members, str) and members.strip():
            continue  # a pattern over the file's target names (group_members)
        if (not isinstance(members, list) or not members
                or not all(isinstance(m, str) and m.strip() for m in members)):
            raise UsageError("%s: group %s must be a non-empty list of target names, or a pattern "
                             "such as \"gh-*\"" % (path, name))
        if name in table or name in BUILTINS:
            # One name, one meaning: otherwise `-t NAME` would be ambiguous.
            raise UsageError("%s: %s is both a group and a target" % (path, name))
    return {"targets": table, "groups": groups, "sign_key": _sign_key(data.get("sign_key"), path, "the top level")}


def _sign_key(value, path: Optional[Path], where: str) -> Optional[str]:
    """A sign_key value as a path (relative ones are relative to the targets file's folder)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError("%s: sign_key must be a path string (%s)" % (path, where))
    if path is not None and not Path(value).expanduser().is_absolute():
        return str(path.parent / value)
    return str(Path(value).expanduser())


def load_file(path: Path, required: bool = False) -> tuple:
    """({target name: table}, {group name: [spec, ...]}) from a targets file;
    ({}, {}) when the default file is absent."""
    cfg = load_config(path, required)
    return cfg["targets"], cfg["groups"]


def load_targets(path: Path, required: bool = False) -> dict:
    """{name: table} from a targets file; {} when the default file is absent."""
    return load_file(path, required)[0]


def group_members(name: str, groups: dict, table: dict, path: Path) -> list:
    """A group's members as written: its list, or for a pattern ("gh-*", fnmatch,
    case-sensitive) the file's target names it matches, in the file's order."""
    members = groups[name]
    if isinstance(members, list):
        return [m.strip() for m in members]
    got = [t for t in table if fnmatch.fnmatchcase(t, members.strip())]
    if not got:
        raise UsageError("group %s: the pattern %r matches no target in %s" % (name, members, path),
                         "the targets are %s" % (", ".join(table) or "none"))
    return got


class UnknownGroup(UsageError):
    """`@NAME` where the targets file has no group NAME."""

    def __init__(self, name: str, groups: dict, path: Path):
        close = ([g for g in groups if g.startswith(name)] if name else [])[:1] or \
            difflib.get_close_matches(name, list(groups), n=1, cutoff=0.6)
        self.suggestion = "@" + close[0] if close else None
        super().__init__("no group named %r; groups: %s" % (name, ", ".join("@" + g for g in groups) or "none"),
                         "%sgroups are the [groups] table of %s%s (`mpota targets` lists them)" % (
                             "did you mean %s? " % self.suggestion if close else "", path,
                             "" if path.exists() else " (absent)"))


def expand(spec: str, targets_file: Optional[str] = None, env: Optional[dict] = None) -> list:
    """The single-device specs named by `spec`: a comma list of target names,
    HOST[:PORT], group names and @group; groups are expanded (they may name
    groups), duplicates dropped, order kept."""
    path = targets_path(targets_file, env)
    table, groups = load_file(path, required=bool(targets_file))
    out: list = []

    def add(s: str, inside: tuple) -> None:
        if s.startswith("@"):
            s = s[1:].strip()
            if s not in groups:
                raise UnknownGroup(s, groups, path)
        if s in inside:
            raise UsageError("group %s contains itself (%s)" % (s, " -> ".join(inside + (s,))))
        if s in groups:
            for m in group_members(s, groups, table, path):
                add(m, inside + (s,))
        elif s not in out:
            if s not in table and s not in BUILTINS and not looks_like_host(s):
                raise unknown_target(s, table, groups, path)
            out.append(s)

    for part in spec.split(","):
        if part.strip():
            add(part.strip(), ())
    if not out:
        raise UsageError("no target given in %r" % spec, "name a target: -t NAME|HOST[:PORT]|@GROUP")
    return out


def complete(prefix: str, targets_file: Optional[str] = None, env: Optional[dict] = None) -> list:
    """Shell completion of a -t value (argcomplete, cli.py): the target names
    and @group names that extend the comma list's last item; nothing when the
    targets file cannot be read (completion must never print an error)."""
    head, _, last = prefix.rpartition(",")
    head = head + "," if head else ""
    try:
        table, groups = load_file(targets_path(targets_file, env))
    except UsageError:
        table, groups = {}, {}
    names = list(dict.fromkeys(list(BUILTINS) + list(table))) + ["@" + g for g in groups]
    return [head + n for n in names if n.startswith(last)]


_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$")


def parse_hostport(spec: str, default_port: int = lineproto.TCP_PORT) -> tuple:
    """'host', 'host:port', '[v6]', '[v6]:port' or a bare IPv6 address -> (host, port)."""
    if spec.count(":") > 1 and not spec.startswith("["):
        return spec, default_port  # bare IPv6 address, no port
    m = _HOSTPORT.match(spec)
    if not m:
        raise UsageError("cannot read target %r" % spec, "use NAME, HOST, HOST:PORT or [IPv6]:PORT")
    host = m.group("v6") or m.group("host")
    port = int(m.group("port")) if m.group("port") else default_port
    if not 0 < port < 65536:
        raise UsageError("port %d out of range in %r" % (port, spec))
    return host, port


_warned: set = set()


def warn_if_exposed(path, what: str = "key file") -> None:
    """As ssh does: a private key file that group or others may access gets a
    warning on stderr (once per file and run); it is still used."""
    if os.name == "nt":
        return  # no POSIX modes there
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode & 0o777
    except OSError:
        return  # the reader says what is wrong with it
    if mode & 0o077 and str(p) not in _warned:
        _warned.add(str(p))
        import sys

        print("WARNING: %s %s is readable by others (mode %04o); chmod 600 %s" % (what, p, mode, p),
              file=sys.stderr)


def read_key_file(path: str) -> bytes:
    """A key file holds 64 hex characters (whitespace allowed) or 32 raw bytes."""
    p = Path(path).expanduser()
    if re.fullmatch(r"\s*[0-9A-Fa-f]{64}\s*", path) and not p.exists():
        # Someone passed the key itself: say so without echoing it.
        raise UsageError("the key-file argument looks like a key, not a file",
                         "keys are never taken from the command line: use MPOTA_KEY or a key file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UsageError("cannot read key file %s: %s" % (p, e.strerror or e),
                         "check the path given by --key-file, MPOTA_KEY_FILE or key_file")
    warn_if_exposed(p)
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeError, ValueError):
        key = raw
    if len(key) != 32:
        raise UsageError("key file %s does not hold a 32-byte key" % p,
                         "it must contain 64 hex characters (or 32 raw bytes)")
    return key


def parse_key_hex(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise UsageError("%s is not a 32-byte key in hex" % source, "it must be 64 hex characters")
    return key


def resolve(spec: str, targets_file: Optional[str] = None, key_file: Optional[str] = None,
            port: Optional[int] = None, udp_port: Optional[int] = None,
            env: Optional[dict] = None) -> Target:
    """The Target for `--target spec`, with its key loaded (if any is configured)."""
    env = os.environ if env is None else env
    path = targets_path(targets_file, env)
    cfg = load_config(path, required=bool(targets_file))
    table = cfg["targets"]
    if spec in table:
        entry = dict(BUILTINS.get(spec, {}))
        entry.update(table[spec])
        t = _from_entry(spec, entry, path)
    elif spec in BUILTINS:
        t = _from_entry(spec, dict(BUILTINS[spec]), None)
    elif spec.startswith(USB):
        if not spec[len(USB):]:
            raise UsageError("no serial port in %r" % spec, "name it: usb:/dev/ttyACM0 (Linux), usb:COM3 "
                                                               "(Windows); discover --usb lists them")
        t = Target(name=spec, host=spec, port=0)
    elif looks_like_host(spec):
        host, p = parse_hostport(spec)
        t = Target(name=spec, host=host, port=p)
    else:
        raise unknown_target(spec, table, cfg["groups"], path)
    if t.sign_key is None:
        t.sign_key = cfg["sign_key"]  # the file's default
    if port:
        t.port = port
    if udp_port:
        t.udp_port = udp_port
    # Key: first source that is set wins.
    if key_file:
        t.key, t.key_source = read_key_file(key_file), "--key-file"
    elif env.get("MPOTA_KEY"):
        t.key, t.key_source = parse_key_hex(env["MPOTA_KEY"], "MPOTA_KEY"), "MPOTA_KEY"
    elif env.get("MPOTA_KEY_FILE"):
        t.key, t.key_source = read_key_file(env["MPOTA_KEY_FILE"]), "MPOTA_KEY_FILE"
    elif t.key_file:
        kp = Path(t.key_file).expanduser()
        if kp.exists():
            t.key, t.key_source = read_key_file(str(kp)), "key_file %s" % kp
        elif spec not in BUILTINS or spec in table:
            # A key file the user configured must exist; the sim's default may not.
            raise UsageError("key file %s (target %s) not found" % (kp, spec))
    return t


def _from_entry(name: str, entry: dict, path: Optional[Path]) -> Target:
    where = " in %s" % path if path else ""
    host = entry.get("host")
    if not isinstance(host, str) or not host:
        raise UsageError("target %s has no host%s" % (name, where))
    try:
        port = int(entry.get("port", lineproto.TCP_PORT))
        udp = int(entry.get("udp_port", lineproto.UDP_PORT))
    except (TypeError, ValueError):
        raise UsageError("target %s: port and udp_port must be numbers%s" % (name, where))
    kf = entry.get("key_file")
    if kf is not None and not isinstance(kf, str):
        raise UsageError("target %s: key_file must be a path string%s" % (name, where))
    if "key" in entry:
        raise UsageError("target %s: keys are not stored in the targets file%s" % (name, where),
                         "put the key in a file and give its path as key_file")
    if kf and path is not None and not Path(kf).expanduser().is_absolute():
        kf = str(path.parent / kf)  # relative to the targets file
    dev = entry.get("device_id")
    if dev is not None and (not isinstance(dev, str) or not re.fullmatch(r"[0-9A-Fa-f]{2,64}", dev)):
        raise UsageError("target %s: device_id must be the device's id in hex%s" % (name, where))
    return Target(name=name, host=host, port=port, udp_port=udp, key_file=kf,
                  device_id=dev.lower() if dev else None,
                  sign_key=_sign_key(entry.get("sign_key"), path, "target %s" % name))


_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise TypeError("targets file values are strings or integers, not %r" % (v,))
    return str(v) if isinstance(v, int) else json.dumps(v)  # a JSON string is a TOML basic string


def record(path: Path, name: str, fields: dict) -> None:
    """Write [targets.NAME] with `fields` into the targets file: the table is
    replaced if there, appended otherwise; every other line (comments too) is
    kept. The result is parsed back before it replaces the file."""
    if not _NAME.match(name):
        raise UsageError("%r cannot name a target: use letters, digits, - and _" % name)
    if path.exists() and not path.is_file():  # /dev/null, a fifo: os.replace would put a file there
        raise UsageError("cannot record target %s: the targets file %s is not a regular file" % (name, path),
                         "point --targets (or MPOTA_TARGETS) at a file")
    if name in load_file(path)[1]:
        raise UsageError("%s: %s is a group; a target cannot share its name" % (path, name))
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    table = ["[targets.%s]" % name] + ["%s = %s" % (k, _toml_value(v)) for k, v in fields.items() if v is not None]
    head = re.compile(r"^\s*\[\s*targets\s*\.\s*(\"?)%s\1\s*\]\s*(#.*)?$" % re.escape(name))
    start = next((i for i, ln in enumerate(lines) if head.match(ln)), None)
    if start is None:
        lines += ([""] if lines and lines[-1].strip() else []) + table
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].lstrip().startswith("[")), len(lines))
        while end > start + 1 and not lines[end - 1].strip():
            end -= 1  # keep the blank lines before the next table
        lines[start:end] = table
    text = "\n".join(lines) + "\n"
    if tomllib is not None:
        try:
            got = tomllib.loads(text)["targets"][name]
        except (tomllib.TOMLDecodeError, KeyError) as e:
            raise UsageError("cannot update %s (%s): edit it by hand" % (path, e))
        if any(got.get(k) != v for k, v in fields.items() if v is not None):
            raise UsageError("cannot update %s: [targets.%s] is defined elsewhere in it" % (path, name))
    # It names key files and devices: private to its owner (0600, a new folder 0700).
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()  # left by an interrupted run; O_EXCL below must create it with our mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
