"""serve.py: the JSON equals infer.py's for the same files, annotated JPEGs, health and model routes, every
kind of bad input with its status and JSON error, faces of concurrent requests batched together, and a real
server process that loses no request on SIGTERM. Runs everywhere (../shared photos when present)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT, SHARED, run_script
from tests.test_robustness import bomb_png
from agegender.data.demo import wheel_image
from agegender.schema import validate

T1 = wheel_image("t1.jpg")


@pytest.fixture(scope="module")
def client():
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR, create_app

    analyzer = FaceAnalyzer.from_options(det_thresh=DET_FLOOR, det_threads=1, net_threads=1)
    app = create_app(analyzer, max_bytes=2_000_000, max_pixels=20_000_000, batch_window_ms=50)
    with TestClient(app) as c:
        yield c


def _photos() -> list[str]:
    found = [T1]
    folder = os.path.join(SHARED, "data", "photos")
    if os.path.isdir(folder):
        found += [os.path.join(folder, n) for n in ("biubug6_ncnn_sample.jpg", "insightface_worlds-largest-selfie.jpg")]
    return found


@pytest.mark.parametrize("photo", _photos(), ids=os.path.basename)
def test_json_equals_infer_json_for_the_same_file(client, photo):
    expected = json.loads(run_script("infer.py", "--image", photo, "--json", check=True).stdout)[0]
    with open(photo, "rb") as f:
        r = client.post("/v1/analyze", files={"image": (os.path.basename(photo), f, "image/jpeg")})
    assert r.status_code == 200, r.text
    doc = r.json()
    validate(doc, "analyze")
    assert doc["image"] == os.path.basename(photo) and doc["model"] == "models/agegender.onnx"
    h, w = cv2.imread(photo).shape[:2]
    assert (doc["width"], doc["height"]) == (w, h)
    assert doc["faces"] == expected["faces"]
    raw = client.post("/v1/analyze", content=open(photo, "rb").read())  # the raw body works the same
    assert raw.json()["faces"] == expected["faces"] and raw.json()["image"] == "-"


def test_query_options_and_annotated_jpeg(client):
    data = open(T1, "rb").read()
    assert len(client.post("/v1/analyze?max_faces=2", content=data).json()["faces"]) == 2
    assert client.post("/v1/analyze?min_face=120", content=data).json()["faces"] == []
    assert len(client.post("/v1/analyze?det_thresh=0.3", content=data).json()["faces"]) >= 6
    r = client.post("/v1/analyze?annotated=1", content=data)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (886, 1280, 3) and np.abs(img.astype(int) - cv2.imread(T1)).mean() > 1  # boxes drawn


def test_health_model_and_docs(client):
    assert client.get("/health").json() == {"status": "ok", "model_loaded": True}
    m = client.get("/v1/model").json()
    assert m["engine"] == "onnx" and m["limits"]["max_bytes"] == 2_000_000 and "RGB" in m["input"]
    from agegender import __version__

    assert m["version"] == __version__ and m["license"]["code"] == "Apache-2.0"
    assert "non-commercial" in m["license"]["model"]
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/analyze"]["post"]
    assert {"200", "400", "413", "415", "422"} <= set(post["responses"])
    assert "AnalyzeOut" in json.dumps(post["responses"]["200"]) and client.get("/docs").status_code == 200


@pytest.mark.parametrize("body,status,code", [
    (b"", 400, "empty_body"),
    (b"this is not an image", 415, "not_an_image"),
    (b"<html><body>404</body></html>", 415, "not_an_image"),
    (open(T1, "rb").read()[:3000], 400, "truncated_image"),
    (bomb_png(), 413, "too_many_pixels"),
    (b"\xff" * 2_500_000, 413, "body_too_large"),
])
def test_bad_input_gets_its_status_and_a_json_error(client, body, status, code):
    r = client.post("/v1/analyze", content=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_bad_queries_routes_and_uploads(client):
    assert client.post("/v1/analyze?det_thresh=2", content=b"x").status_code == 422
    assert client.post("/v1/analyze?det_thresh=nan", content=b"x").json()["error"]["code"] == "bad_parameter"
    assert client.post("/v1/analyze", files={"photo": ("a.jpg", b"x")}).json()["error"]["code"] == "no_image_field"
    assert client.get("/nowhere").status_code == 404
    assert client.get("/v1/analyze").status_code == 405
    blank = cv2.imencode(".png", np.full((200, 300, 3), 128, np.uint8))[1].tobytes()
    r = client.post("/v1/analyze", content=blank)
    assert r.status_code == 200 and r.json()["faces"] == []


def test_concurrent_requests_are_batched_together(client):
    data = open(T1, "rb").read()
    batcher = client.app.state.batcher
    before = batcher.batches
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: client.post("/v1/analyze", content=data), range(8)))
    assert all(r.status_code == 200 and len(r.json()["faces"]) == 6 for r in results)
    assert batcher.batches - before < 8  # some requests shared a forward pass
    assert len({json.dumps(r.json()["faces"]) for r in results}) == 1  # batching changes no result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_finishes_in_flight_requests_on_sigterm(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        data = open(T1, "rb").read()

        def post(_):
            req = urllib.request.Request(f"{url}/v1/analyze", data=data, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, len(json.load(r)["faces"])
            except (urllib.error.URLError, ConnectionError) as exc:
                return "refused", str(exc)

        with ThreadPoolExecutor(12) as pool:
            first = [pool.submit(post, i) for i in range(12)]
            time.sleep(0.15)  # the requests are in flight
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in first]
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    done = [r for r in results if r[0] == 200]
    assert all(r == (200, 6) for r in done), results
    # a request is either answered in full or refused at the door (never cut off half-way)
    assert len(done) + sum(r[0] == "refused" for r in results) == 12
    assert len(done) >= 1 and "Shutting down" in out and "Traceback" not in out


def test_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        proc = run_script("serve.py", "--port", str(s.getsockname()[1]))
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot listen on") and \
        len(proc.stderr.strip().splitlines()) == 1
