# service: the agent's state and the routing of every message, apart from
# any socket. Device holds config, slots, the one update session, app and
# boot facts. The hot path (DATA frames) is here; JSON ops live in ops.py
# and update.py, reference frames in legacy.py -- imported on first use and
# kept small so that each compiles within a board's heap.
#
# Handlers are synchronous: they queue replies on the connection
# (c.out/ack/nerror) and agent.py flushes them. A "connection" is anything
# with .authed, .nonce, .out(buf), .nerror(...), .ack_due/.ack_val
# (agent.Conn for TCP, agent.UdpPeer for datagrams).
import sys
import gc

import hal
import proto
from proto import (ProtoError, error_line, E_UNSUPPORTED, E_BAD_FRAME, E_AUTH_REQUIRED,
                    E_OUT_OF_ORDER, E_CRC_MISMATCH, E_OUT_OF_RANGE, E_INCORRECT_STATE,
                    E_INTERNAL, E_NO_MEMORY, OP_DATA, OP_READ)
from framing import K_FRAME, K_LINE, HEADER_SIZE, frame_into
from checksums import crc32c

VERSION = "0.1.0"
NATIVE = "native"
LEGACY = "legacy"

DEVICE = None  # the running Device (main.py sets it; mpota.py reads it)


class Session:
    def __init__(self, kind, owner, slot, size, sha, writer, allow_down):
        self.kind = kind
        self.owner = owner
        self.slot = slot
        self.size = size
        self.sha = sha
        self.w = writer
        self.allow_down = allow_down
        self.crc = 0  # legacy: CRC-32 of what was appended
        self.t = hal.ticks_ms()


class Device:
    def __init__(self, cfg, sl, note="", key=None):
        self.cfg = cfg
        self.sl = sl
        self.id = hal.unique_id()
        self.auth_on = bool(cfg.get("auth", True))
        self.key = key  # 32 bytes (/mpota_key.bin), None: no key installed
        self.session = None
        self.app = {"state": "none", "name": None, "error": None}
        self.t0 = hal.ticks_ms()
        self.mem_peak = 0
        self.reset_ms = -1  # >= 0: reset after the reply is flushed and this delay
        self.nconn = 0
        self.note = note  # extra boot facts (config errors) for status
        self.boot_reason = hal.reset_cause()
        # One scratch buffer for every outgoing READ_DATA / legacy reply:
        # handlers are synchronous and write() copies what the socket did not
        # take, so it is free again when a handler returns. Made by scratch()
        # on the first read or reference frame, then kept: a device that only
        # takes native updates never spends the 4 KB.
        self.buf = None
        self.mv = None

    def sample_mem(self):
        # mem_peak: the highest LIVE heap seen at message boundaries. MicroPython
        # collects only when the heap is full, so a raw mem_alloc() high-water
        # would just be the heap size (garbage included): collect first. A few
        # ms per batch against ~50 ms of flash time per sector; housekeeping
        # samples only while an update runs, so an idle device is left alone.
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

    def uptime(self):
        return hal.ticks_diff(hal.ticks_ms(), self.t0)

    def feed(self):
        hal.wdt_feed()

    def open_session(self, kind, owner, slot, size, sha, offset, allow_down=False):
        import slotio
        w = slotio.Writer(self.sl.path(slot), offset)
        self.session = Session(kind, owner, slot, size, sha, w, allow_down)
        hal.wlan_power_save(False)  # power saving: ~200 ms RTT (DESIGN.md)
        return self.session

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

    def reset_now(self):
        self.close_session()
        hal.reset()

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
                    import ops
                    ops.line(self, c, ev[1])
                else:
                    self.bad(c, ev[1][0], ev[1][1])
            except MemoryError:
                gc.collect()
                self.no_memory(c, ev)
            except Exception as e:  # a bug must not end the connection
                sys.print_exception(e)
                c.out(error_line(None, E_INTERNAL, "internal error: %r" % e))
        if c.ack_due:
            c.ack_due = False
            c.ack(c.ack_val)

    def no_memory(self, c, ev):
        # Out of heap (compiling a rare path while the app holds the heap):
        # answer in the asker's own framing, built without the codec modules
        # that may be what failed to compile.
        if ev[0] != K_FRAME:
            return c.out(error_line(None, E_NO_MEMORY, "out of memory: retry, or reset first"))
        op = ev[1][1]
        if 0x20 <= op <= 0x2F:
            return c.nerror(op, E_NO_MEMORY)
        b = bytearray(HEADER_SIZE + 2)  # reference ErrorResponse(no_memory)
        b[HEADER_SIZE] = E_NO_MEMORY
        frame_into(b, 0xFF, 1)
        c.out(b)

    def bad(self, c, code, msg):
        s = self.session
        if msg.startswith("line") or msg.startswith("skipped"):
            c.out(error_line(None, code, msg))
        elif s is not None and s.owner is c and s.kind == NATIVE:
            # probably a mangled DATA frame: tell the host where to resume
            c.nerror(0, code, s.w.pos, 0)
        else:
            import legacy
            legacy.error(self, c, code)

    def frame(self, c, f):
        op = f[1]
        if op == OP_DATA:
            self.data(c, f)
        elif op == OP_READ:
            import slotops  # reads are rare: compiled on the first one
            slotops.read_frame(self, c, f)
        elif 0x20 <= op <= 0x2F:
            c.nerror(op, E_UNSUPPORTED)
        else:
            import legacy  # 0x01-0x0C, 0xFF and unknown opcodes
            legacy.handle(self, c, f)

    # -- native frames (the hot path: no allocation beyond a view or two) ---------
    def data(self, c, f):
        if not c.authed:
            return c.nerror(OP_DATA, E_AUTH_REQUIRED)
        s = self.session
        if s is None or s.owner is not c or s.kind != NATIVE:
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
