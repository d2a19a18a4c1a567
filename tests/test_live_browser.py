"""The live view in a real browser (Debian's headless Chromium through chromedriver): the live page
plays the H.264 stream through Media Source Extensions, the index shows every source, and the MP4
stream is what MSE wants (ftyp/moov, then moof fragments PyAV decodes)."""
from __future__ import annotations

import http.client
import io
import json
import shutil
import time

import av
import cv2
import numpy as np
import pytest
from helpers import RECORDER, serving, wait_until

from streamer.outputs.fmp4 import top_level_boxes

pytestmark = pytest.mark.system  # every test here starts a process or a server

TOKEN = "browser-test-token-012345"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver "
                                   "(apt-get install chromium chromium-driver; .ci/run installs them)")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    uri = RECORDER[1]
    sources = f"sources=[{{uri: '{uri}', id: cam0}}, {{uri: '{uri.replace('seed=7', 'seed=8')}', id: cam1}}]"
    events = tmp_path_factory.mktemp("events")
    with serving("--set", sources, "--set", "events.enabled=true", "--set", f"events.dir={events}", token=TOKEN) as process:
        yield process


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                     "--autoplay-policy=no-user-gesture-required", "--window-size=1000,700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)  # no Selenium Manager: offline
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)


def test_the_mp4_stream_is_an_init_segment_then_fragments_that_decode(daemon):
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    connection.request("GET", "/live/cam0.mp4", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "video/mp4"
    assert response.getheader("X-Codec").startswith("avc1.42")  # Constrained Baseline: every browser plays it
    data, deadline = b"", time.monotonic() + 15
    while time.monotonic() < deadline and sum(kind == b"moof" for kind, _ in top_level_boxes(data)[0]) < 6:
        data += response.read1(65536)
    connection.close()
    kinds = [kind for kind, _ in top_level_boxes(data)[0]]
    assert kinds[:2] == [b"ftyp", b"moov"] and kinds[2:12:2] == [b"moof"] * 5 and kinds[3:13:2] == [b"mdat"] * 5
    frames = list(av.open(io.BytesIO(data)).decode(video=0))
    assert len(frames) >= 5 and (frames[0].width, frames[0].height) == (160, 96) and frames[0].key_frame


@needs_browser
def test_the_live_page_plays_the_video_and_the_index_shows_every_source(daemon, browser):
    base = f"http://127.0.0.1:{daemon.port}"
    opened = time.monotonic()
    browser.get(f"{base}/live/cam0?token={TOKEN}")  # the token becomes a cookie; the page reloads without it
    assert browser.current_url == f"{base}/live/cam0"
    wait_until(lambda: browser.execute_script("return window.live.firstPicture") is not None, timeout=20, every=0.1,
               what=lambda: f"a first picture: {browser.execute_script('return window.live')}")
    first_picture_s = time.monotonic() - opened
    live = browser.execute_script("return window.live")
    assert live["player"] == "mse" and live["error"] is None, live
    played = browser.execute_script("return document.getElementById('video').currentTime")
    before = screenshot(browser)
    time.sleep(1.5)
    after = screenshot(browser)
    assert browser.execute_script("return document.getElementById('video').currentTime") > played + 0.5, "the video plays"
    box = browser.execute_script("const r = document.getElementById('video').getBoundingClientRect();"
                                 "return [r.x, r.y, r.width, r.height].map(Math.round)")
    x, y, w, h = box
    assert w > 300 and h > 150, box
    video_before, video_after = before[y:y + h, x:x + w], after[y:y + h, x:x + w]
    assert video_after.std() > 20, "a picture, not a blank"
    assert np.abs(video_after.astype(int) - video_before).mean() > 1, "the picture changes"
    delay = browser.execute_script("return window.live.delay")
    assert delay is not None and 0 < delay < 30, delay
    print(f"first picture {first_picture_s:.2f} s after opening, shown frame captured {delay:.2f} s before")  # for the record

    browser.get(f"{base}/")
    wait_until(lambda: len(browser.find_elements("css selector", "a.source img[src]")) == 2, timeout=10, every=0.2,
               what="both sources' thumbnails")
    names = [element.text for element in browser.find_elements("css selector", "a.source .name")]
    assert names == ["cam0", "cam1"]
    states = {element.text for element in browser.find_elements("css selector", "a.source .state")}
    assert states == {"streaming"}
    loaded = browser.execute_script("return [...document.querySelectorAll('a.source img')].map(i => i.naturalWidth)")
    assert loaded == [160, 160], "both thumbnails decoded"
    assert json.loads(browser.execute_script("return JSON.stringify(document.body.innerText)")).count("fps") == 2


@needs_browser
def test_the_live_page_lists_the_sources_latest_events_with_their_snapshots(daemon, browser):
    base = f"http://127.0.0.1:{daemon.port}"
    browser.get(f"{base}/live/cam1?token={TOKEN}")
    pictured = "[...document.querySelectorAll('#events li img')].filter(i => i.complete && i.naturalWidth > 0).length"
    wait_until(lambda: browser.execute_script(f"return {pictured}") > 0, timeout=60, every=0.5,
               what=lambda: f"an event with its thumbnail: {browser.execute_script('return document.body.innerText')}")
    item = browser.find_elements("css selector", "#events li")[0]
    shown = {element.get_attribute("data-id") for element in browser.find_elements("css selector", "#events li")}
    listed = json.loads(browser.execute_script(
        "const r = new XMLHttpRequest(); r.open('GET', '../api/events?source=cam1&limit=500', false); r.send(); return r.responseText"))
    assert shown <= {e["id"] for e in listed["events"] if e["source"] == "cam1"}, "this source's events only"
    assert any(word in item.text for word in ("track", "crossed", "entered", "left", "source")), item.text
    thumbnail = browser.execute_script("const i = document.querySelector('#events li img'); return [i.naturalWidth, i.naturalHeight]")
    assert min(thumbnail) >= 16, "the crop decoded"
