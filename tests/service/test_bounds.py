"""Per-request bounds in the app: deadline, decode memory, admission, refused formats."""

from __future__ import annotations

import io
import struct
import threading
import time
import tracemalloc
import zlib

import pytest
from corpus import exif_bomb
from corpus import iccp
from corpus import jpeg_repeated_scans
from corpus import jpeg_with_segments
from corpus import png_chunk
from corpus import png_with_chunks
from corpus import png_with_exif
from corpus import tiff
from detector.app import create_app
from detector.errors import ApiError
from detector.imaging import MB
from detector.limits import Gate
from detector.limits import MemoryBudget
from detector.orientation import exif_orientation
from detector.uploads import detect_upload
from PIL import Image
from prometheus_client import REGISTRY
from svc_helpers import ALLOWED_ORIGIN
from svc_helpers import post_file

ENDPOINTS = ("/", "/api/v1/detect")


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def big(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A large image that compresses well (a gradient): small upload, 2 MP to decode."""
    return Image.linear_gradient("L").resize((width, height)).convert(mode)


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_request_past_its_deadline_gets_503_with_the_reason(service_config, url):
    app = create_app({**service_config, "request_deadline_s": 0.01})
    response = post_file(app.test_client(), url, png(big(1600, 1200)), "big.png")
    assert response.status_code == 503
    assert response.get_json()["error"].startswith("detection took longer than 0.01 s")
    assert int(response.headers["Retry-After"]) >= 1


def test_work_past_its_deadline_stops_before_inference_and_frees_its_slot(service_config):
    app = create_app({**service_config, "request_deadline_s": 0.01})
    gate: Gate = app.extensions["bounds"].gate
    inferences = (
        REGISTRY.get_sample_value("detector_inference_seconds_count", {"model": "yolov3-tiny"}) or 0
    )
    response = post_file(app.test_client(), "/api/v1/detect", png(big(1600, 1200)), "big.png")
    assert response.status_code == 503
    for _ in range(100):
        if gate.inflight == 0:
            break
        time.sleep(0.05)
    assert gate.inflight == 0
    after = REGISTRY.get_sample_value("detector_inference_seconds_count", {"model": "yolov3-tiny"})
    assert (after or 0) == inferences


def test_the_default_deadline_lets_a_normal_request_through(client, coffee_jpeg):
    """Issue 13.5: every answer in < 20 s, so the default deadline is under it."""
    assert client.application.config["DETECTOR"].request_deadline_s == 15
    assert post_file(client, "/api/v1/detect", coffee_jpeg).status_code == 200


@pytest.mark.parametrize("url", ENDPOINTS)
def test_an_image_too_costly_to_decode_is_422_naming_the_memory(service_config, url):
    app = create_app({**service_config, "decode_memory_mb": 20})
    data = png(big(2000, 1500, "RGBA"))  # RGBA + its RGB copy: ~28 MB to decode in full
    response = post_file(app.test_client(), url, data, "big.png")
    if url == "/":
        assert response.status_code == 422
        assert "more than the 20 MB an upload may use" in response.get_json()["error"]
    else:  # decoded reduced to what the network needs: fits
        assert response.status_code == 200


def _ico() -> bytes:
    """An icon file (a PNG behind an ICO directory entry)."""
    inner = png(Image.new("RGB", (16, 16), (0, 0, 255)))
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + inner


@pytest.mark.parametrize("url", ENDPOINTS)
def test_icons_are_refused_by_name(client, url):
    response = post_file(client, url, _ico(), "favicon.ico")
    assert response.status_code == 415
    assert response.get_json()["error"].startswith("ICO (icon) files are not accepted")


def test_a_busy_service_answers_503_with_retry_after_at_once(service_config, coffee_jpeg):
    app = create_app({**service_config, "max_inflight": 1})
    gate: Gate = app.extensions["bounds"].gate
    gate.enter()
    gate.leave(2.4)  # a detection took 2.4 s: average 0.8 * 1 + 0.2 * 2.4 = 1.28 s
    gate.enter()  # one detection in progress elsewhere
    try:
        started = time.perf_counter()
        response = post_file(app.test_client(), "/api/v1/detect", coffee_jpeg)
        elapsed = time.perf_counter() - started
    finally:
        gate.leave(1.0)
    assert response.status_code == 503
    assert "busy" in response.get_json()["error"]
    assert response.headers["Retry-After"] == "2"  # 1.28 s rounded up
    assert elapsed < 1.0
    assert post_file(app.test_client(), "/api/v1/detect", coffee_jpeg).status_code == 200
    assert gate.inflight == 0


def test_the_gate_counts_across_shared_counters():
    counts = [0, 0, 0]
    first, second = Gate(2, counts, 0), Gate(2, counts, 1)
    first.enter()
    second.enter()
    with pytest.raises(ApiError) as busy:
        first.enter()
    assert busy.value.status == 503 and busy.value.retry_after >= 1
    counts[1] = 0  # the master zeroes a dead worker's slot
    first.enter()
    assert counts == [2, 0, 0]


def test_the_memory_budget_makes_a_large_decode_wait_for_another():
    budget = MemoryBudget(100)
    budget.reserve(70, time.monotonic() + 1)
    got = []

    def second():
        budget.reserve(60, time.monotonic() + 5)
        got.append(time.monotonic())

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.2)
    assert not got  # 70 + 60 > 100: it waits
    released = time.monotonic()
    budget.release(70)
    waiter.join(5)
    assert got and got[0] >= released
    with pytest.raises(ApiError, match="busy decoding"):
        budget.reserve(50, time.monotonic() + 0.1)


def test_a_page_on_another_origin_can_read_retry_after(client):
    """The upload page waits Retry-After before retrying a 503/429: CORS must expose it."""
    response = client.get("/status_check", headers={"Origin": ALLOWED_ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    exposed = [h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")]
    assert "Retry-After" in exposed


# Costs a file's structure hides from its pixel count (issue 13.5, attacker's-side audit). The
# 50 MP versions of these files are in corpus.py, measured on a live worker by test_bounds_live.


def test_an_oversized_exif_block_is_not_unpacked():
    """One orientation tag of 2 million values: Pillow would unpack ~80 MB of Python ints."""
    image = Image.open(io.BytesIO(png_with_exif(exif_bomb(2_000_000))))
    tracemalloc.start()
    try:
        orientation = exif_orientation(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert orientation == 1
    assert peak < 16 * MB, f"reading the orientation took {peak / MB:.0f} MB"


def test_a_small_exif_block_still_gives_the_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png(Image.new("RGB", (40, 20)))
    image = Image.open(io.BytesIO(png_with_exif(exif.tobytes())))
    assert exif_orientation(image) == 6
    assert exif_orientation(Image.open(io.BytesIO(data))) == 1


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_tiff_with_too_many_strips_is_422_before_pillow_opens_it(service_config, url):
    """Pillow builds a Python tile per strip while opening: 300,000 strips took ~115 MB."""
    app = create_app({**service_config, "max_upload_bytes": 4 * MB})
    data = tiff(8, 300_000, (8,), ("strip", 1), bytes(8), compression=1)
    response = post_file(app.test_client(), url, data, "strips.tif")
    assert response.status_code == 422
    assert response.get_json()["error"].startswith("TIFF tag 273 holds 300000 values")


def test_a_tiff_strip_buffer_counts_in_the_decode_cost(service_config):
    """libtiff decodes a whole strip into a buffer: one strip of 64-bit RGBA is 8 bytes a pixel."""
    app = create_app({**service_config, "decode_memory_mb": 16})
    size = 1000 * 1000 * 8
    one_strip = tiff(1000, 1000, (16,) * 4, ("strip", 1000), zlib.compress(bytes(size)), extra=2)
    strips = tiff(1000, 1000, (16,) * 4, ("strip", 1), zlib.compress(bytes(8000)), extra=2)
    refused = post_file(app.test_client(), "/", one_strip, "one-strip.tif")
    assert refused.status_code == 422
    assert "needs about 19 MB, more than the 16 MB" in refused.get_json()["error"]
    assert post_file(app.test_client(), "/", strips, "strips.tif").status_code == 200


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_tiff_tile_larger_than_its_image_counts_in_the_decode_cost(service_config, url):
    """A 64x64 image in one 4096x4096 tile: libtiff fills a 48 MB buffer from 49 KB."""
    app = create_app({**service_config, "decode_memory_mb": 40})
    tile = zlib.compress(bytes(4096 * 4096 * 3), 9)
    data = tiff(64, 64, (8,) * 3, ("tile", 4096, 4096), tile)
    response = post_file(app.test_client(), url, data, "tile.tif")
    assert response.status_code == 422
    assert "more than the 40 MB an upload may use" in response.get_json()["error"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_jpeg_with_thousands_of_scans_is_422_at_once(client, url):
    """3,306 scans of 1 MP: libjpeg walks every block once per scan (~2.5 s here)."""
    data = jpeg_repeated_scans(1000, 1000, 3300)
    started = time.perf_counter()
    response = post_file(client, url, data, "scans.jpg")
    elapsed = time.perf_counter() - started
    assert response.status_code == 422, f"{response.status_code} after {elapsed:.1f} s"
    assert "JPEG has 3306 scans" in response.get_json()["error"]
    assert post_file(client, url, jpeg_repeated_scans(1000, 1000, 20), "ok.jpg").status_code == 200


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_jpeg_with_too_many_marker_segments_is_422_before_pillow_opens_it(client, url):
    """Pillow keeps every APPn segment as a Python tuple: 5 million (20 MB) took 700 MB, 7 s."""
    data = jpeg_with_segments(b"\xff\xe1\x00\x02", 70_000)
    response = post_file(client, url, data, "segments.jpg")
    assert response.status_code == 422
    assert "more than 65536 marker segments" in response.get_json()["error"]
    chunks = png_with_chunks(png_chunk(b"tEXt", b"k\0v"), 70_000)  # PNG: every chunk but IDAT
    response = post_file(client, url, chunks, "chunks.png")
    assert response.status_code == 422
    assert "more than 65536 metadata chunks" in response.get_json()["error"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_png_with_many_compressed_chunks_is_422_before_pillow_inflates_them(client, url):
    """Pillow inflates every iCCP chunk (up to 1 MiB each): 19,000 of them took 20 s."""
    data = png_with_chunks(iccp(1 << 20), 65)
    response = post_file(client, url, data, "iccp.png")
    assert response.status_code == 422
    assert "has 65 compressed metadata chunks" in response.get_json()["error"]


def test_metadata_of_real_files_is_not_refused(client):
    """An ICC profile of 300 KB (TIFF: 300,000 BYTE values; JPEG: 5 APP2 segments) is fine."""
    profile = bytes(300_000)
    photo = big(640, 480)
    for fmt in ("TIFF", "JPEG", "PNG"):
        buf = io.BytesIO()
        photo.save(buf, format=fmt, icc_profile=profile)
        response = post_file(client, "/api/v1/detect", buf.getvalue(), f"icc.{fmt.lower()}")
        assert response.status_code == 200, (fmt, response.get_json())


def test_a_decoded_image_keeps_its_bytes_in_the_budget_until_it_is_freed(service_config):
    """The drawn reply holds a full-size image after the detection has left the admission gate:
    another upload must not decode into that memory meanwhile (3 clients: +548 MB, one worker)."""
    app = create_app({**service_config, "decode_memory_mb": 30, "request_deadline_s": 1})
    budget: MemoryBudget = app.extensions["bounds"].budget
    data = png(big(2000, 1500))  # RGB: 12 MB in Pillow; decoding it for / reserves ~28 MB
    form = {"file": (io.BytesIO(data), "a.png")}
    with app.test_request_context("/", method="POST", data=form):
        first = detect_upload()
    assert budget.used == 4 * 2000 * 1500
    second = post_file(app.test_client(), "/", data, "b.png")
    assert second.status_code == 503  # its decode waited for the memory until the deadline
    assert second.get_json()["error"] and int(second.headers["Retry-After"]) >= 1
    time.sleep(0.2)  # the waiting job gives up at the same deadline, taking nothing
    assert budget.used == 4 * 2000 * 1500
    del first
    assert budget.used == 0
    assert post_file(app.test_client(), "/", data, "b.png").status_code == 200
    assert budget.used == 0
