"""Releases: an image put where boards pull it over HTTP, with a signed record of it.

    r = publish(image, folder, key, base_url="http://files.example:8080")
    r.bin, r.record, r.url                      FOLDER/<sha256>.bin, FOLDER/<sha256>.json, its URL
                                                (and FOLDER/<sha256>.sectors: its sectors' digests)
    rec = read_record(path, key=None)           the record's fields; signature checked when `key` is given
    url = release_url(image, base_url=None)     where a rollout over MQTT tells the boards to pull it
    check_url(url, size)                        a HEAD request: the server has it, at its size

The image is stored under its SHA-256, so a name always means one content and a
release is never overwritten by another. The record (FOLDER/<sha256>.json) holds
version, sha256, size and url, and "signed": the same fields as a signed command
body ("op": "release", shared/mpota_command.py), signed by the key that signs
images and commands. Any web server or bucket can serve the folder: `mpota serve`
is one (host/httpserve.py). Integrity never depends on the server: the board
checks the image's SHA-256 and its Ed25519 signature before it boots it.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import mqtt
from .client import sector_digests
from .errors import UsageError

RECORD_FIELDS = ("version", "sha256", "size", "url")


@dataclass
class Release:
    bin: Path
    record: Path
    url: str              # absolute, or the file's name when no base URL was given
    version: str
    sha256: str
    size: int
    signer: str           # the signing key's fingerprint


def _join(base_url: Optional[str], name: str) -> str:
    if not base_url:
        return name
    check_http_url(base_url)
    return base_url.rstrip("/") + "/" + name


def check_http_url(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname or u.username or u.query or u.fragment:
        raise UsageError("%r is not a plain http://HOST[:PORT][/PATH] URL" % url,
                         "boards pull over plain HTTP (the image's signature protects it); no user, query "
                         "or fragment")
    return url


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(image, folder, key, base_url: Optional[str] = None) -> Release:
    """Copy `image` (images.Image) to FOLDER/<sha256>.bin and write its signed record
    FOLDER/<sha256>.json (`key`: the private signing key, mqtt.signing_key)."""
    from . import keys

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = image.sha256 + ".bin"
    url = _join(base_url, name)
    fields = {"version": image.version, "sha256": image.sha256, "size": image.size, "url": url}
    signed = mqtt.sign(key, dict({"seq": mqtt.SEQ.next(), "fleet": "*", "to": "*", "op": "release"}, **fields))
    binp = folder / name
    if not (binp.is_file() and binp.stat().st_size == image.size and
            hashlib.sha256(binp.read_bytes()).hexdigest() == image.sha256):
        _write_atomic(binp, image.data)
    # the 8-byte digest of each 4 KiB sector: a board keeps the sectors its target slot holds
    # already and downloads only the others (device/mpota_pull.py)
    _write_atomic(folder / (image.sha256 + ".sectors"), sector_digests(image.data))
    rec = folder / (image.sha256 + ".json")
    fp = keys.fingerprint(key)
    _write_atomic(rec, (json.dumps(dict(fields, signer=fp, signed=signed.decode()), indent=1) + "\n").encode())
    return Release(bin=binp, record=rec, url=url, version=image.version, sha256=image.sha256, size=image.size,
                   signer=fp)


def read_record(path, key=None) -> dict:
    """A release record's fields; with `key` (a key or key file), its signature must
    verify with it and the signed body must hold the same fields."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeError) as e:
        raise UsageError("cannot read release record %s: %s" % (p, e)) from None
    if not isinstance(d, dict) or not all(k in d for k in RECORD_FIELDS + ("signed",)):
        raise UsageError("%s is not a release record (it needs %s and signed)" % (p, ", ".join(RECORD_FIELDS)))
    if key is not None:
        body = mqtt.verify(key, str(d["signed"]).encode())
        if body.get("op") != "release" or any(body.get(k) != d[k] for k in RECORD_FIELDS):
            raise UsageError("%s: its fields differ from the signed ones" % p)
    return d


def release_url(image, base_url: Optional[str] = None) -> str:
    """Where boards pull `image`: BASE_URL/<sha256>.bin, else the absolute url of the
    record beside it (FOLDER/<sha256>.json, as publish writes it)."""
    if base_url:
        return _join(base_url, image.sha256 + ".bin")
    rec = Path(image.source).expanduser().parent / (image.sha256 + ".json")
    if rec.is_file():
        url = read_record(rec)["url"]
        if urllib.parse.urlsplit(url).scheme == "http":
            return url
    raise UsageError("no URL for the image: the boards pull it over HTTP",
                     "publish it (`mpota publish IMAGE --dir DIR --base-url URL`) and roll out DIR/<sha256>.bin, "
                     "or give --base-url URL where DIR is served")


def check_url(url: str, size: int, timeout: float = 10.0) -> None:
    """A HEAD request: the server must answer 200 with Content-Length `size`."""
    req = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=timeout) as r:
            length = r.headers.get("Content-Length")
    except urllib.error.HTTPError as e:
        raise UsageError("%s: the server answers %d %s" % (url, e.code, e.reason),
                         "publish the image there first (`mpota publish`)") from None
    except (OSError, ValueError) as e:
        raise UsageError("%s cannot be reached: %s" % (url, getattr(e, "reason", None) or e),
                         "is the server (`mpota serve --dir DIR`) running?") from None
    if length is None or int(length) != size:
        raise UsageError("%s holds %s bytes, the image %d" % (url, length, size),
                         "publish this image there (`mpota publish`)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Boards follow no redirect: neither does the check."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, "redirect to %s (boards follow none)" % newurl,
                                     headers, fp)
