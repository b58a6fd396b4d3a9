"""serve.py against hostile clients, on a real server process on 127.0.0.1: an oversize body answered 413 to
urllib, requests and curl alike; a header cap (431); a trickled request cut at the read timeout (408, one log
line); a silent connection closed; a connection cap (503); a client that goes away mid-upload logged as one
line; and a seeded fuzz run (malformed HTTP, multipart and image bodies, bounded in count and time) after
which the server has answered no 5xx, logged no traceback, stayed within a memory bound, and answered every
error in the service's JSON format."""
from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.test_robustness import bomb_png
from agegender.data.demo import wheel_image

T1 = wheel_image("t1.jpg")
MAX_BYTES = 2_000_000
READ_TIMEOUT = 2.0
MAX_CONNECTIONS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """serve.py with small limits, its output in a log file."""

    def __init__(self, tmp):
        self.port = _free_port()
        self.log_path = os.path.join(tmp, "server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "serve.py"), "--port", str(self.port), "--max-bytes", str(MAX_BYTES),
             "--read-timeout", str(READ_TIMEOUT), "--idle-timeout", "2", "--max-connections", str(MAX_CONNECTIONS),
             "--max-header-bytes", "16384", "--max-pixels", "20000000"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(self.url("/health"), timeout=2).status == 200:
                    return
            except OSError:
                assert self.proc.poll() is None, self.text()
                time.sleep(0.2)
        raise AssertionError("serve.py did not start: " + self.text())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def text(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server in MB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        finally:
            self.proc.kill()
            self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(str(tmp_path_factory.mktemp("serve")))
    yield s
    s.close()


def _raw(port: int, data: bytes, timeout: float = 10.0, close_after: bool = False) -> tuple[int, dict, bytes]:
    """Send `data` on a fresh connection; (status, headers, body) of the answer, status 0 when the
    server closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if close_after:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                head, sep, body = got.partition(b"\r\n\r\n")
                if sep and not head.startswith(b"HTTP/1.1 100"):
                    length = [ln for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
                    if length and len(body) >= int(length[0].split(b":")[1]):
                        break
        except OSError:
            pass
    while got.startswith(b"HTTP/1.1 100"):  # the interim answer to Expect: 100-continue
        got = got.partition(b"\r\n\r\n")[2]
    if not got.startswith(b"HTTP/1."):
        return 0, {}, got
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def _is_our_error(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"].get("code"), str) and \
        isinstance(doc["error"].get("message"), str)


def test_oversize_body_is_answered_413_to_every_client(server):
    import requests

    big = b"\xff" * 25_000_000  # no Expect: 100-continue from urllib or requests: the body comes whole
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(server.url("/v1/analyze"), data=big, method="POST"), timeout=30)
    assert err.value.code == 413 and json.loads(err.value.read())["error"]["code"] == "body_too_large"
    r = requests.post(server.url("/v1/analyze"), data=big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large" and r.headers["x-request-id"]
    chunked = requests.post(server.url("/v1/analyze"), data=iter([big[:1_000_000]] * 25), timeout=30)
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--data-binary", "@-", server.url("/v1/analyze")],
                             input=big, capture_output=True, timeout=60).stdout.decode()
        body, _, code = out.rpartition("\n")
        assert code == "413" and json.loads(body)["error"]["code"] == "body_too_large"
    # the connection stays usable after a drained 413: a second request on it is answered
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/analyze", body=b"\xff" * 3_000_000)
    assert conn.getresponse().read() and True
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200


def test_header_cap_is_431(server):
    status, headers, body = _raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 +
                                 b"\r\n\r\n")
    assert status == 431 and _is_our_error(body) and json.loads(body)["error"]["code"] == "headers_too_large"
    assert headers["x-request-id"]
    status, _, _ = _raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Ok: " + b"a" * 8000 + b"\r\n\r\n")
    assert status == 200


def test_trickled_request_gets_408_and_one_log_line(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT + 10) as s:
        s.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        t = time.time()
        got = b""
        try:
            while True:
                s.sendall(b"x")  # a byte every half second: never finishes
                time.sleep(0.5)
                s.settimeout(0.01)
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
    assert got.startswith(b"HTTP/1.1 408") and time.time() - t < READ_TIMEOUT + 3, got
    assert b"x-request-id: " in got
    assert _is_our_error(got.partition(b"\r\n\r\n")[2])
    time.sleep(0.3)
    log = server.text()
    assert sum("408" in ln and "did not arrive" in ln for ln in log.splitlines()) >= 1
    assert "Traceback" not in log


def test_silent_connection_is_closed_and_headers_must_arrive_in_time(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        t = time.time()
        assert s.recv(100) == b"" and time.time() - t < 5  # nothing sent: closed after the idle timeout
    status, _, body = _raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never end
    assert status == 408 and _is_our_error(body)


def test_connection_cap_is_503(server):
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        status, headers, body = _raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and headers["retry-after"] == "1" and _is_our_error(body) and headers["x-request-id"]
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert urllib.request.urlopen(server.url("/health"), timeout=5).status == 200


def test_client_leaving_mid_upload_is_one_log_line(server):
    before = server.text().count("went away")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"\xff" * 100_000)
            time.sleep(0.05)
    time.sleep(0.5)
    log = server.text()
    assert log.count("went away") - before == 5 and "Traceback" not in log, log[-3000:]


# --- the fuzz run -----------------------------------------------------------------------------------------
def _images(rng: random.Random) -> list[bytes]:
    t1 = open(T1, "rb").read()
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 255, (64, 80, 3), np.uint8)
    return [t1, cv2.imencode(".png", noise)[1].tobytes(), cv2.imencode(".jpg", noise)[1].tobytes(),
            cv2.imencode(".bmp", noise)[1].tobytes(), bomb_png(), b"GIF89a" + bytes(20), b"\x89PNG\r\n\x1a\n"]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        kind = rng.random()
        if kind < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind < 0.7 and data:
            cut = rng.randrange(len(data))
            data = data[:cut] if rng.random() < 0.5 else data[cut:]
        else:
            data[rng.randrange(len(data) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    return bytes(data)


def _multipart(rng: random.Random, image: bytes) -> tuple[str, bytes]:
    boundary = "".join(rng.choice("abcXYZ0189-_'") for _ in range(rng.randint(1, 70)))
    parts = []
    for _ in range(rng.choice([0, 1, 1, 2, 3, 40])):
        name = rng.choice(["image", "image", "photo", "", "im\"age", "image\r\nX: y"])
        filename = rng.choice(["", '; filename="a.jpg"', '; filename="\xe9t\xe9.jpg"', "; filename=", '; filename*=x'])
        head = f'Content-Disposition: form-data; name="{name}"{filename}'.encode("latin-1", "replace")
        if rng.random() < 0.2:
            head = rng.choice([b"", b"Content-Type: image/jpeg", b"Content-Disposition: attachment"])
        parts.append(b"--" + boundary.encode() + b"\r\n" + head + b"\r\n\r\n" + image + b"\r\n")
    body = b"".join(parts) + (b"--" + boundary.encode() + b"--\r\n" if rng.random() < 0.8 else b"")
    if rng.random() < 0.3:
        body = _mutate(rng, body)
    ctype = rng.choice([f"multipart/form-data; boundary={boundary}", f"MULTIPART/FORM-DATA; boundary=\"{boundary}\"",
                        "multipart/form-data", "multipart/form-data; boundary=", f"multipart/mixed; boundary={boundary}",
                        f"multipart/form-data; boundary={boundary}; charset=utf-16"])
    return ctype, body


def _request(rng: random.Random, images: list[bytes]) -> bytes:
    """One request as bytes on the wire: well-formed or not, headers and body from the generator."""
    kind = rng.random()
    image = rng.choice(images)
    if rng.random() < 0.5:
        image = _mutate(rng, image)
    path = rng.choice(["/v1/analyze", "/v1/analyze?max_faces=2", "/v1/analyze?annotated=1", "/v1/track?session=s1"]
                      if rng.random() < 0.6 else
                      ["/v1/track", "/v1/model", "/nope", "/health", "/v1/analyze?%zz=1", "/v1/analyze?det_thresh=0.1",
                       "/v1/analyze?max_faces=-1&det_thresh=nan", "/docs", "/static/../service.py"])
    method = "POST" if rng.random() < 0.75 else rng.choice(["GET", "PUT", "DELETE", "OPTIONS", "HEAD"])
    if kind < 0.15:  # not HTTP at all, or a broken request line / header block
        return rng.choice([bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))),
                           b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/analyze HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                           b"POST /v1/analyze HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcdefg",
                           b"POST /v1/analyze HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                           b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", b"\r\n\r\n\r\n",
                           b"POST /v1/analyze HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"])
    if kind < 0.55:
        ctype, body = _multipart(rng, image)
    else:
        ctype, body = rng.choice(["image/jpeg", "application/octet-stream", "", "text/plain", "Image/PNG",
                                  "application/x-www-form-urlencoded"]), image
    headers = [f"Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    if ctype:
        headers.append(f"Content-Type: {ctype}")
    if rng.random() < 0.2:
        headers.append(rng.choice(["Expect: 100-continue", "X-Request-ID: " + "x" * 300, "Connection: close",
                                   "Authorization: Bearer nope", "Content-Encoding: gzip"]))
    if rng.random() < 0.04:
        body = body[:rng.randrange(len(body) + 1)]  # shorter than said: the read timeout ends it
    return (f"{method} {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


def test_seeded_fuzz_run(server):
    rng = random.Random(20261205)
    images = _images(rng)
    _raw(server.port, f"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Length: {len(images[0])}\r\n\r\n".encode() +
         images[0])  # warm-up before the memory baseline
    rss0, _ = server.rss_mb()
    deadline = time.time() + 60
    answers: dict[int, int] = {}
    bad = []
    n = 0
    while n < 150 and time.time() < deadline:
        req = _request(rng, images)
        status, headers, body = _raw(server.port, req, timeout=READ_TIMEOUT + 8)
        answers[status] = answers.get(status, 0) + 1
        if os.environ.get("FUZZ_DEBUG") and status == int(os.environ["FUZZ_DEBUG"]):
            print("no answer:", req[:150])
        method = req.split(b" ", 1)[0]
        if status >= 500 and status != 503 or status >= 400 and method != b"HEAD" and not _is_our_error(body):
            bad.append((status, req[:200], body[:200]))
        n += 1
    rss, peak = server.rss_mb()
    log = server.text()
    print(f"fuzz: {n} requests, answers {sorted(answers.items())}, RSS {rss0:.0f} -> {rss:.0f} MB, peak {peak:.0f} MB")
    assert n >= 100, f"only {n} requests in the time box"
    assert not bad, bad[:5]
    assert answers.get(200, 0) > 5 and sum(v for k, v in answers.items() if 400 <= k < 500) > 20, answers
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]
    # memory: what a client can make it hold is bounded by the limits, not by what it sends
    assert rss - rss0 < 300 and peak < 2500, (rss0, rss, peak)
    assert urllib.request.urlopen(server.url("/health"), timeout=5).status == 200
