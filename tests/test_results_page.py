"""Tests for utils/outputs/page.py and maps.py (the page and the per-image maps): the page's data and escaping, the
per-image PNGs, and the page itself in headless Chromium driven by Playwright (skipped without pytest-playwright or a
chromium binary): a mouse drag on the slider must change the NG count and the verdict colours exactly as the scores
say."""
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from utils.outputs.maps import (FULL_SCALE, OVERLAY_ALPHA, defect_mask, encode_png, map_to_16bit, mask_from_16bit,
                                overlay)
from utils.outputs.page import (PageRow, json_for_script, readable, relative_url, render_page, thumb_path,
                                write_results_page, write_thumbnail)

ODD_NAME = os.fsdecode(b"caf\xe9 #1 100%.png")  # not UTF-8, and '#' / '%' that a URL must escape
SCRIPT_NAME = "crack/</script><script>alert(1)</script>.png"
DATA_RE = re.compile(r'<script type="application/json" id="page-data">(.*?)</script>', re.S)


def blob_map(h=32, w=48, peak=0.9):
    yy, xx = np.mgrid[:h, :w]
    return (peak * np.exp(-((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / 40.0)).astype(np.float32)  # (h, w)


def synthetic_image(h, w, seed):
    rng = np.random.default_rng(seed)
    base = (rng.random((4, 4, 3)) * 200 + 30).astype(np.uint8)
    return cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)  # (h, w, 3) RGB uint8


def make_rows(folder, names, scores, types=None, labels=None):
    """PageRows with real overlay thumbnails and 'pictures' (the overlay itself, as a PNG) under `folder`."""
    rows = []
    for i, (name, score) in enumerate(zip(names, scores)):
        amap = blob_map(peak=min(1.0, score + 0.1))
        over = overlay(synthetic_image(64, 96, i), amap, 0.5)
        picture = Path(folder) / "pictures" / f"{name}.png"
        picture.parent.mkdir(parents=True, exist_ok=True)
        picture.write_bytes(encode_png(over))
        rows.append(PageRow(name, float(score), "NG" if score > 0.5 else "OK", write_thumbnail(folder, name, over),
                            picture, None if types is None else types[i], None if labels is None else labels[i]))
    return rows


@pytest.fixture
def five(tmp_path):
    names = ["good/000.png", "good/001.png", SCRIPT_NAME, ODD_NAME, "crack/004.png"]
    scores = [0.12, 0.31, 0.93, 0.58, 0.47]
    types = ["good", "good", "crack", "crack", "crack"]
    labels = ["good", "good", "defect", "defect", "defect"]
    return tmp_path, make_rows(tmp_path, names, scores, types, labels), scores


def page_json(text):
    return json.loads(DATA_RE.search(text).group(1))


def test_page_embeds_every_row_as_parsable_json(five):
    folder, rows, scores = five
    path = write_results_page(folder, rows, 0.5, title="MPDD metal_plate")
    text = path.read_text(encoding="utf-8")
    data = page_json(text)
    assert [r["score"] for r in data["rows"]] == scores
    assert data["threshold"] == 0.5 and data["low"] == 0.12 and data["high"] == 0.93
    assert data["has_labels"] and data["has_types"]
    assert [r["label"] for r in data["rows"]] == ["good", "good", "defect", "defect", "defect"]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".draem-")] == []  # atomic: no temp left
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network


def test_names_are_escaped_in_the_page(five):
    folder, rows, _ = five
    text = render_page(rows, folder, 0.5, title="<b>title</b> {{DATA}}")
    assert "<script>alert" not in text and text.count("</script>") == 2  # the data block and the page's script
    assert "<title>&lt;b&gt;title&lt;/b&gt; {{DATA}}</title>" in text  # escaped, and no placeholder re-expanded
    data = page_json(text)
    assert data["rows"][2]["name"] == SCRIPT_NAME
    assert data["rows"][3]["name"] == "caf\\xe9 #1 100%.png"
    text.encode("utf-8")  # no lone surrogate left anywhere
    assert json.loads(json_for_script({"s": "</script><!--&"})) == {"s": "</script><!--&"}


def test_links_keep_the_raw_bytes_of_a_name(tmp_path):
    assert readable(ODD_NAME) == "caf\\xe9 #1 100%.png"
    assert relative_url(tmp_path / "thumbs" / ODD_NAME, tmp_path) == "thumbs/caf%E9%20%231%20100%25.png"
    assert thumb_path(tmp_path, "a/b.png") == tmp_path / "thumbs" / "a" / "b.png.jpg"


def test_thumbnail_is_a_small_jpeg(tmp_path):
    path = write_thumbnail(tmp_path, ODD_NAME, synthetic_image(300, 600, 0))
    thumb = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)  # cv2.imread crashes on it
    assert path.name == ODD_NAME + ".jpg" and thumb.shape == (80, 160, 3)


def test_page_without_a_stored_threshold(tmp_path):
    rows = make_rows(tmp_path, ["a.png", "b.png"], [0.2, 0.2])
    data = page_json(render_page(rows, tmp_path, None))
    assert data["threshold"] is None and data["low"] < 0.2 < data["high"] and not data["has_labels"]


def test_map_png_round_trip_at_the_input_size(tmp_path):
    amap = blob_map(32, 48)
    map16 = map_to_16bit(amap, 64, 96)
    path = tmp_path / "map.png"
    path.write_bytes(encode_png(map16))
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (64, 96)
    np.testing.assert_array_equal(back, map16)
    resized = cv2.resize(amap, (96, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(back / FULL_SCALE, resized, atol=0.5 / FULL_SCALE + 1e-6)
    ends = map_to_16bit(np.array([[-0.2, 0.0], [1.0, 1.7]]), 2, 2)
    assert ends.tolist() == [[0, 0], [65535, 65535]]


def test_mask_is_the_map_above_the_threshold(tmp_path):
    amap = blob_map(32, 48)
    mask = defect_mask(amap, 0.4, 64, 96)
    path = tmp_path / "mask.png"
    path.write_bytes(encode_png(mask))
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and back.shape == (64, 96) and set(np.unique(back)) == {0, 255}
    map16 = map_to_16bit(amap, 64, 96)
    np.testing.assert_array_equal(back == 255, map16 / 65535 > 0.4)
    assert mask_from_16bit(map16, 1.0).max() == 0 and mask_from_16bit(map16, -0.1).min() == 255


def test_overlay_colours_and_outline():
    image = synthetic_image(64, 96, 0)
    amap = blob_map(32, 48)
    plain = overlay(image, amap)
    map01 = map_to_16bit(amap, 64, 96) / FULL_SCALE
    heat = np.array(matplotlib.colormaps["jet"](map01[0, 0])[:3])
    expected = np.rint(((1 - OVERLAY_ALPHA) * image[0, 0] / 255 + OVERLAY_ALPHA * heat) * 255)
    np.testing.assert_allclose(plain[0, 0], expected, atol=1)  # float32 vs float64 rounding
    outlined = overlay(image, amap, 0.4)
    red = np.all(outlined == (255, 0, 0), axis=2)
    mask = defect_mask(amap, 0.4, 64, 96) > 0
    assert plain.shape == outlined.shape == (64, 96, 3) and red.any() and not np.all(plain == (255, 0, 0), 2).any()
    assert mask[red].all()  # the red line runs along the inside of the mask's edge
    np.testing.assert_array_equal(overlay(image, amap, 0.95), plain)  # nothing above the threshold: no outline


# --- the page in a real browser: Playwright (pytest-playwright) on the system's Chromium -----------------------

def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, on the Chromium that .ci/run installs with apt: Playwright's own
    browsers are never downloaded. No sandbox (Playwright's default, stated): CI runs as root."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary found (Debian: apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": binary, "chromium_sandbox": False}


@pytest.fixture(scope="session")
def base_url():
    """No server: the pages open from file:// addresses. (Also spares pytest-playwright's fallback `base_url`, a
    session fixture written as a method, which pytest 9 warns about.)"""
    return None


@pytest.fixture
def tab(request):
    """pytest-playwright's `page`, 1280x900; looked up here so that the test skips when the plugin is absent."""
    pytest.importorskip("pytest_playwright", reason="pytest-playwright is not installed (requirements-test.txt)")
    if not request.config.pluginmanager.has_plugin("playwright"):
        pytest.skip("the pytest-playwright plugin is not loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD or -p no:playwright)")
    page = request.getfixturevalue("page")
    page.set_viewport_size({"width": 1280, "height": 900})
    return page


def open_page(tab, url):
    tab.goto(url)
    tab.wait_for_function("document.body.dataset.ready === '1'")  # the page's script has drawn the rows


def wait_for_images(tab):
    """Until the (lazy) thumbnails in view have loaded or failed."""
    tab.evaluate("() => Promise.all([...document.images].filter(i => { const r = i.getBoundingClientRect(); "
                 "return r.bottom > 0 && r.top < innerHeight; }).map(i => i.decode().catch(() => 0)))")


def drag(tab, x0, x1, y):
    """A real mouse drag (press, moves, release), as a user moves the slider's knob."""
    tab.mouse.move(x0, y)
    tab.mouse.down()
    tab.mouse.move(x1, y, steps=10)
    tab.mouse.up()


STATE_JS = """() => {
  const trs = [...document.querySelectorAll('#rows tr')];
  return {value: Number(document.getElementById('threshold').value),
          ng: Number(document.getElementById('ng-count').textContent),
          rates: document.getElementById('rates').textContent,
          rows: trs.map(tr => ({score: Number(tr.querySelector('.score').textContent), cls: tr.className,
                                verdict: tr.querySelector('.verdict').textContent,
                                label: tr.querySelector('.label').textContent,
                                colour: getComputedStyle(tr.querySelector('.verdict')).backgroundColor,
                                thumb: tr.querySelector('img').naturalWidth}))};
}"""
SLIDER_JS = "() => { const r = document.getElementById('threshold').getBoundingClientRect(); " \
            "return [r.left, r.width, r.top + r.height / 2]; }"
RGB = {"NG": "rgb(255, 65, 54)", "OK": "rgb(46, 204, 64)"}  # utils/outputs/picture.py's COLOR_NG, COLOR_OK


def check_verdicts(state, scores, threshold):
    assert state["ng"] == sum(s > threshold for s in scores)
    for row in state["rows"]:
        verdict = "NG" if row["score"] > threshold + 5e-5 else "OK" if row["score"] < threshold - 5e-5 else None
        if verdict is not None:  # (the page shows scores to 4 decimals)
            assert (row["verdict"], row["cls"].split()[0], row["colour"]) == (verdict, verdict.lower(), RGB[verdict])
            if row["label"]:
                assert ("wrong" in row["cls"]) == ((verdict == "NG") != (row["label"] == "defect"))


def test_slider_recolours_verdicts_in_headless_chromium(five, tab):
    folder, rows, scores = five
    open_page(tab, write_results_page(folder, rows, 0.5).as_uri())
    wait_for_images(tab)
    state = tab.evaluate(STATE_JS)
    assert state["value"] == 0.5 and state["ng"] == 2  # starts at the stored threshold: 0.93 and 0.58
    check_verdicts(state, scores, 0.5)
    assert [r["score"] for r in state["rows"]] == sorted(scores, reverse=True)  # highest score first
    assert [r["thumb"] for r in state["rows"]] == [96] * 5  # all loaded (the non-UTF-8 name's too), not enlarged
    assert state["rates"] == "false-reject rate 0/2 (0.0%) \u00b7 recall 2/3 (66.7%)"
    left, width, y = tab.evaluate(SLIDER_JS)
    knob = left + 8 + (0.5 - 0.12) / (0.93 - 0.12) * (width - 16)
    drag(tab, knob, left + 0.2 * width, y)  # to about 0.27: 0.31 and 0.47 become NG too
    moved = tab.evaluate(STATE_JS)
    assert 0.12 < moved["value"] < 0.31 and moved["ng"] == 4
    check_verdicts(moved, scores, moved["value"])
    assert moved["rates"] == "false-reject rate 1/2 (50.0%) \u00b7 recall 3/3 (100.0%)"
    wait_for_images(tab)
    shot = cv2.imdecode(np.frombuffer(tab.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape == (900, 1280, 3) and shot.std() > 10  # something was drawn


def test_address_sets_the_threshold_and_filter_hides_rows(five, tab):
    folder, rows, scores = five
    open_page(tab, write_results_page(folder, rows, 0.5).as_uri() + "#threshold=0.9")
    state = tab.evaluate(STATE_JS)
    assert state["value"] == 0.9 and state["ng"] == 1
    check_verdicts(state, scores, 0.9)
    tab.select_option("#verdict-filter", "NG")  # as a user picks it: input and change events
    assert tab.evaluate("() => [...document.querySelectorAll('#rows tr')].filter(tr => !tr.hidden).length") == 1


def test_clicking_a_row_opens_its_picture(five, tab):
    folder, rows, _ = five
    open_page(tab, write_results_page(folder, rows, 0.5).as_uri())
    tab.locator("#rows tr .name").first.click()  # a real mouse click on the top row's name
    tab.evaluate("() => document.getElementById('viewer-img').decode().catch(() => 0)")
    opened = tab.evaluate("() => { const v = document.getElementById('viewer'), "
                          "i = document.getElementById('viewer-img'); "
                          "return [v.className, i.getAttribute('src'), i.naturalWidth]; }")
    assert opened == ["open", "pictures/crack/%3C/script%3E%3Cscript%3Ealert%281%29%3C/script%3E.png.png", 96]
