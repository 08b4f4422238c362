"""The upload page in a real browser (Debian chromium + chromedriver) against `detector serve`."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
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
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra) missing")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} missing: apt-get install chromium chromium-driver (make setup)")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never reach the network
    profile = tempfile.mkdtemp(prefix="detector-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
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
