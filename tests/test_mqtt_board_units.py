"""The board's MQTT parts that need no broker, under each MicroPython build: the HTTP
answer check of the pull (mpota_pull.check_head), the config keys (mpota_config),
a board with no trusted key (mpota_mqttcmd._verify) and the command record's
atomic store and fail-closed load (mpota_mqttcmd.store/load)."""
import pytest
from conftest import INTERPRETERS, interp_label, run_device_script

CHECK_HEAD = r'''
import boardstub
import mpota_pull as pull
S = 1000
cases = [
    ("HTTP/1.1 200 OK\r\nContent-Length: 1000", 0, None),
    ("HTTP/1.1 200 OK", 0, None),
    ("HTTP/1.0 206 Partial Content\r\ncontent-range: bytes 0-999/1000", 0, None),
    ("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 400-999/1000\r\nContent-Length: 600", 400, None),
    ("HTTP/1.1 200 OK\r\nContent-Length: 1000", 400, "ignored the Range"),
    ("HTTP/1.1 200 OK\r\nContent-Length: 999", 0, "the command says 1000"),
    ("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-999/1000", 400, "expected"),
    ("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 400-999/2000", 400, "expected"),
    ("HTTP/1.1 206 Partial Content", 400, "expected"),
    ("HTTP/1.1 302 Found\r\nLocation: http://elsewhere/", 0, "redirects are not followed"),
    ("HTTP/1.1 404 Not Found", 0, "answered 404"),
    ("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */1000", 400, "answered 416"),
    ("HTTP/1.1 503 Busy", 0, "retry"),
    ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", 0, "chunked"),
    ("SSH-2.0-OpenSSH", 0, "not an HTTP"),
    ("HTTP/1.1 2x0 OK", 0, "bad number"),
]
bad = 0
for head, off, want in cases:
    try:
        pull.check_head(head, off, S)
        got = None
    except pull.PullError as e:
        got = "retry" if e.retry else e.message
    if (want is None) != (got is None) or (want and want not in got):
        bad += 1
        print("FAIL", repr(head), off, "->", got, "want", want)
print("check_head", len(cases) - bad, "ok", bad, "bad")
'''

CONFIG = r'''
import boardstub
import mpota_config as config
cfg, errors = config.load("/nonexistent.json", {"mqtt": "127.0.0.1:1883", "fleet": "site-7", "listen": False,
                                                "mqtt_keepalive": 30})
print(cfg["mqtt"], cfg["fleet"], cfg["listen"], cfg["mqtt_keepalive"], errors)
cfg, errors = config.load("/nonexistent.json", {"mqtt": "broker", "fleet": "a/b", "mqtt_keepalive": 1,
                                                "listen": "no"})
print(cfg["mqtt"] == "", cfg["fleet"], cfg["listen"], cfg["mqtt_keepalive"], len(errors))
for e in errors:
    print("E", e)
cfg, errors = config.load("/nonexistent.json", {"listen": False})
print("alone", cfg["listen"], errors)
'''

RECORD = r'''
import boardstub
import uos as os
import mpota_mqttcmd as mqttcmd
from mpota_command import CommandError
P = %r
print(mqttcmd.load(P))
mqttcmd.store({"seq": 7, "op": "reset"}, P)
print(mqttcmd.load(P))
with open(P, "w") as f:
    f.write('{"seq": 7, "op"')  # torn
print(mqttcmd.load(P))
os.remove(P)
try:
    mqttcmd._verify(b"{}", bytes(64))  # no /mpota_trust.json here: no key
except CommandError as e:
    print("verify", e.reason)
'''


NESTED = r'''
import boardstub
import _thread
import time
import ujson as json
import mpota_command as command
_thread.stack_size(8192)  # a board's C stack is a few KB, not the unix port's
out = []
def run():
    for k in ("fleet", "to", "op"):
        d = {"seq": 5, "fleet": "site", "to": "abcd", "op": "confirm"}
        d[k] = json.loads("[" * 200 + "]" * 200)  # what an unsigned body of 420 bytes may hold
        try:
            command.check(d, "abcd", "site", 0)
            out.append(k + " acted")
        except command.CommandError as e:
            out.append(k + " " + e.reason)
        except Exception as e:
            out.append(k + " " + type(e).__name__)
_thread.start_new_thread(run, ())
for _ in range(250):
    if len(out) == 3:
        break
    time.sleep_ms(20)
print(out)
'''


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_a_deeply_nested_field_of_an_unsigned_command_is_refused_not_raised(mp):
    # check() put repr() of the field in its message: a list nested a few hundred deep (an
    # unsigned payload anyone on the broker may publish, retained) overflowed the C stack
    # (RuntimeError), which ended the MQTT session at every connect
    r = run_device_script(mp, None, NESTED)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "['fleet wrong_fleet', 'to wrong_target', 'op unknown_op']", r.stdout


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_the_pull_accepts_only_the_answer_to_its_range(mp):
    r = run_device_script(mp, None, CHECK_HEAD)
    assert r.returncode == 0 and "check_head 16 ok 0 bad" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_mqtt_config_keys_are_checked(mp):
    r = run_device_script(mp, None, CONFIG)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "127.0.0.1:1883 site-7 False 30 []"
    assert lines[1] == "True default True 60 4", r.stdout
    assert any("'mqtt' must be \"HOST:PORT\"" in ln for ln in lines)
    assert any("'fleet' must be 1 to 32" in ln for ln in lines)
    # a board that listens on nothing and calls no broker could never be reached: it listens
    assert lines[-1].startswith("alone True [\"'listen': false needs 'mqtt'"), lines[-1]


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_the_command_record_is_stored_whole_and_a_torn_one_refuses_every_command(mp, tmp_path):
    r = run_device_script(mp, None, RECORD % str(tmp_path / "cmd.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["{'seq': 0}", "{'seq': 7, 'op': 'reset'}", "{'seq': None}",
                                     "verify no_trusted_key"], r.stdout
