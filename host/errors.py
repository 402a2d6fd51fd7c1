"""One exception hierarchy for the host tool, with the CLI exit code each maps to.

Every message says what went wrong and what to do next; `hint` holds the
"what to do" part so the CLI can print it on its own line (or as a JSON field).
Hints here name no command or flag: this is the library; the CLI adds those
(commands.py: `with_cli_hint` and its table HINTS, by exception class and
error code), as it alone knows its own command names.
"""
from __future__ import annotations

import enum
import re

from .codec import mpota_lineproto as lineproto

# Exit codes (documented in docs/cli.md; keep both in step).
EXIT_OK = 0
EXIT_USAGE = 1          # bad arguments, missing/unreadable input file
EXIT_UNREACHABLE = 2    # cannot connect, timed out, connection lost
EXIT_AUTH = 3           # no key, wrong key, device demands auth
EXIT_BUSY = 4           # another update session is open
EXIT_REFUSED = 5        # device refused: bad/corrupt image, no space, version, verify, CRC
EXIT_NOT_TAKEN = 6      # upload done, but the device did not come back running it
EXIT_INTERRUPTED = 130  # Ctrl-C


class MpotaError(Exception):
    """Base of every error the host tool raises on purpose."""

    exit_code = EXIT_USAGE
    default_hint = ""
    # the JSON "error" field: the class name, unless a refinement reports its parent's
    reported_as: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return self.message + (" (%s)" % self.hint if self.hint else "")

    def as_dict(self) -> dict:
        return {"error": self.reported_as or type(self).__name__, "message": self.message,
                "hint": self.hint or None, "exit_code": self.exit_code}


class UsageError(MpotaError):
    """The command line or an input file is wrong; nothing was sent."""

    exit_code = EXIT_USAGE


class ConnectionProblem(MpotaError):
    exit_code = EXIT_UNREACHABLE


class Unreachable(ConnectionProblem):
    default_hint = "check the host name/address and port, and that the device is powered and on this network"


class LocalNameUnresolved(Unreachable):
    """A NAME.local did not resolve (mDNS); `name` is NAME."""

    reported_as = "Unreachable"

    def __init__(self, message: str, hint: str | None = None, *, name: str = "NAME"):
        super().__init__(message, hint)
        self.name = name


class BoardError(ConnectionProblem):
    """mpremote could not reach the board over USB, or a command on it failed (provision.py)."""

    default_hint = "is the board plugged in on that port, and no other program (a REPL, Thonny) holding it?"


class BoardNotReady(BoardError):
    """The provisioned board did not print its ready line in time."""

    reported_as = "BoardError"


class DeviceTimeout(ConnectionProblem):
    default_hint = "the device stopped answering; check Wi-Fi and power, then run the command again (uploads resume)"


class ConnectionLost(ConnectionProblem):
    default_hint = "run the same command again: an upload resumes where the device left off"


class DeviceError(MpotaError):
    """The device answered with an error (protocol.md §3)."""

    exit_code = EXIT_REFUSED
    # push(): `begin` refused with incorrect_state while the version on trial has a
    # crashed app; this is its error (the CLI's hint names the way out)
    trial_crash: str | None = None

    def __init__(self, message: str, hint: str | None = None, *, code: str | None = None,
                 num: int | None = None, retry: bool = False, fatal: bool = False,
                 op: str | None = None):
        super().__init__(message, hint)
        self.code = code
        self.num = num
        self.retry = retry
        self.fatal = fatal
        self.op = op

    def as_dict(self) -> dict:
        d = super().as_dict()
        d.update(code=self.code, num=self.num, retry=self.retry, fatal=self.fatal, op=self.op)
        return d


class AuthError(DeviceError):
    exit_code = EXIT_AUTH
    default_hint = "give the device's key with MPOTA_KEY (hex), MPOTA_KEY_FILE or key_file in the targets file"


class Restarting(DeviceError):
    """A lean-mode device restarts into update mode to take an image (push() reconnects)."""
    default_hint = "the device restarts into update mode; run the push again once it is back"


class BusyError(DeviceError):
    exit_code = EXIT_BUSY
    default_hint = "another host is updating this device; wait for it to finish and try again"


class CrcMismatch(DeviceError):
    default_hint = "data was corrupted in transit; run the command again"


class NoSpace(DeviceError):
    default_hint = "the image is larger than a slot; make the application smaller"


class VersionRefused(DeviceError):
    default_hint = "the image is older than the confirmed one; build it with a higher version"


class BelowFloor(VersionRefused):
    """The image's security counter is below the device's anti-rollback floor
    (`floor`; None when the device's message does not give it): no flag lets it in."""

    reported_as = "VersionRefused"
    floor: int | None = None


class BadImage(DeviceError):
    default_hint = "rebuild the image from its app folder"


class SignatureInvalid(DeviceError):
    default_hint = "sign the image with the key whose public half the device holds"


class VerifyFailed(DeviceError):
    default_hint = "the stored image did not match its SHA-256; push it again"


class VersionClash(MpotaError):
    """The image has the version number of the one running but other content: two
    builds under one number cannot be told apart later (nothing was sent)."""

    exit_code = EXIT_REFUSED
    default_hint = "give the new build its own version number, or replace the running one anyway (force)"


class CrashedTrial(MpotaError):
    """Confirming was refused: the version on trial has an app that crashed, and
    confirming would make it permanent (nothing was sent)."""

    exit_code = EXIT_REFUSED
    default_hint = ("roll back to the confirmed version, or fix the app and push again; confirm it "
                    "anyway only with force")


class NotTaken(MpotaError):
    """The upload succeeded but the device did not come back running the new image."""

    exit_code = EXIT_NOT_TAKEN
    default_hint = "the device keeps, or rolls back to, its confirmed slot; its status says why (boot note)"


class Interrupted(MpotaError):
    exit_code = EXIT_INTERRUPTED
    default_hint = "nothing was committed; run the same push again to resume"


# The device's error names (protocol.md §3), as values: Code.BUSY == "busy". They
# come from the codec's table (shared/mpota_lineproto.py), so a name that is not
# the device's fails at import, not by silently never matching.
class _Name(str, enum.Enum):
    def __str__(self) -> str:  # "busy", as the device says it
        return str.__str__(self)


Code = _Name("Code", [(n.upper(), n) for n in lineproto._NAMES.split()])  # type: ignore[call-overload]

# Device error code -> (class, hint override or None). Unlisted codes: DeviceError.
_BY_CODE = {
    Code.AUTH_REQUIRED: (AuthError, None),
    Code.AUTH_FAILED: (AuthError, "wrong key for this device: check MPOTA_KEY / the key file"),
    Code.BUSY: (BusyError, None),
    Code.RESTARTING: (Restarting, None),
    Code.CRC_MISMATCH: (CrcMismatch, None),
    Code.NO_SPACE: (NoSpace, None),
    Code.VERSION_REFUSED: (VersionRefused, None),
    Code.BAD_IMAGE: (BadImage, None),
    Code.SIGNATURE_INVALID: (SignatureInvalid, None),
    Code.VERIFY_FAILED: (VerifyFailed, None),
    Code.TIMEOUT: (DeviceTimeout, None),
    Code.INCORRECT_STATE: (DeviceError, "the device is not in a state for this; its status shows why"),
    Code.OUT_OF_RANGE: (DeviceError, "offset/length outside the slot"),
    Code.FLASH_FAULT: (DeviceError, "the device's flash is failing; reflash it over USB"),
    Code.NO_MEMORY: (DeviceError, "the device ran out of heap (its app holds most of it); "
                                  "try again, or reset it and retry before the app grows"),
    Code.INTERNAL: (DeviceError, "unexpected device error; a reset may help"),
    Code.UNSUPPORTED: (DeviceError, "the device's agent is too old for this operation; update the agent"),
}

# The device names its anti-rollback floor only in the message of its refusal
# (device/mpota_slots.py check_counter): read here, once, into BelowFloor.floor.
_FLOOR = re.compile(r"security counter \d+ is below this device's floor (\d+)")


def device_error(code: str | None, message: str, *, num: int | None = None, retry: bool = False,
                 fatal: bool = False, op: str | None = None) -> MpotaError:
    """The exception for a device error reply (JSON error object or NERROR)."""
    cls, hint = _BY_CODE.get(code or "", (DeviceError, None))
    text = "%s%s: %s" % ("%s refused, " % op if op else "", code or "error", message)
    if cls is DeviceTimeout:
        return DeviceTimeout(text)
    floor = _FLOOR.search(message) if cls is VersionRefused else None
    if floor:
        err = BelowFloor(text, hint, code=code, num=num, retry=retry, fatal=fatal, op=op)
        err.floor = int(floor.group(1))
        return err
    return cls(text, hint, code=code, num=num, retry=retry, fatal=fatal, op=op)
