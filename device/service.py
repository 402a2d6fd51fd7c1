# service: the agent's state and the routing of every message, apart from
# any socket. Device holds config, slots, the one update session, app and
# boot facts. The hot path (DATA frames) is here; the other handlers are
# modules this one imports on use: ops.py (everyday JSON ops), update.py and
# upload.py (while an update session is open), rareops.py (read, erase,
# rollback) and legacy.py (reference frames). Those imports are lazy only to
# save RAM: the handlers import nothing above them (they get the Device), so
# any of them can be imported alone. What a request loaded and no longer
# needs is released after it (see release()), so an idle device holds only
# this module, agent.py and the leaves they import.
#
# Handlers are synchronous: they queue replies on the connection
# (c.out/ack/nerror) and agent.py flushes them. A "connection" is anything
# with .authed, .nonce, .out(buf), .nerror(...), .ack_due/.ack_val
# (agent.Conn for TCP, legacy.UdpPeer for datagrams).
import sys
import gc

import hal
import proto
from proto import (ProtoError, error_line, reply_line, E_UNSUPPORTED, E_AUTH_REQUIRED,
                   E_INCORRECT_STATE, E_CRC_MISMATCH, E_OUT_OF_RANGE, E_OUT_OF_ORDER,
                   E_BAD_FRAME, E_INTERNAL, E_NO_MEMORY, OP_DATA, OP_READ)
from framing import K_FRAME, K_LINE, HEADER_SIZE, frame_into
from checksums import crc32c

DEVICE = None  # the running Device (bootmgr sets it; mpota.py reads it)

_OPEN = ("hello", "auth", "ping", "status")  # served before authentication
# op -> the module that serves it (ops.py serves every other known op)
_ROUTE = {"begin": "update", "commit": "update", "abort": "update",
          "rollback": "rareops", "read": "rareops", "erase": "rareops"}
_OPS = ("hello", "auth", "ping", "status", "confirm", "reset")
# Loaded for one request or one session, released when no longer needed.
_TRANSIENT = ("update", "upload", "mcuboot", "rareops", "trust", "ed25519")


def ref_error(c, code):
    """A reference ErrorResponse in 7 bytes of its own: no legacy.py needed."""
    b = bytearray(HEADER_SIZE + 2)
    b[HEADER_SIZE] = code
    frame_into(b, 0xFF, 1)
    c.out(b)


class Device:
    VERSION = "0.2.0"

    def __init__(self, cfg, sl, note="", key=None, mem_base=0):
        self.cfg = cfg
        self.sl = sl
        self.id = hal.unique_id()
        self.auth_on = bool(cfg.get("auth", True))
        self.key = key  # 32 bytes (/mpota_key.bin), None: no key installed
        self.mode = cfg.get("mode", "live")
        self.session = None
        self.app = {"state": "none", "name": None, "error": None}
        self.t0 = hal.ticks_ms()
        self.mem_base = mem_base  # heap in use before the agent (firmware, VFS)
        self.mem_peak = 0
        self.reset_ms = -1  # >= 0: reset after the reply is flushed and this delay
        self.nconn = 0
        self.note = note  # extra boot facts (config errors) for status
        self.boot_reason = hal.reset_cause()
        # One scratch buffer for every outgoing READ_DATA / legacy reply:
        # handlers are synchronous and write() copies what the socket did not
        # take, so it is free again when a handler returns. Made by scratch()
        # on the first read or reference frame, released with the modules
        # that used it: a device that only takes native updates never pays.
        self.buf = None
        self.mv = None
        self.legacy_udp = False  # legacy.py stays loaded while it serves UDP

    def sample_mem(self):
        # mem_peak: the highest LIVE heap seen. MicroPython collects only when
        # the heap is full, so a raw mem_alloc() high-water would just be the
        # heap size: collect first. Called from housekeeping while a session
        # runs and at the end of a commit (hash + image check), not per read.
        gc.collect()
        a = gc.mem_alloc()
        if a > self.mem_peak:
            self.mem_peak = a

    def scratch(self):
        if self.buf is None:
            gc.collect()  # 4 KB in one piece: make the room first
            self.buf = bytearray(proto.MAX_FRAME)
            self.mv = memoryview(self.buf)
        return self.mv

    def version_frame(self):
        """The reference VersionResponse: API 1.0, the agent version, a
        128-byte note. Open to all (discovery), so it is built in 139 bytes
        of its own: answering it loads nothing and holds no scratch buffer."""
        b = bytearray(139)
        b[5] = 1
        v = proto.parse_version(self.VERSION)
        b[7] = v[0]
        b[8] = v[1]
        b[9] = v[2] & 0xFF
        note = "mpota agent %s (reference protocol over UDP/TCP)" % self.VERSION
        b[10:10 + len(note)] = note.encode()
        frame_into(b, 0x02, 133)
        return b

    def release(self, *names):
        """Forget modules loaded for a request: their code is collected once
        nothing refers to it (a reimport loads them again)."""
        for n in names:
            sys.modules.pop(n, None)

    def idle(self):
        # after each request: release what only a session or a request needed
        if self.session is None:
            self.release(*_TRANSIENT)
            if not self.legacy_udp:
                self.release("legacy")
                self.buf = self.mv = None

    def max_image(self):
        import upload
        try:
            return upload.space(self.sl, self.sl.inactive())
        finally:
            if self.session is None:
                self.release("upload")

    def uptime(self):
        return hal.ticks_diff(hal.ticks_ms(), self.t0)

    def authenticated(self, c):
        c.authed = True
        c.dec.grow(proto.MAX_FRAME, proto.MAX_LINE)  # full-size frames only after auth

    def open_session(self, s):
        self.session = s
        hal.wlan_power_save(False)  # power saving: ~200 ms RTT (docs/board.md)

    def close_session(self):
        s = self.session
        if s is not None:
            self.session = None
            s.w.close()
            hal.wlan_power_save(True)

    def drop(self, owner):
        # the owner went away: close its session, keep the bytes for resume
        s = self.session
        if s is not None and s.owner is owner:
            self.close_session()
        self.idle()

    def reset_now(self):
        self.close_session()
        hal.reset()

    async def after_reply(self):
        # a reset asked for by the request just answered, once it is flushed
        if self.reset_ms >= 0:
            import asyncio
            await asyncio.sleep_ms(self.reset_ms)
            self.reset_now()

    # -- dispatch ----------------------------------------------------------------
    def dispatch(self, c):
        """Handle every complete message in c.dec; replies are queued on c."""
        dec = c.dec
        while True:
            ev = dec.next()
            if ev is None:
                break
            k = ev[0]
            try:
                if k == K_FRAME:
                    self.frame(c, ev[1])
                elif k == K_LINE:
                    self.line(c, ev[1])
                else:
                    self.bad(c, ev[1][0], ev[1][1])
            except MemoryError:
                self.idle()
                gc.collect()
                self.no_memory(c, ev)
            except Exception as e:  # a bug must not end the connection
                sys.print_exception(e)
                c.out(error_line(None, E_INTERNAL, "internal error: %r" % e))
        if c.ack_due:
            c.ack_due = False
            c.ack(c.ack_val)

    def no_memory(self, c, ev):
        # Out of heap (loading a handler while the app holds the heap): answer
        # in the asker's own framing, built without the modules that may be
        # what failed to load.
        if ev[0] != K_FRAME:
            return c.out(error_line(None, E_NO_MEMORY, "out of memory (%d bytes free): retry, or reset first"
                                    % gc.mem_free()))
        op = ev[1][1]
        if 0x20 <= op <= 0x2F:
            return c.nerror(op, E_NO_MEMORY)
        ref_error(c, E_NO_MEMORY)

    def line(self, c, ln):
        rid = None
        try:
            req = proto.parse_request(ln)
            rid = req.get("id")
            op = req["op"]
            mod = _ROUTE.get(op)
            if mod is None and op not in _OPS:
                raise ProtoError(E_UNSUPPORTED, "unknown op \"%s\"" % op)
            # Authenticate before loading anything on a peer's behalf.
            if not c.authed and op not in _OPEN:
                raise ProtoError(E_AUTH_REQUIRED, "authenticate first (hello, auth)")
            m = __import__(mod or "ops")
            c.out(reply_line(rid, getattr(m, "op_" + op)(self, c, req)))
        except ProtoError as e:
            c.out(error_line(rid, e.code, e.message))
        except MemoryError:
            self.idle()
            gc.collect()
            c.out(error_line(rid, E_NO_MEMORY, "out of memory (%d bytes free): retry, or reset first"
                             % gc.mem_free()))
        self.idle()

    def bad(self, c, code, msg):
        s = self.session
        if msg.startswith("line") or msg.startswith("skipped"):
            c.out(error_line(None, code, msg))
        elif s is not None and s.owner is c and s.kind == "native":
            # probably a mangled DATA frame: tell the host where to resume
            c.nerror(0, code, s.w.pos, 0)
        elif not c.authed:
            ref_error(c, code)  # strangers do not get legacy.py loaded for them
        else:
            import legacy
            legacy.error(self, c, code)
            self.idle()

    def frame(self, c, f):
        op = f[1]
        if op == OP_DATA:
            self.data(c, f)
        elif op == OP_READ:
            import rareops
            rareops.read_frame(self, c, f)
            self.idle()
        elif 0x20 <= op <= 0x2F:
            c.nerror(op, E_UNSUPPORTED)
        elif op == 0x01:  # VersionRequest: open to all
            if len(f) == 6:
                c.out(self.version_frame())
            else:
                ref_error(c, E_BAD_FRAME)
        elif op not in proto.REF_REQUESTS:
            ref_error(c, E_UNSUPPORTED)  # reference responses and unknown opcodes
        elif not (c.authed or self.legacy_udp):
            ref_error(c, E_AUTH_REQUIRED)  # strangers do not get legacy.py loaded for them
        else:
            import legacy  # 0x01-0x0C, 0xFF and unknown opcodes
            legacy.handle(self, c, f)
            self.idle()

    # -- native frames (the hot path: no allocation beyond a view or two) ---------
    def data(self, c, f):
        if not c.authed:
            return c.nerror(OP_DATA, E_AUTH_REQUIRED)
        s = self.session
        if s is None or s.owner is not c or s.kind != "native":
            return c.nerror(OP_DATA, E_INCORRECT_STATE)
        n = len(f)
        w = s.w
        acked = w.pos
        if n < HEADER_SIZE + 10:
            return c.nerror(OP_DATA, E_BAD_FRAME, acked)
        off = (f[5] << 24) | (f[6] << 16) | (f[7] << 8) | f[8]
        ln = n - 14
        if crc32c(f[13:n - 1]) != ((f[9] << 24) | (f[10] << 16) | (f[11] << 8) | f[12]):
            return c.nerror(OP_DATA, E_CRC_MISMATCH, acked, off)
        if off + ln > s.size:
            return c.nerror(OP_DATA, E_OUT_OF_RANGE, acked, off)
        if off > acked:
            return c.nerror(OP_DATA, E_OUT_OF_ORDER, acked, off)
        if off + ln > acked:
            try:
                w.write(f[13 + acked - off:n - 1])
            except ProtoError as e:
                return c.nerror(OP_DATA, e.code, w.pos, off)
        s.t = hal.ticks_ms()
        c.ack_due = True
        c.ack_val = w.pos
