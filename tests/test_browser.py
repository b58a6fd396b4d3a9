"""The page at `/` and the offline `/docs` in a real browser (headless Chromium driven by Selenium, on a
real serve.py on 127.0.0.1): t1.jpg uploaded through the page gives six faces drawn and listed; the camera
mode, fed by Chromium's fake camera from a clip made of a real photo, shows faces with stable track ids
over at least 30 frames; Swagger UI's "Try it out" uploads a photo. Screenshots at phone and desktop
widths are saved in the test's temporary folder. Skips where Chromium, chromedriver or Selenium are
absent: `bash tools/install_browser.sh` installs them."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, shared_path
from agegender.data.demo import wheel_image

T1 = wheel_image("t1.jpg")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER and HAVE_SELENIUM),
                                reason="needs Debian's chromium and chromium-driver and selenium: "
                                       "bash tools/install_browser.sh")
PHONE, DESKTOP = (390, 844), (1280, 900)


def _serve(folder, env: dict | None = None):
    """A serve.py process on a free port, and its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--port", str(port)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, "serve.py exited"
            time.sleep(0.2)
    return proc, log, url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, log, url = _serve(tmp_path_factory.mktemp("serve"))
    yield url
    proc.terminate()
    proc.wait(30)
    log.close()


def y4m_clip(path: str, frames: int = 40) -> None:
    """A camera clip from t1.jpg: the picture pans a few pixels to and fro (a seamless loop, as Chromium
    repeats the file), written as YUV4MPEG2 4:2:0."""
    img = cv2.resize(cv2.imread(T1), (640, 442))
    w, h = 600, 420
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            dx = int(round(10 * (1 - abs(2 * i / frames - 1)) * 2))  # 0 -> 20 -> 0 pixels
            crop = np.ascontiguousarray(img[10:10 + h, dx:dx + w])
            f.write(b"FRAME\n" + cv2.cvtColor(crop, cv2.COLOR_BGR2YUV_I420).tobytes())


def _driver(tmp_path, size, camera_clip=None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={size[0]},{size[1]}", "--hide-scrollbars"):
        opts.add_argument(arg)
    if camera_clip:
        opts.add_argument("--use-fake-ui-for-media-stream")
        opts.add_argument("--use-fake-device-for-media-stream")
        opts.add_argument(f"--use-file-for-fake-video-capture={camera_clip}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: where CSP violations show
    opts.add_experimental_option("prefs", {"download.default_directory": str(tmp_path),
                                           "download.prompt_for_download": False})
    if size == PHONE:
        opts.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": size[0], "height": size[1],
                                                                           "pixelRatio": 2}})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _csp_violations(driver) -> list[str]:
    """The console's Content-Security-Policy reports since the last call: none means the policy let the
    page do all it did."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def _wait(driver, condition, timeout=60.0, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=f"waiting for {what}")


def _full_screenshot(driver, path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    driver.set_window_size(width if width > 500 else DESKTOP[0], max(height, 600) + 120)
    driver.save_screenshot(str(path))


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_photo_upload_draws_and_lists_six_faces(server, tmp_path, size):
    from selenium.webdriver.common.by import By

    driver = _driver(tmp_path, size)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(T1)
        _wait(driver, lambda d: d.find_element(By.ID, "canvas").get_attribute("data-faces") == "6", what="6 faces")
        rows = driver.find_elements(By.CSS_SELECTOR, "#faces tbody tr")
        assert len(rows) == 6
        genders = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
        assert set(genders) <= {"male", "female"} and len(set(genders)) == 2
        # one face number everywhere: the table's and the labels' are the JSON's `face`; labels show the range
        doc = driver.execute_script("return window.ageGender.doc")
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [str(f["face"]) for f in doc["faces"]]
        assert [r.find_elements(By.TAG_NAME, "td")[4].text for r in rows] == \
            [f"{f['age_low']}-{f['age_high']}" for f in doc["faces"]]
        labels = driver.execute_script("return window.ageGender.labels")
        assert [lab.split()[0] for lab in labels] == [str(f["face"]) for f in doc["faces"]]
        assert all(re.fullmatch(r"\d+ [MF] \d+ \(\d+-\d+\)", lab) for lab in labels), labels
        # the drawing: the canvas shows the photo with coloured boxes over it (not blank, not the bare photo)
        pixels = np.array(driver.execute_script(
            "const c = document.getElementById('canvas'); return Array.from(c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data.filter((v, i) => i % 4 === 0 && i % 400 === 0));"))
        assert pixels.std() > 20
        width = driver.execute_script("return document.getElementById('canvas').getBoundingClientRect().width")
        assert width <= size[0]  # fits the screen, at phone width too
        assert driver.execute_script("return document.documentElement.scrollWidth") <= size[0] + 1
        driver.find_element(By.ID, "download").click()
        target = tmp_path / "t1.json"
        _wait(driver, lambda d: target.exists() and target.stat().st_size > 0, 20, "the JSON download")
        assert len(json.loads(target.read_text())["faces"]) == 6
        assert not _csp_violations(driver)
        _full_screenshot(driver, tmp_path / f"photo-{size[0]}.png")
    finally:
        driver.quit()


def test_a_failed_upload_clears_the_previous_result(server, tmp_path):
    """t1.jpg, then a text file named bad.jpg: the error shows, and the previous photo, boxes, table and
    "Download JSON" are gone (then t1.jpg again works as the first time)."""
    from selenium.webdriver.common.by import By

    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo\n")
    driver = _driver(tmp_path, DESKTOP)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(T1)
        _wait(driver, lambda d: d.find_element(By.ID, "canvas").get_attribute("data-faces") == "6", what="6 faces")
        assert driver.find_element(By.ID, "download").is_enabled()
        driver.find_element(By.ID, "file").send_keys(str(bad))
        _wait(driver, lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"), 30, "the error")
        assert driver.find_elements(By.CSS_SELECTOR, "#faces tbody tr") == []
        canvas = driver.find_element(By.ID, "canvas")
        assert canvas.get_attribute("data-faces") == "0" and canvas.get_attribute("width") == "0"
        assert not driver.find_element(By.ID, "download").is_enabled()
        assert driver.execute_script("return window.ageGender.doc") is None
        driver.find_element(By.ID, "download").click()  # disabled: no download of an old result
        time.sleep(1)
        assert not list(tmp_path.glob("*.json"))
        driver.find_element(By.ID, "file").send_keys(T1)
        _wait(driver, lambda d: d.find_element(By.ID, "canvas").get_attribute("data-faces") == "6", what="6 again")
        assert driver.find_element(By.ID, "status").get_attribute("class") == "status"
    finally:
        driver.quit()


def test_flagged_faces_are_shown_apart(server, tmp_path):
    """The tiny faces of the selfie photo: grey italic rows saying why, labels ending in `?`."""
    from selenium.webdriver.common.by import By

    selfie = shared_path("data", "photos", "insightface_worlds-largest-selfie.jpg")
    driver = _driver(tmp_path, DESKTOP)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(selfie)
        _wait(driver, lambda d: int(d.find_element(By.ID, "canvas").get_attribute("data-faces") or 0) > 20,
              what="the selfie's faces")
        doc = driver.execute_script("return window.ageGender.doc")
        labels = driver.execute_script("return window.ageGender.labels")
        rows = driver.find_elements(By.CSS_SELECTOR, "#faces tbody tr")
        shown = [f for f in doc["faces"] if f["score"] >= 0.8]
        assert len(rows) == len(shown) == len(labels)
        for row, face, lab in zip(rows, shown, labels):
            flagged = bool(face["flags"])
            assert ("flagged" in row.get_attribute("class")) == flagged and lab.endswith("?") == flagged
            assert row.find_elements(By.TAG_NAME, "td")[5].text == ("low: " + ", ".join(face["flags"]) if flagged else "ok")
        assert sum(bool(f["flags"]) for f in shown) >= len(shown) // 2
    finally:
        driver.quit()


def test_camera_mode_tracks_faces_with_stable_ids(server, tmp_path):
    from selenium.webdriver.common.by import By

    clip = str(tmp_path / "camera.y4m")
    y4m_clip(clip)
    driver = _driver(tmp_path, DESKTOP, camera_clip=clip)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "tab-camera").click()
        fps = driver.find_element(By.ID, "cam-fps")
        fps.clear()
        fps.send_keys("10")
        driver.find_element(By.ID, "cam-start").click()
        _wait(driver, lambda d: d.execute_script("return window.ageGender.frames.length") >= 32, 180, "32 frames")
        frames = driver.execute_script("return window.ageGender.frames")
        _full_screenshot(driver, tmp_path / "camera-1280.png")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": PHONE[0], "height": PHONE[1],
                                                                      "deviceScaleFactor": 2, "mobile": True})
        time.sleep(1.0)  # a few more frames drawn at the phone's width
        assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE[0] + 1
        driver.save_screenshot(str(tmp_path / f"camera-{PHONE[0]}.png"))
        overlay = driver.find_element(By.ID, "overlay")
        predicted = overlay.get_attribute("data-predicted")  # every box drawn where its track says it is now
        driver.find_element(By.ID, "cam-stop").click()
        assert not _csp_violations(driver)
    finally:
        driver.quit()
    frames = frames[2:]  # the first frames may come before the camera settles
    ids = [sorted(f["track"]["id"] for f in fr["faces"]) for fr in frames]
    assert len(frames) >= 30 and all(len(x) == 6 for x in ids), ids
    assert all(x == ids[0] for x in ids), ids  # one id per person, all along
    assert [fr["frame"] for fr in frames] == list(range(frames[0]["frame"], frames[0]["frame"] + len(frames)))
    assert predicted == "6"
    last = frames[-1]["faces"]
    assert all(f["track"]["settled"] and f["track"]["gender"] in ("male", "female") and f["track"]["age"] > 0
               for f in last)


def test_camera_boxes_are_drawn_where_the_faces_are_now(server, tmp_path):
    """An answer describes the frame grabbed a request ago: on a pan each box is moved on at its track's
    velocity for the time since (at most PREDICT_MS), and a box whose frame is older than STALE_MS is dashed."""
    from selenium.webdriver.common.by import By

    driver = _driver(tmp_path, DESKTOP)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "tab-camera").click()
        got = driver.execute_script("""
            const s = window.ageGender, c = document.getElementById('overlay');
            const face = (x) => ({box: [x, 100, x + 60, 160], score: 0.99, landmarks: [[x + 20, 120]],
                                  gender: 'male', p_male: 0.9, age: 30,
                                  track: {id: 4, labelled: 6, settled: true, gender: 'male', p_male: 0.9, age: 30}});
            const line = (x, n) => ({frame: n, time: n / 10, detected: true, faces: [face(x)]});
            const alpha = (x, y) => c.getContext('2d').getImageData(x, y, 1, 1).data[3];
            s.acceptLine(line(100, 0), 1000, 640, 360);
            s.acceptLine(line(120, 1), 1100, 640, 360);  // 20 px in 100 ms: a fast pan
            s.drawOverlay(1200);                          // 100 ms later the face is at 140
            const now = {at140: alpha(140, 130), at120: alpha(120, 130), predicted: c.dataset.predicted,
                         stale: c.dataset.stale};
            s.drawOverlay(1100 + s.STALE_MS + 500);       // no answer for long: moved at most PREDICT_MS, dashed
            return {now, late: {stale: c.dataset.stale, predicted: c.dataset.predicted},
                    capped: s.predictBox({box: [0, 0, 10, 10], t: 0}, {box: [10, 0, 20, 10], t: 100}, 1e6),
                    first: s.predictBox(null, {box: [1, 2, 3, 4], t: 5}, 99)};
        """)
    finally:
        driver.quit()
    assert got["now"] == {"at140": 255, "at120": 0, "predicted": "1", "stale": "0"}, got
    assert got["late"] == {"stale": "1", "predicted": "1"} and got["first"] == [1, 2, 3, 4], got
    assert got["capped"] == [10 + 0.1 * 1000, 0, 20 + 0.1 * 1000, 10], got  # 0.1 px/ms for PREDICT_MS at most


def test_swagger_try_it_out_uploads_a_photo(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = _driver(tmp_path, DESKTOP)
    try:
        driver.get(server + "/docs")
        op = _wait(driver, lambda d: d.find_element(By.ID, "operations-default-analyze_v1_analyze_post"), 30,
                   "Swagger UI to render (its files come from this server)")
        op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        _wait(driver, lambda d: op.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
        select = op.find_elements(By.CSS_SELECTOR, ".opblock-section-request-body select")
        if select:
            Select(select[0]).select_by_value("multipart/form-data")
        op.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(T1)
        op.find_element(By.CSS_SELECTOR, ".execute").click()
        live = ".live-responses-table tr.response "
        status = _wait(driver, lambda d: op.find_element(By.CSS_SELECTOR, live + ".response-col_status"), 60,
                       "the response")
        assert status.text.strip().startswith("200"), status.text
        body = op.find_element(By.CSS_SELECTOR, live + ".response-col_description pre").text
        assert json.loads(body)["image"] == "t1.jpg" and len(json.loads(body)["faces"]) == 6
        assert not _csp_violations(driver)
        _full_screenshot(driver, tmp_path / "docs-1280.png")
    finally:
        driver.quit()


def test_the_page_and_docs_send_security_headers_that_chromium_enforces(server, tmp_path):
    """The page and /docs work under their Content-Security-Policy (the tests above find no violation);
    here: the headers are there, and Chromium applies them (an injected inline script does not run, the
    page cannot be framed)."""
    from selenium.webdriver.common.by import By

    for path in ("/", "/docs", "/health", "/static/app.js"):
        with urllib.request.urlopen(server + path, timeout=10) as r:
            assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"], path
    page = urllib.request.urlopen(server + "/", timeout=10).headers["Content-Security-Policy"]
    assert "script-src 'self';" in page and "blob:" in page and "unsafe-inline" not in page.split("style-src")[0]
    driver = _driver(tmp_path, DESKTOP)
    try:
        driver.get(server + "/")
        driver.execute_script("const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
                              "document.body.appendChild(s);")
        assert driver.execute_script("return window.injected") is None
        assert _csp_violations(driver)  # ... and Chromium says why
        frame = tmp_path / "frame.html"
        frame.write_text(f'<iframe id="f" src="{server}/"></iframe>')
        driver.get(frame.as_uri())
        time.sleep(1.0)
        driver.switch_to.frame(driver.find_element(By.ID, "f"))
        assert not driver.find_elements(By.ID, "file")  # refused: the frame holds no page
    finally:
        driver.quit()


def test_page_asks_for_the_api_key_once(tmp_path):
    from selenium.webdriver.common.by import By

    proc, log, url = _serve(tmp_path, {"AGEGENDER_API_KEY": "s3cret"})
    driver = _driver(tmp_path, DESKTOP)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(T1)
        from selenium.webdriver.support import expected_conditions

        prompt = _wait(driver, expected_conditions.alert_is_present(), 60, "the page to ask for the key")
        prompt.send_keys("s3cret")
        prompt.accept()
        _wait(driver, lambda d: d.find_element(By.ID, "canvas").get_attribute("data-faces") == "6", what="6 faces")
        driver.find_element(By.ID, "file").send_keys(T1)  # the key is kept: no second question
        time.sleep(2)
        assert driver.find_element(By.ID, "canvas").get_attribute("data-faces") == "6"
        assert driver.find_element(By.ID, "status").get_attribute("class") == "status"
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(30)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert text.count("POST /v1/analyze 401") == 1 and text.count("POST /v1/analyze 200") == 2, text
