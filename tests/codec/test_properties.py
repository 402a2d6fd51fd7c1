"""Hypothesis properties of the codec on CPython: round trips and decoder robustness."""
from mpota.codec import bootloader_messages as bm
from mpota.codec import mpota_framing as framing
from mpota.codec import mpota_hostframes as hostframes
from mpota.codec import mpota_lineproto as lineproto
from run_vectors import crc32c_ref
from mpota.codec.mpota_checksums import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

u32 = st.integers(0, 0xFFFFFFFF)
chunk = st.binary(min_size=1, max_size=lineproto.MAX_DATA)


@given(st.binary(max_size=2000), st.integers(0, 2000))
def test_crc32c_incremental_and_matches_reference(data, cut):
    cut = min(cut, len(data))
    assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c(data)
    if len(data) <= 300:
        assert crc32c(data) == crc32c_ref(data)


@given(u32, chunk)
def test_data_frame_round_trip(offset, data):
    f = hostframes.encode_data(offset, data)
    assert framing.check_frame(f) is None
    off, crc, body = hostframes.parse_data(f)
    assert (off, crc, bytes(body)) == (offset, crc32c(data), data)


@given(st.integers(0, 1), u32, st.integers(0, 0xFFFF))
def test_read_round_trip(slot, offset, length):
    assert tuple(hostframes.parse_read(hostframes.encode_read(slot, offset, length))) == (slot, offset, length)


@given(st.integers(0, 0xFF), st.integers(0, 0x13), u32, u32)
def test_nerror_round_trip(op, code, value, ref):
    got = hostframes.parse_nerror(hostframes.encode_nerror(op, code, value, ref))
    assert tuple(got) == (op, code, lineproto.error_flags(code), value, ref)


@given(st.binary(min_size=1, max_size=bm.MAX_WRITE_PAYLOAD_SIZE))
def test_write_request_round_trip(data):
    t = bm.WriteRequest.extract(bm.WriteRequest.make(data))
    assert t.payload == data and bm.WriteRequest.crc_ok(t)


@given(u32)
def test_stop_response_signed_round_trip(crc):
    t = bm.UpdateStopResponse.extract(bm.UpdateStopResponse.make(crc))
    assert t.crc & 0xFFFFFFFF == crc and -(2**31) <= t.crc < 2**31


@given(st.binary(max_size=2048))
def test_read_address_response_round_trip(data):
    assert bm.ReadAddressResponse.extract(bm.ReadAddressResponse.make(0, len(data), data)).data == data


messages = st.one_of(
    chunk.map(lambda d: ("frame", bytes(hostframes.encode_data(7, d[:512])))),
    st.integers(0, 2**20).map(lambda i: ("line", b'{"op":"ping","id":%d}' % i)),
    st.binary(min_size=1, max_size=64).map(lambda d: ("frame", bytes(bm.WriteRequest.make(d)))),
)


@settings(max_examples=300)
@given(st.lists(messages, max_size=8), st.lists(st.integers(1, 600), min_size=1, max_size=20))
def test_decoder_yields_every_message_whatever_the_split(msgs, cuts):
    stream = b"".join(m + (b"\n" if k == "line" else b"") for k, m in msgs)
    d = hostframes.Decoder()
    got = []
    i = 0
    j = 0
    while i < len(stream):
        n = cuts[j % len(cuts)]
        j += 1
        for kind, v in d.decode(stream[i:i + n]):
            assert kind != framing.K_ERROR, v
            got.append(("frame" if kind == framing.K_FRAME else "line", bytes(v)))
        i += n
    assert got == list(msgs)
    assert d.pending() == 0


@settings(max_examples=300)
@given(st.binary(max_size=6000), st.lists(messages, min_size=1, max_size=3))
def test_decoder_survives_garbage_and_recovers(garbage, msgs):
    d = hostframes.Decoder()
    for kind, v in d.decode(garbage):
        assert kind in (framing.K_FRAME, framing.K_LINE, framing.K_ERROR)
        if kind == framing.K_ERROR:
            assert v[0] in (lineproto.E_BAD_FRAME, lineproto.E_TOO_LARGE) and v[1]
    assert len(d.buf) == max(d.max_frame, d.max_line + 2)
    # Recovery without a reset: after enough filler that any lying header or
    # half line in the garbage has run out, every valid message comes through.
    filler = b"\n" * (d.max_frame + d.max_line + 2)
    list(d.decode(filler))
    stream = b"".join(m + (b"\n" if k == "line" else b"") for k, m in msgs)
    got = [(k, bytes(v)) for k, v in d.decode(stream) if k != framing.K_ERROR]
    assert [m for _, m in got] == [m for _, m in msgs]


@given(st.text(max_size=20), st.integers(0, 10**9))
def test_json_reply_and_error_lines_parse(msg, rid):
    import json
    r = json.loads(lineproto.reply_line(rid, {"x": msg}))
    assert r == {"id": rid, "ok": True, "x": msg}
    e = json.loads(lineproto.error_line(rid, lineproto.E_BUSY, msg))
    assert e["ok"] is False and e["error"]["code"] == "busy" and e["error"]["message"] == msg
