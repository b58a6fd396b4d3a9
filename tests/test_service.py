"""serve.py: the JSON equals infer.py's for the same files, annotated JPEGs, health and model routes, every
kind of bad input with its status and JSON error, faces of concurrent requests batched together, and a real
server process that loses no request on SIGTERM. Runs everywhere (../shared photos when present)."""
from __future__ import annotations

import json
import os
import re
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
def analyzer():
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR

    return FaceAnalyzer.from_options(det_thresh=DET_FLOOR, det_threads=1, net_threads=1)


@pytest.fixture(scope="module")
def client(analyzer):
    from agegender.serving.service import create_app

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
    assert doc["image"] == os.path.basename(photo) and doc["model"] == "agegender.onnx"
    h, w = cv2.imread(photo).shape[:2]
    assert (doc["width"], doc["height"]) == (w, h)
    assert doc["faces"] == expected["faces"] and doc["faces_total"] == len(doc["faces"])
    assert set(doc["timings_ms"]) == {"decode", "detect", "net", "total"}
    assert doc["timings_ms"]["total"] >= doc["timings_ms"]["decode"] + doc["timings_ms"]["detect"] > 0
    raw = client.post("/v1/analyze", content=open(photo, "rb").read())  # the raw body works the same
    assert raw.json()["faces"] == expected["faces"] and raw.json()["image"] == "-"


def test_query_options_and_annotated_jpeg(client):
    data = open(T1, "rb").read()
    two = client.post("/v1/analyze?max_faces=2", content=data).json()
    every = client.post("/v1/analyze", content=data).json()["faces"]
    assert len(two["faces"]) == 2 and two["faces_total"] == 6  # the cut is said, not silent
    best = sorted(every, key=lambda f: -f["score"])[:2]
    unnumbered = lambda faces: sorted(({k: v for k, v in f.items() if k != "face"} for f in faces),  # noqa: E731
                                      key=lambda f: f["box"][0])
    assert unnumbered(two["faces"]) == unnumbered(best)
    assert [f["face"] for f in two["faces"]] == [1, 2]  # numbered among the faces of the answer
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
    import hashlib

    from agegender import __version__

    onnx = os.path.join(ROOT, "models", "agegender.onnx")
    assert m["file"] == "agegender.onnx" and m["sha256"] == hashlib.sha256(open(onnx, "rb").read()).hexdigest()
    assert m["version"] == __version__ and m["license"]["code"] == "Apache-2.0"
    assert "non-commercial" in m["license"]["model"]
    assert "'male' or 'female'" in m["gender_coding"]
    assert m["gender_ensemble"] is True and "teacher" in m["gender_coding"]  # on by default, as infer.py
    assert m["gender_teacher_weight"] == 0.5 and "weight 0.5" in m["gender_coding"]  # the default's: the mean
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/analyze"]["post"]
    assert {"200", "400", "401", "413", "415", "422", "503"} <= set(post["responses"])
    assert "AnalyzeOut" in json.dumps(post["responses"]["200"])
    body = post["requestBody"]["content"]  # "Try it out" offers a file field, and the raw body
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert body["application/octet-stream"]["schema"]["format"] == "binary"


def test_page_and_docs_are_served_from_local_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    docs = client.get("/docs").text
    for html in (page.text, docs):  # every script and stylesheet comes from this server
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and all(r.startswith(("/", "#", "data:")) for r in refs), refs
        for ref in refs:
            if ref.startswith("/") and not ref.startswith("/docs") or ref.startswith("/docs-assets"):
                assert client.get(ref).status_code == 200, ref
    assert "/static/app.js" in page.text and "swagger-ui-bundle.js" in docs
    assert client.get("/static/app.js").headers["content-type"].startswith(("text/javascript",
                                                                            "application/javascript"))


def test_request_id_is_echoed_or_made_and_logged(client, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="agegender.access"):
        r = client.get("/health", headers={"X-Request-ID": "abc-123"})
        made = client.get("/nowhere")
    assert r.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "agegender.access"]
    assert any("GET /health 200" in ln and "id=abc-123" in ln for ln in lines), lines
    assert any("GET /nowhere 404" in ln and made.headers["x-request-id"] in ln for ln in lines), lines
    odd = client.get("/health", headers={"X-Request-ID": "a b\"<x>"})  # not a plain token: replaced
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])


def test_several_images_in_order_and_every_form_of_multipart(client):
    data = open(T1, "rb").read()
    blank = cv2.imencode(".png", np.full((120, 160, 3), 128, np.uint8))[1].tobytes()
    r = client.post("/v1/analyze", files=[("image", ("t1.jpg", data)), ("image", ("blank.png", blank))])
    docs = r.json()
    assert r.status_code == 200 and [d["image"] for d in docs] == ["t1.jpg", "blank.png"]
    assert [len(d["faces"]) for d in docs] == [6, 0]
    r = client.post("/v1/analyze?annotated=1", files=[("image", ("a.jpg", data)), ("image", ("b.jpg", data))])
    assert r.status_code == 400 and r.json()["error"]["code"] == "several_images"
    r = client.post("/v1/analyze", files=[("image", (None, b"x"))] * 9)  # 9 plain fields: over the 8 allowed
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_images"
    # an image as a plain (non-file) field, past Starlette's 1 MB default, up to --max-bytes
    big = cv2.imencode(".png", cv2.resize(cv2.imread(T1), (1000, 700)))[1].tobytes()
    assert 1_100_000 < len(big) < 1_900_000
    boundary = "XyZ123"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n").encode() + big + \
        f"\r\n--{boundary}--\r\n".encode()
    for ctype in (f"multipart/form-data; boundary={boundary}", f"Multipart/Form-Data; boundary={boundary}"):
        r = client.post("/v1/analyze", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 200 and len(r.json()["faces"]) == 6, r.text
    for ctype, payload, code in (
            ("multipart/form-data", body, "bad_multipart"),  # no boundary
            ("multipart/form-data; boundary=other", body, "bad_multipart"),  # a boundary not in the body
            ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"photo\"\r\n\r\nx\r\n--b--\r\n",
             "no_image_field"),
            ("multipart/form-data; boundary=b", b"".join(b"--b\r\nContent-Disposition: form-data; name=\"f%d\""
                                                        b"\r\n\r\nx\r\n" % i for i in range(1200)) + b"--b--\r\n",
             "bad_multipart")):
        r = client.post("/v1/analyze", content=payload, headers={"Content-Type": ctype})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def _app(analyzer, **kw):
    from agegender.serving.service import create_app

    return TestClient(create_app(analyzer, batch_window_ms=1, **kw))


def test_api_key_and_cors(analyzer):
    with _app(analyzer, api_key="s3cret", cors_origins=("http://pages.test",)) as c:
        data = open(T1, "rb").read()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/v1/analyze", content=data, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model").status_code == 401
        assert c.post("/v1/analyze", content=data, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/").status_code == 200 and c.get("/health").status_code == 200  # the page asks for the key
        pre = c.options("/v1/analyze", headers={"Origin": "http://pages.test", "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://pages.test"
        other = c.get("/health", headers={"Origin": "http://elsewhere.test"})
        assert "access-control-allow-origin" not in other.headers
    with _app(analyzer) as c:  # no origin allowed by default
        r = c.get("/health", headers={"Origin": "http://pages.test"})
        assert "access-control-allow-origin" not in r.headers


def test_answers_name_the_model_without_a_path_of_the_machine(tmp_path):
    """Served from an installed package (the model deep in site-packages): /v1/model and /v1/analyze name
    it `agegender.onnx`, and no answer carries a folder of the serving machine."""
    import shutil

    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR, create_app

    weights = tmp_path / "venv" / "lib" / "python3.13" / "site-packages" / "agegender" / "weights"
    weights.mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "models", "agegender.onnx"), weights / "agegender.onnx")
    installed = FaceAnalyzer.from_options(str(weights / "agegender.onnx"), det_thresh=DET_FLOOR, det_threads=1,
                                          net_threads=1)
    assert str(tmp_path) in installed.engine.name  # the engine itself knows where it is
    data = open(T1, "rb").read()
    with TestClient(create_app(installed)) as c:
        answers = [c.get("/v1/model"), c.post("/v1/analyze", content=data), c.post("/v1/track?session=s", content=data),
                   c.get("/health"), c.post("/v1/analyze", content=b"not an image"), c.get("/openapi.json")]
    assert answers[0].json()["name"] == answers[1].json()["model"] == "agegender.onnx"
    for r in answers:
        for folder in (str(tmp_path), "site-packages", ROOT, os.path.expanduser("~") + "/"):
            assert folder not in r.text, (r.request.url, folder)


def test_over_max_queue_is_503_with_retry_after(analyzer, monkeypatch):
    import threading

    gate, entered = threading.Event(), threading.Event()
    find = analyzer.find

    def slow_find(*a, **kw):
        entered.set()
        gate.wait(30)
        return find(*a, **kw)

    data = open(T1, "rb").read()
    with _app(analyzer, max_queue=1) as c, ThreadPoolExecutor(1) as pool:
        monkeypatch.setattr(analyzer, "find", slow_find)
        first = pool.submit(c.post, "/v1/analyze", content=data)
        assert entered.wait(30)
        r = c.post("/v1/analyze", content=data)
        gate.set()
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
        assert first.result().status_code == 200
        monkeypatch.setattr(analyzer, "find", find)
        assert c.post("/v1/analyze", content=data).status_code == 200  # the slot was given back


def test_track_sessions_keep_ids_and_smooth(client):
    frame = cv2.imread(T1)
    ids = []
    for i in range(8):
        shifted = np.roll(frame, 3 * i, axis=1)  # the people move a little between frames
        r = client.post("/v1/track?session=cam1", content=cv2.imencode(".jpg", shifted)[1].tobytes())
        assert r.status_code == 200, r.text
        line = r.json()
        validate(line, "track_frame")
        assert line["frame"] == i and len(line["faces"]) == 6
        ids.append(sorted(f["track"]["id"] for f in line["faces"]))
    assert all(x == ids[0] for x in ids)  # the same six tracks all along
    assert all(f["track"]["settled"] and f["track"]["gender"] in ("male", "female") for f in line["faces"])
    # the track's range is its smoothed distribution's: around the smoothed age; faces numbered left to right
    assert all(f["track"]["age_low"] <= round(f["track"]["age"]) <= f["track"]["age_high"] for f in line["faces"])
    assert [f["face"] for f in line["faces"]] == [1, 2, 3, 4, 5, 6] and line["schema_version"] == 2
    assert [f["box"][0] for f in line["faces"]] == sorted(f["box"][0] for f in line["faces"])
    other = client.post("/v1/track?session=cam2", content=cv2.imencode(".jpg", frame)[1].tobytes()).json()
    assert other["frame"] == 0 and sorted(f["track"]["id"] for f in other["faces"]) == list(range(1, 7))
    bad = client.post("/v1/track?session=../x", content=b"x")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_parameter"


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
    nowhere, wrong = client.get("/nowhere"), client.get("/v1/analyze")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    blank = cv2.imencode(".png", np.full((200, 300, 3), 128, np.uint8))[1].tobytes()
    r = client.post("/v1/analyze", content=blank)
    assert r.status_code == 200 and r.json()["faces"] == []


def test_concurrent_requests_are_batched_together(client):
    data = open(T1, "rb").read()
    batcher = client.app.state.service.batcher
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


def test_access_log_can_be_switched_off(analyzer, caplog):
    import logging

    with _app(analyzer, access_log=False) as c, caplog.at_level(logging.INFO, logger="agegender.access"):
        r = c.get("/health")
    assert r.status_code == 200 and r.headers["x-request-id"]  # the id stays; only the log line goes
    assert not [rec for rec in caplog.records if rec.name == "agegender.access"]


def test_api_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    sys.path.insert(0, ROOT)
    from serve import API_KEY_ENV, read_api_key

    key = tmp_path / "key"
    key.write_text("s3cret\nignored\n")
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert read_api_key(str(key)) == "s3cret" and read_api_key(None) is None
    monkeypatch.setenv(API_KEY_ENV, " fromenv ")
    assert read_api_key(None) == "fromenv" and read_api_key(str(key)) == "s3cret"  # the file wins
    (tmp_path / "empty").write_text("\n")
    for path, why in ((str(tmp_path / "missing"), "cannot read --api-key-file"), (str(tmp_path / "empty"), "empty")):
        proc = run_script("serve.py", "--api-key-file", path, "--port", "0")
        assert proc.returncode == 2 and why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_unexpected_error_is_a_json_500_with_its_id(analyzer, monkeypatch, caplog):
    import logging

    def broken(*a, **kw):
        raise RuntimeError("boom")

    with _app(analyzer) as c, caplog.at_level(logging.ERROR, logger="agegender.serve"):
        monkeypatch.setattr(analyzer, "find", broken)
        r = c.post("/v1/analyze", content=open(T1, "rb").read(), headers={"X-Request-ID": "req-1"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] == "req-1"
    assert any("req-1" in rec.getMessage() for rec in caplog.records)  # the bug is in the log, with the id


def test_v1_model_and_the_page_state_the_age_range_the_answers_carry():
    """/v1/model's `age_range` and the page's Range header say the level the server answers at (serve.py
    --age-level) and whether the range is calibrated, not a fixed "80 %"."""
    from agegender.model.age import NO_WIDENING
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR, create_app

    analyzer = FaceAnalyzer.from_options(det_thresh=DET_FLOOR, det_threads=1, net_threads=1, age_level=0.9)
    with TestClient(create_app(analyzer)) as c:
        assert c.get("/v1/model").json()["age_range"] == {"level": 0.9, "calibrated": True}
        head = re.search(r'<th id="range-head"[^>]*>Range</th>', c.get("/").text).group(0)
        assert "for 90 % of faces (calibrated)" in head and "80" not in head
    analyzer.engine.age_widening = NO_WIDENING  # a model without a widening: its raw range
    with TestClient(create_app(analyzer)) as c:
        assert c.get("/v1/model").json()["age_range"] == {"level": 0.9, "calibrated": False}
        assert "for 90 % of faces (the model's own range, not calibrated)" in c.get("/").text
