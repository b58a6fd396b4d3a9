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

from tests.conftest import ROOT, shared_path
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

    def __init__(self, tmp, *extra: str):
        self.port = _free_port()
        self.log_path = os.path.join(tmp, "server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "serve.py"), "--port", str(self.port), "--max-bytes", str(MAX_BYTES),
             "--read-timeout", str(READ_TIMEOUT), "--idle-timeout", "2", "--max-connections", str(MAX_CONNECTIONS),
             "--max-header-bytes", "16384", "--max-pixels", "20000000", *extra],
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


# --- round 4: memory, tracking, keys, logs, encodes, multipart (issue 32) -----------------------------------
@pytest.fixture(scope="module")
def analyzer():
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR

    return FaceAnalyzer.from_options(det_thresh=DET_FLOOR, det_threads=1, net_threads=1)


def _client(analyzer, **kw):
    from fastapi.testclient import TestClient

    from agegender.serving.service import create_app

    return TestClient(create_app(analyzer, max_pixels=20_000_000, **kw))


def test_requests_over_the_memory_budget_get_503_and_the_budget_comes_back(analyzer):
    from agegender.serving.memory import request_bytes

    data = open(T1, "rb").read()
    h, w = cv2.imread(T1).shape[:2]
    with _client(analyzer) as c:
        budget = c.app.state.service.budget
        others = budget.take(budget.limit - request_bytes(w * h, 256) + 1)  # the other requests in progress
        r = c.post("/v1/analyze", content=data)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
        assert "--memory-budget" in r.json()["error"]["message"]
        others.release()
        assert c.post("/v1/analyze", content=data).status_code == 200
        assert c.post("/v1/analyze?annotated=1", content=data).status_code == 200
        assert budget.used == 0  # every request gave its bytes back, the annotated one too
    with pytest.raises(ValueError, match="--memory-budget"):  # a budget no image could fit is refused up front
        _client(analyzer, memory_budget=1_000_000)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "serve.py"), "--memory-budget", "1000000", "--port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --memory-budget") and \
        len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_faces_per_image_are_capped_keeping_the_largest(analyzer):
    from agegender.schema import validate

    data = open(T1, "rb").read()
    with _client(analyzer) as c:
        every = c.post("/v1/analyze", content=data).json()
    with _client(analyzer, max_faces_per_image=2) as c:
        doc = c.post("/v1/analyze", content=data).json()
        frame = c.post("/v1/track?session=s", content=data).json()
        best = c.post("/v1/analyze?max_faces=1", content=data).json()
    validate(doc, "analyze")
    validate(frame, "track_frame")
    assert every["faces_total"] == 6 and every["faces_dropped"] == 0
    assert doc["faces_total"] == 6 and doc["faces_dropped"] == 4 and len(doc["faces"]) == 2
    area = lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])  # noqa: E731
    largest = sorted(every["faces"], key=lambda f: -area(f))[:2]
    assert sorted(f["box"] for f in doc["faces"]) == sorted(f["box"] for f in largest)
    assert frame["faces_dropped"] == 4 and len(frame["faces"]) == 2
    assert len(best["faces"]) == 1 and best["faces_dropped"] == 4  # max_faces picks among the kept


def _attack_image(side: int) -> bytes:
    """A side x side JPEG tiled from t1.jpg: many faces, and many pixels for few bytes."""
    tile = cv2.imread(T1)
    reps = (side // tile.shape[0] + 1, side // tile.shape[1] + 1, 1)
    return cv2.imencode(".jpg", np.tile(tile, reps)[:side, :side], [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def test_an_annotated_answer_holds_the_budget_of_its_drawing(analyzer, monkeypatch):
    """annotated=1: while draw() makes its BGR copy and the JPEG is encoded, the request still holds the
    decode's rate for the image (6 bytes a pixel), not the 3 of the image alone; a budget that one
    annotated image of --max-pixels could not fit is refused up front."""
    from agegender.serving.memory import DECODE_BYTES_PER_PIXEL, check_memory_budget, request_bytes
    from agegender.serving.routes import analyze

    data = open(T1, "rb").read()
    h, w = cv2.imread(T1).shape[:2]
    held = []
    real_draw = analyze.draw

    def draw(res):
        held.append(c.app.state.service.budget.used)
        return real_draw(res)

    monkeypatch.setattr(analyze, "draw", draw)
    with _client(analyzer) as c:
        r = c.post("/v1/analyze?annotated=1", content=data)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert c.app.state.service.budget.used == 0
    assert len(held) == 1 and held[0] >= w * h * DECODE_BYTES_PER_PIXEL, (held, w * h)
    need = request_bytes(1000, 10, keep_image=True)
    assert need > request_bytes(1000, 10)
    with pytest.raises(ValueError, match="--memory-budget"):
        check_memory_budget(need - 1, 1000, 10)


def test_a_scaled_down_memory_attack_is_answered_or_refused(tmp_path_factory):
    """benchmarks/serve_memory.py's attack, scaled down: concurrent big many-face images against a budget
    that fits one of them. Every request is answered (200) or refused (503 with Retry-After), at least one
    is refused, the faces are capped, and the server is whole afterwards."""
    from agegender.serving.memory import request_bytes

    side, cap = 2048, 16
    budget = request_bytes(5_000_000, cap, keep_image=True) + 1_000_000  # one 2048x2048 decode fits, two do not
    server = Server(str(tmp_path_factory.mktemp("attack")), "--max-pixels", "5000000", "--workers", "4",
                    "--max-connections", "64", "--memory-budget", str(budget), "--max-faces-per-image", str(cap))
    try:
        data = _attack_image(side)
        rss0, _ = server.rss_mb()

        def post(_):
            req = urllib.request.Request(server.url("/v1/analyze?det_thresh=0.3"), data=data, method="POST",
                                         headers={"Content-Type": "image/jpeg"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    return r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as err:
                return err.code, err.headers, err.read()

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, range(12)))
        statuses = sorted(s for s, _, _ in answers)
        assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
        for status, headers, body in answers:
            if status == 503:
                assert headers["Retry-After"] == "1" and json.loads(body)["error"]["code"] == "overloaded"
            else:
                doc = json.loads(body)
                assert len(doc["faces"]) == cap and doc["faces_dropped"] == doc["faces_total"] - cap > 0
        _, peak = server.rss_mb()
        print(f"scaled-down attack: {statuses.count(200)} x 200, {statuses.count(503)} x 503, "
              f"RSS {rss0:.0f} -> peak {peak:.0f} MB")
        assert peak - rss0 < 400, (rss0, peak)  # the budget (31 MB) plus the net's and the bodies' share
        assert post(0)[0] == 200  # the budget came back
        assert "Traceback" not in server.text()
    finally:
        server.close()


def test_tracking_runs_off_the_event_loop(analyzer, monkeypatch):
    """While one frame's tracking runs (held here until /health has answered), the server answers others."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from agegender.serving.tracking import Tracker

    update, entered, release = Tracker.update, threading.Event(), threading.Event()
    order = []

    def held_update(self, *a, **kw):
        entered.set()
        release.wait(20)  # on the event loop this would hold /health until it gives up
        order.append("track")
        return update(self, *a, **kw)

    monkeypatch.setattr(Tracker, "update", held_update)
    data = open(T1, "rb").read()
    with _client(analyzer) as c, ThreadPoolExecutor(1) as pool:
        frame = pool.submit(c.post, "/v1/track?session=s", content=data)
        assert entered.wait(60)
        assert c.get("/health").status_code == 200
        order.append("health")
        release.set()
        r = frame.result(60)
    assert order == ["health", "track"] and r.status_code == 200
    assert set(r.json()["timings_ms"]) == {"decode", "detect", "net", "track", "total"}


def test_tracks_per_session_are_bounded_and_idle_sessions_expire(analyzer, monkeypatch):
    from agegender.data.face import Face
    from agegender.serving import service

    rng = np.random.default_rng(0)

    def many_faces(rgb, *a, **kw):  # ten new faces in every frame, none overlapping the last frame's
        x = rng.uniform(0, 1000, 10)
        points = np.array([[6, 8], [14, 8], [10, 12], [7, 16], [13, 16]], np.float32)  # eyes, nose, mouth
        return [Face(np.array([v, i * 40, v + 20, i * 40 + 20], np.float32), 0.99, points + [v, i * 40])
                for i, v in enumerate(x)]

    monkeypatch.setattr(analyzer, "find", many_faces)
    monkeypatch.setattr(service, "MAX_TRACKS", 25)
    data = open(T1, "rb").read()
    with _client(analyzer, max_faces_per_image=10, stream_idle_s=0.5) as c:
        for _ in range(6):
            line = c.post("/v1/track?session=s", content=data).json()
            assert len(line["faces"]) == 10
        streams = c.app.state.service.streams
        assert len(streams) == 1 and len(streams.get("s").tracker.tracks) == 25  # 60 made, the 25 latest kept
        deadline = time.time() + 30
        while len(streams) and time.time() < deadline:  # no request comes: the sweep forgets the session
            time.sleep(0.1)
        assert len(streams) == 0


def test_a_blank_api_key_is_refused_and_a_bom_key_file_works(tmp_path, monkeypatch):
    sys.path.insert(0, ROOT)
    from serve import API_KEY_ENV, read_api_key

    from agegender.errors import UserError

    bom = tmp_path / "key"
    bom.write_bytes("s3cret\r\n".encode("utf-8-sig"))  # as Notepad saves it
    assert read_api_key(str(bom)) == "s3cret"
    for blank in ("", "   ", "\t\n"):
        monkeypatch.setenv(API_KEY_ENV, blank)
        with pytest.raises(UserError, match=API_KEY_ENV):
            read_api_key(None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "serve.py"), "--port", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, API_KEY_ENV: "   "})
    assert proc.returncode == 2 and API_KEY_ENV in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_log_lines_cannot_be_forged(server):
    forged = "INFO:     127.0.0.1:1 POST /v1/analyze 200 5B 1.0ms id=forged"
    path = "/x%0a" + forged.replace(" ", "%20") + "%0d%1b[2J%e2%80%a8"
    status, _, _ = _raw(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 404
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # a client leaving: its line too
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab".encode())
        time.sleep(0.2)
    time.sleep(0.5)
    log = server.text()
    lines = log.splitlines()
    assert not [ln for ln in lines if ln.startswith(forged[:30])], log[-2000:]
    assert "\x1b" not in log and "\r" not in log and "\u2028" not in log
    assert sum("/x\\x0a" + forged in ln and "\\x0d\\x1b[2J\\u2028" in ln for ln in lines) >= 2, log[-2000:]


def test_an_annotated_image_too_wide_for_jpeg_is_a_json_error(server):
    wide = cv2.imencode(".png", np.full((1, 100_000, 3), 128, np.uint8))[1].tobytes()
    status, _, body = _raw(server.port, b"POST /v1/analyze?annotated=1 HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                           str(len(wide)).encode() + b"\r\n\r\n" + wide)
    assert status == 422 and json.loads(body)["error"]["code"] == "cannot_annotate", body
    assert "100000x1" in json.loads(body)["error"]["message"]


def test_an_unterminated_multipart_body_is_bad_multipart(server):
    t1 = open(T1, "rb").read()
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"image\"; filename=\"t1.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + t1[:5000])  # the upload stops inside the image: no closing line
    status, _, answer = _raw(server.port, b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data;"
                             b" boundary=b0undary\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status == 400 and json.loads(answer)["error"]["code"] == "bad_multipart", answer
    empty = b"--b0undary\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b0undary--\r\n"
    status, _, answer = _raw(server.port, b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data;"
                             b" boundary=b0undary\r\nContent-Length: " + str(len(empty)).encode() + b"\r\n\r\n" + empty)
    assert status == 400 and json.loads(answer)["error"]["code"] == "no_image_field"  # a whole body without it


def test_drop_flagged_is_counted_so_no_cut_is_silent():
    """serve.py --drop-flagged on the selfie's tiny faces: the flagged ones left out are counted in
    faces_dropped_flagged, so faces_total = returned + faces_dropped + faces_dropped_flagged (analyze and
    track); without the flag nothing is counted there."""
    from agegender.schema import validate
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR

    data = open(shared_path("data", "photos", "insightface_worlds-largest-selfie.jpg"), "rb").read()
    dropping = FaceAnalyzer.from_options(det_thresh=DET_FLOOR, det_threads=1, net_threads=1, drop_flagged=True)
    with _client(dropping, max_faces_per_image=64) as c:
        doc = c.post("/v1/analyze", content=data).json()
        frame = c.post("/v1/track?session=s", content=data).json()
    validate(doc, "analyze")
    validate(frame, "track_frame")
    assert doc["faces_dropped_flagged"] > 0 and doc["faces_dropped"] > 0
    assert doc["faces_total"] == len(doc["faces"]) + doc["faces_dropped"] + doc["faces_dropped_flagged"]
    assert frame["faces_dropped_flagged"] == doc["faces_dropped_flagged"]
    assert not any(f["flags"] for f in doc["faces"])
    dropping.drop_flagged = False
    with _client(dropping, max_faces_per_image=64) as c:
        plain = c.post("/v1/analyze", content=data).json()
    assert plain["faces_dropped_flagged"] == 0 and plain["faces_total"] == len(plain["faces"]) + plain["faces_dropped"]
