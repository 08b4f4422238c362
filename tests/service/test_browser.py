"""The upload page in a real browser (Debian chromium + chromedriver) against `detector serve`."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from detector import sizing
from nginx_live import LiveNginx
from nginx_live import prepare_site
from PIL import Image
from svc_helpers import ROOT
from svc_helpers import SHARED_TESTDATA
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer

pytestmark = pytest.mark.slow
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--window-size=430,1600",
)


@pytest.fixture
def browser():
    """A headless chromium driven by the Debian chromedriver (no driver download)."""
    yield from _chromium()


@pytest.fixture
def tls_browser():
    """The same browser, accepting the self-signed certificate of the test's nginx."""
    yield from _chromium("--ignore-certificate-errors")


def _chromium(*extra_flags: str):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra) missing")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} missing: apt-get install chromium chromium-driver (make setup)")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never reach the network
    profile = tempfile.mkdtemp(prefix="detector-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + extra_flags:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def server():
    """A live server with one worker; each test stops it itself (by PID) or at teardown."""
    require_weights()
    ARTIFACTS.mkdir(exist_ok=True)
    live = LiveServer(workers=1, threads=2, log_path=ARTIFACTS / "browser-server.log").start()
    yield live
    live.stop()


def wait_for(driver, condition, timeout: float, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def upload(driver, server, path: Path) -> dict:
    """Open the page, upload `path`, wait for the result; return what the page shows."""
    from selenium.webdriver.common.by import By

    driver.get(server.url + "/")
    state = driver.find_element(By.ID, "backend-state")
    wait_for(driver, lambda d: state.get_attribute("data-state") == "online", 15, "footer online")
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    preview = driver.find_element(By.ID, "preview")
    wait_for(
        driver,
        lambda d: (
            preview.get_attribute("data-state") in ("result",)
            or driver.find_element(By.ID, "error").is_displayed()
        ),
        60,
        "result image",
    )
    return {
        "state": preview.get_attribute("data-state"),
        "src": preview.get_attribute("src"),
        "width": driver.execute_script("return arguments[0].naturalWidth", preview),
        "labels": [
            li.get_attribute("data-label")
            for li in driver.find_elements(By.CSS_SELECTOR, "#detections li.detection")
        ],
        "error": driver.find_element(By.ID, "error").text,
        "status": driver.find_element(By.ID, "status").text,
    }


def check_offline_after_stop(driver, server, screenshot: str) -> None:
    from selenium.webdriver.common.by import By

    server.stop()
    state = driver.find_element(By.ID, "backend-state")
    wait_for(driver, lambda d: state.get_attribute("data-state") == "offline", 20, "footer offline")
    assert "offline" in state.text
    driver.save_screenshot(str(ARTIFACTS / screenshot))


def test_dog_photo_in_the_browser(browser, server):
    dog = SHARED_TESTDATA / "dog.jpg"
    if not dog.is_file():
        pytest.skip(f"shared test data absent ({dog}); test_sample_photo_in_the_browser runs")
    shown = upload(browser, server, dog)
    assert shown["error"] == ""
    assert shown["state"] == "result"
    # The server's data URL (with its space after "base64,") replaced the FileReader preview.
    assert shown["src"].startswith("data:image/jpeg;base64, ")
    assert shown["width"] == 768
    assert {"dog", "bicycle", "car"} <= set(shown["labels"])
    assert shown["status"] == ""  # "Processing..." is gone
    browser.save_screenshot(str(ARTIFACTS / "browser-dog.png"))
    check_offline_after_stop(browser, server, "browser-dog-offline.png")


def test_sample_photo_in_the_browser_is_resized_to_1280(browser, server, tmp_path):
    big = sample_image("coffee").resize((2400, 1600))
    path = tmp_path / "coffee-big.jpg"
    path.write_bytes(jpeg_bytes(big))
    shown = upload(browser, server, path)
    assert shown["error"] == ""
    assert shown["src"].startswith("data:image/jpeg;base64, ")
    assert shown["width"] == 1280  # resized in the page before the upload
    assert "cup" in shown["labels"]
    browser.save_screenshot(str(ARTIFACTS / "browser-coffee.png"))
    check_offline_after_stop(browser, server, "browser-coffee-offline.png")


@pytest.fixture
def small_limit_server():
    """A live server that refuses uploads over 300 kB."""
    require_weights()
    ARTIFACTS.mkdir(exist_ok=True)
    live = LiveServer(
        workers=1,
        threads=2,
        env={"DETECTOR_MAX_UPLOAD_BYTES": "300000"},
        log_path=ARTIFACTS / "browser-limit-server.log",
    ).start()
    yield live
    live.stop()


def test_errors_get_clear_messages(browser, small_limit_server, tmp_path):
    server = small_limit_server
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    shown = upload(browser, server, text)
    assert "not an image" in shown["error"]
    assert shown["state"] != "result"
    browser.save_screenshot(str(ARTIFACTS / "browser-error.png"))

    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (900, 900, 3), np.uint8))
    big = tmp_path / "noise.png"
    noise.save(big)  # under 1280 px: sent as is, about 2.4 MB
    shown = upload(browser, server, big)
    assert "too large" in shown["error"]

    server.stop()
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "file-input").send_keys(str(text))
    error = browser.find_element(By.ID, "error")
    wait_for(browser, lambda d: "offline or unreachable" in error.text, 20, "offline message")


def test_drag_and_drop_uploads(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    payload = base64.b64encode(jpeg_bytes(sample_image("coffee"))).decode()
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "coffee.jpg", {type: "image/jpeg"}));
        const zone = document.getElementById("drop-zone");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        """,
        payload,
    )
    preview = browser.find_element(By.ID, "preview")
    wait_for(browser, lambda d: preview.get_attribute("data-state") == "result", 60, "result")
    labels = [
        li.get_attribute("data-label")
        for li in browser.find_elements(By.CSS_SELECTOR, "#detections li.detection")
    ]
    assert "cup" in labels


class Holder(threading.Thread):
    """Keep one of the connections nginx passes (max_conns) busy on a stopped worker."""

    def __init__(self, nginx: LiveNginx, data: bytes) -> None:
        super().__init__(daemon=True)
        self.nginx, self.data = nginx, data
        self.since = time.monotonic()
        self.answer = None

    def run(self) -> None:
        with self.nginx.client(timeout=120) as client:
            while True:  # 503 while a footer poll held the slot (it aborts after 2.5 s)
                self.since = time.monotonic()
                answer = client.post(
                    self.nginx.url + "/api/v1/detect", files={"file": ("c.jpg", self.data)}
                )
                if answer.status_code != 503:
                    self.answer = answer
                    return
                time.sleep(0.3)

    def wait_held(self, seconds: float = 3.0, timeout: float = 60) -> None:
        """Wait until one attempt has waited `seconds`: longer than any poll, so it is upstream."""
        deadline = time.monotonic() + timeout
        while time.monotonic() - self.since < seconds:
            assert self.answer is None and time.monotonic() < deadline, "holder not held"
            time.sleep(0.1)


def test_a_busy_server_is_retried_after_its_retry_after(tls_browser, tmp_path):
    """Real nginx with max_conns=2 in front of one stopped worker (SIGSTOP by PID): the page
    counts down Retry-After, retries at most 3 times, then says busy; once the worker runs
    again, a retry gets the result."""
    from selenium.webdriver.common.by import By

    require_weights()
    sized = sizing.size(2, 8000, "yolov3-tiny", workers=1, worker_threads=2)  # max_conns 2
    site = prepare_site(tmp_path, sized.__dict__.copy(), nginx_quiet_paths=[])
    data = jpeg_bytes(sample_image("coffee"))
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(data)
    again = tmp_path / "coffee-again.jpg"  # choosing the same file twice fires no change event
    again.write_bytes(data)
    driver = tls_browser
    with LiveServer(workers=1, threads=2, uds=site["sockets"] / "blue.sock") as live:
        with LiveNginx(site["dir"], site["port"], site["cert"]) as nginx:
            driver.get(nginx.url + "/")
            state = driver.find_element(By.ID, "backend-state")
            wait_for(driver, lambda d: state.get_attribute("data-state") == "online", 15, "online")
            status = driver.find_element(By.ID, "status")
            error = driver.find_element(By.ID, "error")
            (worker,) = live.worker_pids()
            holders = [Holder(nginx, data) for _ in range(sized.max_conns)]
            os.kill(worker, signal.SIGSTOP)
            try:
                for holder in holders:
                    holder.start()
                for holder in holders:
                    holder.wait_held()
                driver.find_element(By.ID, "file-input").send_keys(str(photo))
                wait_for(driver, lambda d: "retrying in" in status.text, 20, "busy countdown")
                first = status.text
                wait_for(driver, lambda d: error.is_displayed(), 30, "busy message")
                gave_up = error.text
                driver.find_element(By.ID, "file-input").send_keys(str(again))
                wait_for(driver, lambda d: "retrying in" in status.text, 20, "second countdown")
            finally:
                os.kill(worker, signal.SIGCONT)
            for holder in holders:
                holder.join(60)
            preview = driver.find_element(By.ID, "preview")
            wait_for(
                driver, lambda d: preview.get_attribute("data-state") == "result", 60, "result"
            )
            labels = [
                li.get_attribute("data-label")
                for li in driver.find_elements(By.CSS_SELECTOR, "#detections li.detection")
            ]
            driver.save_screenshot(str(ARTIFACTS / "browser-busy-retried.png"))
        access = (site["dir"] / "logs" / "detector.access.log").read_text()
    assert first == "Server busy, retrying in 1 s (try 1 of 3)..."
    assert "busy or restarting (503)" in gave_up
    assert "service unavailable or busy" in gave_up  # nginx's JSON error, shown to the user
    page_posts = [line for line in access.splitlines() if '"POST /?detections=1 ' in line]
    statuses = [line.split('" ')[1].split()[0] for line in page_posts]
    assert statuses[:4] == ["503"] * 4  # the first upload: 1 try + 3 retries, then it gave up
    assert statuses[-1] == "200" and set(statuses[4:-1]) <= {"503"}  # the second: retried
    assert [h.answer.status_code for h in holders] == [200] * sized.max_conns
    assert error.text == "" or not error.is_displayed()
    assert "cup" in labels
