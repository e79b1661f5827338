"""review.py in a real headless browser (Debian's chromium + chromedriver, driven by Selenium).

On the pipeline's own result for the bundled example (shipped weights): open the index, open the cell,
drag a chromosome to another class with the mouse, select one (highlighted in the karyogram and the
spread), mark one as "not a chromosome" with the keyboard, flip one and undo it, save; then check the
reviewed JSON, the re-rendered karyogram and reviewed_coco.json, and fine-tune both trainers on it. On a case of
synthetic cells: sign the case off on its page and make its PDF report.

Skipped, with the reason, where Selenium, chromium or chromedriver is missing (``.ci/run`` installs
them). ``KARYO_CHROMIUM`` / ``KARYO_CHROMEDRIVER`` point at other binaries; with
``KARYO_REVIEW_SCREENSHOT=docs/review_cell.png`` the test also writes the README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from karyogram.iscn import iscn_string
from tests.review_fixtures import (
    RODS,
    pipeline_results,
    rod_mask,
    smoke_train_both,
    write_merged_cell,
    write_rods_cell,
    write_synthetic_cell,
)

CHROMIUM = os.environ.get("KARYO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KARYO_CHROMEDRIVER", "/usr/bin/chromedriver")
#: a closed network: nothing may be fetched, updated or synced
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --disable-dev-shm-usage --window-size=1600,1000"
).split()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)")
    for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            pytest.skip(f"no {what} at {path} (apt-get install chromium chromium-driver, as .ci/run does)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="karyo-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(f)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as exc:  # a broken install: say so rather than fail the suite
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium could not be started through {CHROMEDRIVER}: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory, browser) -> Path:
    """The pipeline's result for the bundled example, plus a synthetic cell (the trainers need two)."""
    out = tmp_path_factory.mktemp("review_browser") / "results"
    pipeline_results(out)
    write_synthetic_cell(out, "synthetic_46XY", seed=3)
    return out


def _serve(folder: Path):
    """The app over ``folder`` on a free port in a thread; yields its base URL."""
    from review.app import create_app, make_server

    srv = make_server(create_app(folder), 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def server(results):
    yield from _serve(results)


def _wait(driver, cond, timeout=60.0, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond(d), message=f"timed out: {what}")


def _state(driver, base: str, stem: str) -> dict:
    """The page's edits, evaluated by the server as the page does (the page's own state is not exposed)."""
    return driver.execute_async_script(
        f"const done = arguments[arguments.length - 1];fetch('{base}/api/cell/{stem}').then(r => r.json()).then(done);"
    )


def test_review_a_cell_in_the_browser(browser, server, results, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from review.app import sorted_rows
    from review.store import ResultsFolder

    d = browser
    stem = "cil_104023"
    pipe = json.loads((results / f"{stem}.json").read_text())
    labels = [c["label"] for c in pipe["chromosomes"]]

    # ---- the index: both cells, in the server's "doubt" order (lower sanity score first)
    d.get(server + "/")
    rows = d.find_elements(By.CSS_SELECTOR, "tr.cell-row")
    order = [r["stem"] for r in sorted_rows(ResultsFolder(results).index(), "doubt")]
    assert sorted(order) == sorted([stem, "synthetic_46XY"])
    assert [r.get_attribute("data-stem") for r in rows] == order
    rows = [r for r in rows if r.get_attribute("data-stem") == stem]  # the pipeline's cell from here on
    assert pipe["karyotype"] in rows[0].text and "not reviewed" in rows[0].text
    assert rows[0].find_element(By.CSS_SELECTOR, "td.flagged").text == str(
        sum(1 for c in pipe["chromosomes"] if any(f != "unassigned" for f in c["flags"]))
    )
    _wait(
        d,
        lambda d: d.execute_script(
            "const i = document.querySelector('td.thumb img'); return i.complete && i.naturalWidth > 0"
        ),
        what="thumbnail loaded",
    )
    rows[0].find_element(By.CSS_SELECTOR, "a.open").click()
    _wait(d, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="cell page ready")
    assert d.find_element(By.ID, "iscn").text == pipe["karyotype"]
    # every crop image loaded, and the spread shows one outline per chromosome
    _wait(
        d,
        lambda d: d.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"),
        what="images loaded",
    )
    assert len(d.find_elements(By.CSS_SELECTOR, "#spread-svg g.outline")) == len(labels)
    rows_k = d.find_elements(By.CSS_SELECTOR, "#karyogram .krow")
    assert [[s.find_element(By.CSS_SELECTOR, ".cname").text for s in r.find_elements(By.CSS_SELECTOR, ".slot")]
            for r in rows_k] == [["1", "2", "3", "4", "5"], ["6", "7", "8", "9", "10", "11", "12", "X"],
                                 ["13", "14", "15", "16", "17", "18"], ["19", "20", "21", "22", "Y"]]  # fmt: skip

    # ---- drag a flagged chromosome to another class with the mouse
    flagged = d.find_elements(By.CSS_SELECTOR, "#karyogram .chrom.flagged")
    assert flagged, "the example has flagged chromosomes"
    src = flagged[0]
    i = int(src.get_attribute("data-id"))
    a = labels[i]
    b = 21 if a != 21 else 20
    target = d.find_element(By.CSS_SELECTOR, f'.slot[data-class="{b}"] .cname')
    ActionChains(d).move_to_element(src).click_and_hold().move_by_offset(10, 10).move_to_element(target).pause(
        0.2
    ).release().perform()
    expected = list(labels)
    expected[i] = b
    _wait(d, lambda d: d.find_element(By.ID, "iscn").text == iscn_string(expected), what="ISCN after the move")
    assert d.find_elements(By.CSS_SELECTOR, f'.slot[data-class="{b}"] .chrom[data-id="{i}"]')
    assert d.find_element(By.ID, "count").text == str(sum(1 for k in expected if k))

    # ---- click a chromosome in the spread: it is highlighted in both views; mark it with the keyboard
    j = next(k for k in range(len(labels)) if k != i and labels[k] > 0)
    poly = d.find_element(By.CSS_SELECTOR, f'#spread-svg g.outline[data-id="{j}"] polygon')
    ActionChains(d).move_to_element(poly).click().perform()
    _wait(
        d, lambda d: d.find_elements(By.CSS_SELECTOR, f'.chrom.selected[data-id="{j}"]'), what="selected in karyogram"
    )
    assert "selected" in d.find_element(By.CSS_SELECTOR, f'#spread-svg g[data-id="{j}"]').get_attribute("class")
    assert f"#{j}" in d.find_element(By.ID, "info").text
    body = d.find_element(By.TAG_NAME, "body")
    body.send_keys("d")
    expected[j] = 0
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'#debris .chrom[data-id="{j}"]'), what="debris strip")
    _wait(d, lambda d: d.find_element(By.ID, "iscn").text == iscn_string(expected), what="ISCN after debris")

    # ---- flip one, then undo the flip (z); redo and undo again with the buttons
    body.send_keys(Keys.ARROW_RIGHT)
    body.send_keys("r")
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".chrom img.flipped"), what="flipped")
    body.send_keys("z")
    _wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, ".chrom img.flipped"), what="flip undone")
    d.find_element(By.ID, "redo").click()
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".chrom img.flipped"), what="flip redone")
    d.find_element(By.ID, "undo").click()
    _wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, ".chrom img.flipped"), what="flip undone again")
    assert d.find_element(By.ID, "iscn").text == iscn_string(expected)
    assert "unsaved" in d.find_element(By.ID, "status").text

    # ---- save (Ctrl+S)
    reviewer = d.find_element(By.ID, "reviewer")
    reviewer.clear()
    reviewer.send_keys("Dr Test")
    body.click()
    ActionChains(d).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    _wait(d, lambda d: "Saved (revision 1)" in d.find_element(By.ID, "message").text, what="saved")
    assert "unsaved" not in d.find_element(By.ID, "status").text
    shot = os.environ.get("KARYO_REVIEW_SCREENSHOT")
    if shot:
        poly = d.find_element(By.CSS_SELECTOR, f'#spread-svg g.outline[data-id="{i}"] polygon')
        ActionChains(d).move_to_element(poly).click().perform()  # the moved one, selected in both views
        time.sleep(0.3)
        d.save_screenshot(str(Path(shot)))

    # ---- the files
    rv = json.loads((results / f"{stem}.reviewed.json").read_text())
    assert [c["label"] for c in rv["chromosomes"]] == expected
    assert rv["chromosomes"][i]["pipeline_label"] == a and rv["chromosomes"][j]["not_chromosome"]
    assert rv["karyotype"] == iscn_string(expected) and rv["review"]["reviewer"] == "Dr Test"
    assert [(e["op"], e.get("id"), e["before"], e["after"]) for e in rv["review"]["edits"]] == [
        ("move", i, a, b),
        ("debris", j, False, True),
    ]
    assert all(e["at"] for e in rv["review"]["edits"])
    png = results / f"{stem}_karyogram.reviewed.png"
    assert png.stat().st_size > 10_000 and (results / f"{stem}_karyogram.reviewed.pdf").stat().st_size > 1_000
    coco = json.loads((results / "reviewed_coco.json").read_text())
    assert [im["review_stem"] for im in coco["images"]] == [stem]
    assert len(coco["annotations"]) == len(labels) - 1
    assert sorted(a_["category_id"] for a_ in coco["annotations"]) == sorted(
        k for n, k in enumerate(expected) if n != j
    )

    # ---- a second tab that loaded revision 0 cannot overwrite it
    r = _state(d, server, stem)
    assert r["review"]["revision"] == 1
    conflict = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('{server}/api/cell/{stem}/save', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},"
        "body: JSON.stringify({edits: [], base_revision: 0, reviewer: 'tab2'})}).then(r => r.json().then(j => done([r.status, j])));"
    )
    assert conflict[0] == 409 and "Dr Test" in conflict[1]["error"]

    # ---- accept the synthetic cell from its page (keyboard "a"), then fine-tune both trainers on the file
    d.get(server + "/cell/synthetic_46XY")
    _wait(d, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="second cell ready")
    _typed_name(d, "Dr Test")
    d.find_element(By.TAG_NAME, "body").send_keys("a")
    _wait(d, lambda d: d.find_element(By.ID, "confirm").is_displayed(), what="asked: flags")
    d.find_element(By.ID, "confirm-yes").click()
    _wait(d, lambda d: "Accepted and saved" in d.find_element(By.ID, "message").text, what="accepted")
    assert "1 still unassigned" in d.find_element(By.ID, "message").text  # the speck, left as it is
    coco = json.loads((results / "reviewed_coco.json").read_text())
    assert [im["review_stem"] for im in coco["images"]] == [stem, "synthetic_46XY"]
    smoke_train_both(results / "reviewed_coco.json", tmp_path / "runs")
    assert (tmp_path / "runs" / "seg" / "last.pth").is_file() and (tmp_path / "runs" / "cls" / "best.pth").is_file()


def test_keyboard_swap_drag_to_debris_and_back(browser, server, results):
    """On the synthetic cell (one chromosome 1 labelled 3, one speck of debris): keys and drags."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    stem = "synthetic_46XY"
    cell = json.loads((results / f"{stem}.json").read_text())
    ch = cell["chromosomes"]
    wrong = next(c["id"] for c in ch if "extra" in c["flags"])
    speck = next(c["id"] for c in ch if c["label"] == 0)
    four = next(c["id"] for c in ch if c["label"] == 4)
    five = next(c["id"] for c in ch if c["label"] == 5)
    d.get(f"{server}/cell/{stem}")
    _wait(d, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="cell page ready")
    body = d.find_element(By.TAG_NAME, "body")
    iscn = lambda: d.find_element(By.ID, "iscn").text  # noqa: E731

    def chrom(i):
        return d.find_element(By.CSS_SELECTOR, f'.chrom[data-id="{i}"]')

    def slot_of(i):
        return d.execute_script(
            f"const e = document.querySelector('.chrom[data-id=\"{i}\"]').closest('.drop');"
            "return e.dataset.debris ? 'debris' : e.dataset.class;"
        )

    assert iscn() == "46,XY,-1,+3"
    # type the class: 1 Enter
    chrom(wrong).click()
    body.send_keys("1", Keys.ENTER)
    _wait(d, lambda d: iscn() == "46,XY", what="moved to 1 by keys")
    assert d.find_element(By.ID, "sanity").text == "1.000" and slot_of(wrong) == "1"
    assert "flagged" not in chrom(wrong).get_attribute("class")  # a person placed it: no longer in doubt
    # swap a 4 and a 5 with s ... s, then undo with Ctrl+Z
    chrom(four).click()
    body.send_keys("s")
    chrom(five).click()
    body.send_keys("s")
    _wait(d, lambda d: slot_of(four) == "5" and slot_of(five) == "4", what="swapped")
    assert iscn() == "46,XY"
    ActionChains(d).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    _wait(d, lambda d: slot_of(four) == "4" and slot_of(five) == "5", what="swap undone")
    # drag the speck from "unassigned" onto "not a chromosome", and back
    assert slot_of(speck) == "0"
    ActionChains(d).move_to_element(chrom(speck)).click_and_hold().move_by_offset(8, 8).move_to_element(
        d.find_element(By.CSS_SELECTOR, "#debris h3")
    ).pause(0.2).release().perform()
    _wait(d, lambda d: slot_of(speck) == "debris", what="speck in debris")
    ActionChains(d).move_to_element(chrom(speck)).click_and_hold().move_by_offset(8, 8).move_to_element(
        d.find_element(By.CSS_SELECTOR, "#unassigned h3")
    ).pause(0.2).release().perform()
    _wait(d, lambda d: slot_of(speck) == "0", what="speck restored")
    # x moves to X; arrows walk the chromosomes; undo all: the fix, the drag to debris and back
    chrom(wrong).click()
    body.send_keys("x")
    _wait(d, lambda d: slot_of(wrong) == "23", what="moved to X")
    assert iscn() == "46,XXY,-1"
    body.send_keys("z")
    _wait(d, lambda d: slot_of(wrong) == "1", what="undo x")
    body.send_keys(Keys.ARROW_RIGHT)
    assert d.find_elements(By.CSS_SELECTOR, ".chrom.selected") and f"#{wrong}" not in d.find_element(By.ID, "info").text
    body.send_keys("z", "z")
    _wait(d, lambda d: slot_of(speck) == "0" and iscn() == "46,XY", what="drags undone")
    body.send_keys("z")
    _wait(d, lambda d: iscn() == "46,XY,-1,+3", what="back to the pipeline's labels")
    assert "Nothing to undo" not in d.find_element(By.ID, "message").text
    body.send_keys("z")
    _wait(d, lambda d: "Nothing to undo" in d.find_element(By.ID, "message").text, what="empty undo stack")


# ------------------------------------------------------------------------------ a folder of synthetic cells only
@pytest.fixture(scope="module")
def synth(tmp_path_factory, browser) -> Path:
    """Synthetic cells (no models needed): one per test that saves, so that the tests do not depend on each other."""
    out = tmp_path_factory.mktemp("review_browser_synth") / "results"
    for k, stem in enumerate(("reload", "signoff")):
        write_synthetic_cell(out, stem, seed=10 + k)
    write_rods_cell(out, "rods")
    write_rods_cell(out, "rods_zoom")
    return out


@pytest.fixture(scope="module")
def synth_server(synth):
    yield from _serve(synth)


def _open(d, url: str) -> None:
    d.get(url)
    _wait(d, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what=f"{url} ready")


def _typed_name(d, name: str) -> None:
    from selenium.webdriver.common.by import By

    box = d.find_element(By.ID, "reviewer")
    box.clear()
    box.send_keys(name)
    d.find_element(By.TAG_NAME, "body").click()


def test_one_undo_after_a_reload_takes_back_one_edit_and_no_stale_prompt(browser, synth_server, synth):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    ch = json.loads((synth / "reload.json").read_text())["chromosomes"]
    wrong = next(c["id"] for c in ch if "extra" in c["flags"])
    d.get(synth_server + "/")
    d.execute_script("sessionStorage.clear()")  # a name typed in an earlier test of this tab
    _open(d, f"{synth_server}/cell/reload")
    assert d.find_element(By.ID, "reviewer").get_attribute("value") == ""  # typed, never a default
    body = d.find_element(By.TAG_NAME, "body")
    iscn = lambda: d.find_element(By.ID, "iscn").text  # noqa: E731
    msg = lambda: d.find_element(By.ID, "message").text  # noqa: E731
    # digits with nothing selected: no "move to class" prompt left standing
    body.send_keys(Keys.ESCAPE, "5")
    _wait(d, lambda d: "Select a chromosome first" in msg(), what="select first")
    body.send_keys(Keys.ENTER)
    assert "move to class" not in msg() and iscn() == "46,XY,-1,+3"
    # a prompt typed for one chromosome goes when another is selected
    d.find_element(By.CSS_SELECTOR, f'.chrom[data-id="{wrong}"]').click()
    body.send_keys("5")
    _wait(d, lambda d: msg().startswith("move to class 5"), what="prompt")
    d.find_element(By.CSS_SELECTOR, '.chrom[data-id="0"]').click()
    _wait(d, lambda d: "move to class" not in msg(), what="prompt cleared")
    # two edits, saved; after a reload one z takes back the last one only
    d.find_element(By.CSS_SELECTOR, f'.chrom[data-id="{wrong}"]').click()
    body.send_keys("1", Keys.ENTER)
    _wait(d, lambda d: iscn() == "46,XY", what="moved to 1")
    body.send_keys("r")
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".chrom img.flipped"), what="flipped")
    _typed_name(d, "Dr Reload")
    ActionChains(d).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    _wait(d, lambda d: "Saved (revision 1)" in msg(), what="saved")
    _open(d, f"{synth_server}/cell/reload")
    assert d.find_elements(By.CSS_SELECTOR, ".chrom img.flipped") and iscn() == "46,XY"
    d.find_element(By.TAG_NAME, "body").send_keys("z")
    _wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, ".chrom img.flipped"), what="flip undone")
    assert iscn() == "46,XY"  # the move is still there
    d.find_element(By.TAG_NAME, "body").send_keys("z")
    _wait(d, lambda d: iscn() == "46,XY,-1,+3", what="move undone by the second z")


def test_accept_with_flags_asks_first_and_unanalysable_leaves_training_data(browser, synth_server, synth):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(synth_server + "/")
    d.execute_script("sessionStorage.clear()")  # a name typed in an earlier test of this tab
    _open(d, f"{synth_server}/cell/signoff")
    body = d.find_element(By.TAG_NAME, "body")
    msg = lambda: d.find_element(By.ID, "message").text  # noqa: E731
    dialog = lambda: d.find_element(By.ID, "confirm")  # noqa: E731
    # no name typed: nothing is saved
    body.send_keys("a")
    _wait(d, lambda d: "Type your name" in msg(), what="name first")
    _typed_name(d, "Dr Sign")
    # the cell has flagged chromosomes (a 1 called 3): accepting asks, naming why; cancel writes nothing
    d.find_element(By.TAG_NAME, "body").send_keys("a")
    _wait(d, lambda d: dialog().is_displayed(), what="asked")
    assert "2 chromosome(s) still flagged" in d.find_element(By.ID, "confirm-text").text
    d.find_element(By.ID, "confirm-no").click()
    _wait(d, lambda d: "Not accepted" in msg(), what="cancelled")
    assert not dialog().is_displayed() and not (synth / "signoff.reviewed.json").exists()
    d.find_element(By.ID, "accept").click()
    _wait(d, lambda d: dialog().is_displayed(), what="asked again")
    d.find_element(By.ID, "confirm-yes").click()
    _wait(d, lambda d: "Accepted and saved (revision 1)" in msg(), what="accepted")
    rv = json.loads((synth / "signoff.reviewed.json").read_text())
    assert rv["review"]["status"] == "accepted" and rv["review"]["reviewer"] == "Dr Sign"
    assert rv["revisions"][0]["confirmed"] == ["2 chromosome(s) still flagged"]
    stems = lambda: [im["review_stem"] for im in json.loads((synth / "reviewed_coco.json").read_text())["images"]]  # noqa: E731
    others = [s for s in stems() if s != "signoff"]  # cells saved by other tests
    assert "signoff" in stems()
    # then unanalysable, with a reason: the cell leaves the training file; both revisions are kept
    d.find_element(By.TAG_NAME, "body").send_keys("n")
    _wait(d, lambda d: dialog().is_displayed(), what="asked why")
    d.find_element(By.ID, "confirm-note").send_keys("chromosomes overlap too much")
    d.find_element(By.ID, "confirm-yes").click()
    _wait(d, lambda d: "Marked unanalysable and saved (revision 2)" in msg(), what="unanalysable")
    assert "unanalysable rev 2 by Dr Sign" in d.find_element(By.ID, "status").text
    rv = json.loads((synth / "signoff.reviewed.json").read_text())
    assert [(r["revision"], r["status"], r["reviewer"]) for r in rv["revisions"]] == [
        (1, "accepted", "Dr Sign"),
        (2, "unanalysable", "Dr Sign"),
    ]
    assert rv["review"]["note"] == "chromosomes overlap too much"
    assert stems() == others
    d.get(synth_server + "/")
    row = d.find_element(By.CSS_SELECTOR, 'tr[data-stem="signoff"]')
    assert "unanalysable" in row.text and "Dr Sign" in row.text


def _viewport(d, x, y, shape, r=None):
    """Viewport pixels of the image point (x, y) (pixel centres) on the spread as it is shown now (``r``: the
    spread's rectangle, if the caller has it)."""
    if r is None:
        r = d.execute_script(
            "const r = document.getElementById('spread-svg').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]"
        )
    return int(round(r[0] + (x + 0.5) * r[2] / shape[1])), int(round(r[1] + (y + 0.5) * r[3] / shape[0]))


def _gesture(d, points, shape=(220, 280)):
    """Drag the mouse through ``points`` (image pixels) on the spread, wherever zoom and pan have put it."""
    from selenium.webdriver.common.action_chains import ActionChains

    r = d.execute_script(
        "const r = document.getElementById('spread-svg').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]"
    )
    xy = [_viewport(d, x, y, shape, r) for x, y in points]
    ch = ActionChains(d)
    ptr = ch.w3c_actions.pointer_action
    ptr.move_to_location(*xy[0])
    ptr.pointer_down()
    for p in xy[1:]:
        ptr.move_to_location(*p)
    ptr.pointer_up()
    ch.perform()


def test_segmentation_edits_on_the_spread(browser, synth_server, synth):
    """Cut, join, draw, delete and separate a crossing on the rods cell; undo/redo; saved masks in the training file."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from review.segment import decode

    d = browser
    _open(d, f"{synth_server}/cell/rods")
    msg = lambda: d.find_element(By.ID, "message").text  # noqa: E731
    n_out = lambda: len(d.find_elements(By.CSS_SELECTOR, "#spread-svg g.outline"))  # noqa: E731
    body = lambda: d.find_element(By.TAG_NAME, "body")  # noqa: E731
    assert n_out() == 5
    # cut the lone rod across its middle: two instances where there was one
    body().send_keys("c")
    (x, y0), (_, y1) = RODS["whole"]
    _gesture(d, [(x - 14, 80), (x - 5, 80), (x + 5, 80), (x + 14, 80)])
    _wait(d, lambda d: "cut #1 into 2" in msg(), what="cut")
    assert n_out() == 6 and not d.find_elements(By.CSS_SELECTOR, '#spread-svg g[data-id="1"]')
    assert d.find_elements(By.CSS_SELECTOR, '#spread-svg g[data-id="5"]') and d.find_elements(
        By.CSS_SELECTOR, '.chrom[data-id="6"]'
    )
    # a cut that splits nothing: a clear message, nothing changes
    _gesture(d, [(x - 14, 40), (x, 40)])
    _wait(d, lambda d: "does not cut this chromosome in two" in msg(), what="cut refused")
    assert n_out() == 6
    # join the two pieces of one rod (click one, then the other)
    body().send_keys("j")
    for i in (2, 3):
        ActionChains(d).move_to_element(
            d.find_element(By.CSS_SELECTOR, f'#spread-svg g[data-id="{i}"] polygon')
        ).click().perform()
    _wait(d, lambda d: "joined #2 and #3" in msg(), what="join")
    assert n_out() == 5
    # draw a missed chromosome in an empty place
    body().send_keys("o")
    _gesture(d, [(230, 30), (245, 30), (252, 60), (245, 100), (230, 100), (226, 60), (230, 32)])
    _wait(d, lambda d: "drew a chromosome: new #8" in msg(), what="draw")
    assert n_out() == 6
    # delete it again as debris: select tool, click it, the Delete button
    body().send_keys("v")
    ActionChains(d).move_to_element(
        d.find_element(By.CSS_SELECTOR, '#spread-svg g[data-id="8"] polygon')
    ).click().perform()
    d.find_element(By.ID, "tool-delete").click()
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#debris .chrom[data-id="8"]'), what="deleted")
    # separate the crossing: a path along the horizontal rod
    body().send_keys("p")
    (ax0, ay), (ax1, _) = RODS["cross_a"]
    _gesture(d, [(ax0 - 4, ay), (60, ay), (90, ay), (120, ay), (ax1 + 4, ay)])
    _wait(d, lambda d: "separated a chromosome from #0" in msg(), what="separate")
    assert n_out() == 7
    # undo takes the separation back; redo brings it again
    body().send_keys(Keys.ESCAPE, "z")
    _wait(d, lambda d: n_out() == 6 and d.find_elements(By.CSS_SELECTOR, '#spread-svg g[data-id="0"]'), what="undone")
    ActionChains(d).key_down(Keys.SHIFT).send_keys("Z").key_up(Keys.SHIFT).perform()
    _wait(d, lambda d: n_out() == 7, what="redone")
    _typed_name(d, "Dr Cut")
    ActionChains(d).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    _wait(d, lambda d: "Saved (revision 1)" in msg(), what="saved")
    rv = json.loads((synth / "rods.reviewed.json").read_text())
    assert [e["op"] for e in rv["review"]["edits"]] == ["cut", "join", "draw", "debris", "separate"]
    by_review_id = {c["review_id"]: c for c in rv["chromosomes"]}
    assert sorted(by_review_id) == [4, 5, 6, 7, 8, 9, 10]  # 0-3 replaced; 8 is the drawn one, marked debris
    assert by_review_id[8]["not_chromosome"]
    coco = json.loads((synth / "reviewed_coco.json").read_text())
    im = next(i for i in coco["images"] if i["review_stem"] == "rods")
    anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    assert len(anns) == 6  # the debris left out
    masks = [decode(a["segmentation"]) for a in anns]
    a_rod, b_rod = rod_mask("cross_a"), rod_mask("cross_b")
    iou = lambda m, t: float((m & t).sum() / (m | t).sum())  # noqa: E731
    sep = max(masks, key=lambda m: iou(m, a_rod))
    rest = max(masks, key=lambda m: iou(m, b_rod))
    assert iou(sep, a_rod) > 0.9 and iou(rest, b_rod) > 0.9
    assert ((sep & rest) >= (a_rod & b_rod)).all()  # the crossing belongs to both
    whole = rod_mask("whole")
    halves = [m for m in masks if (m & whole).sum() > 0.9 * m.sum()]
    assert len(halves) == 2 and ((halves[0] | halves[1]) == whole).all()


def test_looking_closely_zoom_pan_overlay_contrast(browser, synth_server):
    """Zoom and pan the spread, and a cut made while zoomed lands where it was drawn; overlay modes; invert."""
    from selenium.webdriver.common.by import By

    d = browser
    _open(d, f"{synth_server}/cell/rods_zoom")
    body = lambda: d.find_element(By.TAG_NAME, "body")  # noqa: E731
    rect = lambda i: d.execute_script(f"return document.getElementById('{i}').getBoundingClientRect().width")  # noqa: E731
    body().send_keys("+", "+")
    assert d.find_element(By.ID, "zoom").text == "225%"
    assert abs(rect("spread-svg") / rect("spread") - 2.25) < 0.01
    t0 = d.find_element(By.ID, "spread-view").get_attribute("style")
    _gesture(d, [(140, 110), (130, 105), (120, 100)])  # the background: pans
    t1 = d.find_element(By.ID, "spread-view").get_attribute("style")
    assert t1 != t0 and "scale(2.25)" in t1
    body().send_keys("c")
    (x, _), _ = RODS["whole"]
    _gesture(d, [(x - 14, 80), (x, 80), (x + 14, 80)])
    _wait(d, lambda d: "cut #1 into 2" in d.find_element(By.ID, "message").text, what="cut while zoomed")
    body().send_keys("w")
    assert d.find_element(By.ID, "zoom").text == "100%"
    # erase the far rod's left end with the brush
    body().send_keys("e")
    (fx, fy), _ = RODS["far"]
    _gesture(d, [(fx - 4, fy), (fx + 2, fy), (fx + 8, fy)])
    _wait(d, lambda d: "erased pixels of 1 chromosome(s)" in d.find_element(By.ID, "message").text, what="erase")
    # overlay: filled -> outlines only -> none -> filled
    spread = d.find_element(By.ID, "spread")
    poly = lambda: d.find_element(By.CSS_SELECTOR, "#spread-svg g.outline polygon")  # noqa: E731
    body().send_keys("v", "m")
    assert spread.get_attribute("data-overlay") == "outline" and poly().value_of_css_property("fill-opacity") == "0"
    body().send_keys("m")
    assert spread.get_attribute("data-overlay") == "off" and not poly().is_displayed()
    body().send_keys("m")
    assert spread.get_attribute("data-overlay") == "filled" and poly().is_displayed()
    # contrast and invert act on the image only
    body().send_keys("i")
    assert "invert(1)" in d.find_element(By.ID, "spread-img").get_attribute("style")
    d.execute_script("const c = document.getElementById('contrast'); c.value = 2; c.dispatchEvent(new Event('input'))")
    assert "contrast(2)" in d.find_element(By.ID, "spread-img").get_attribute("style")


def _zoom_at(d, x, y, shape, clicks=3):
    """Zoom the spread about the image point (x, y) with the mouse wheel, then pan it to the middle (middle button)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.mouse_button import MouseButton
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    for _ in range(clicks):
        ActionChains(d).scroll_from_origin(ScrollOrigin.from_viewport(*_viewport(d, x, y, shape)), 0, -100).perform()
        time.sleep(0.1)
    box = d.execute_script(
        "const r = document.getElementById('spread').getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]"
    )
    ch = ActionChains(d)
    ptr = ch.w3c_actions.pointer_action
    ptr.move_to_location(*_viewport(d, x, y, shape))
    ptr.pointer_down(MouseButton.MIDDLE)
    ptr.move_to_location(int(box[0]), int(box[1]))
    ptr.pointer_up(MouseButton.MIDDLE)
    ch.perform()


def test_separate_a_crossing_and_cut_a_touching_pair_of_a_synthetic_spread(browser, synth_server, synth):
    """Two crossing chromosomes found as one, two touching ones found as one: the tools give back the true masks.
    With ``KARYO_REVIEW_SCREENSHOT_DIR=docs`` it writes docs/review_cut.png and docs/review_separate.png."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from review.segment import decode

    d = browser
    truth = write_merged_cell(synth, "merged")
    shape = (truth["json"]["height"], truth["json"]["width"])
    n = len(truth["json"]["chromosomes"])
    shots = os.environ.get("KARYO_REVIEW_SCREENSHOT_DIR")
    _open(d, f"{synth_server}/cell/merged")
    msg = lambda: d.find_element(By.ID, "message").text  # noqa: E731
    body = lambda: d.find_element(By.TAG_NAME, "body")  # noqa: E731
    iou = lambda m, t: float((m & t).sum() / (m | t).sum())  # noqa: E731

    def show(i, name):
        body().send_keys("v")
        poly = d.find_element(By.CSS_SELECTOR, f'#spread-svg g[data-id="{i}"] polygon')
        ActionChains(d).move_to_element(poly).click().perform()
        time.sleep(0.3)
        if shots:
            d.save_screenshot(str(Path(shots) / name))
        body().send_keys("w")

    t = truth["touching"]
    _zoom_at(d, *t["line"].mean(0), shape)
    body().send_keys("c")
    _gesture(d, t["line"].tolist(), shape)
    _wait(d, lambda d: f"cut #{t['id']} into 2" in msg(), what="cut")
    show(n, "review_cut.png")
    c = truth["crossing"]
    _zoom_at(d, *c["path"][len(c["path"]) // 2], shape)
    body().send_keys("p")
    _gesture(d, c["path"][::2].tolist(), shape)
    _wait(d, lambda d: f"separated a chromosome from #{c['id']}" in msg(), what="separate")
    show(n + 3, "review_separate.png")
    _typed_name(d, "Dr Shot")
    body().send_keys("v")
    d.find_element(By.ID, "save").click()
    _wait(d, lambda d: "Saved (revision 1)" in msg(), what="saved")
    rv = json.loads((synth / "merged.reviewed.json").read_text())
    got = {ch["review_id"]: decode(ch["mask"]) for ch in rv["chromosomes"]}
    halves = [got[n], got[n + 1]]
    assert max(iou(h, t["first"]) for h in halves) > 0.9 and max(iou(h, t["second"]) for h in halves) > 0.9
    rest, new = got[n + 2], got[n + 3]
    assert iou(new, c["first"]) > 0.9 and iou(rest, c["second"]) > 0.9
    assert (new & rest).sum() >= 0.8 * (c["first"] & c["second"]).sum()  # the crossing in both


def test_the_edits_classifier_and_assignment_are_the_pipelines(results):
    """On the pipeline's own result, the code behind the segmentation edits gives back the pipeline's figures:
    the same probabilities (to 0.05: the JSON rounds the boxes the axis crops are cut from) and, assigned again
    with nothing locked, exactly its labels and flags."""
    import numpy as np

    from datasets.io import read_image
    from karyotyping.identify import measure_and_classify
    from review.result import load_cell
    from review.segment import identifier_for, reassign

    cell = load_cell(results / "cil_104023.json")
    p = cell.prediction
    members, config = identifier_for(None).load()
    some = [0, 7, 23, 45]
    found = measure_and_classify(members, read_image(p.image), p.masks, p.boxes, which=some)
    assert found.probs.shape == (4, 24) and np.abs(found.probs - p.probs[some]).max() < 0.05
    assert (found.probs.argmax(1) == p.probs[some].argmax(1)).all()
    n = len(p)
    labels, _, flags = reassign(p.probs, p.length_px, p.centromere_index, [0] * n, list(range(n)), [], config)
    assert labels == [int(v) for v in p.labels] and [sorted(f) for f in flags] == [sorted(f) for f in p.flags]


def test_homolog_view_beside_the_ideogram(browser, synth_server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from karyogram.reference import bands

    d = browser
    _open(d, f"{synth_server}/cell/reload")
    ones = d.find_elements(By.CSS_SELECTOR, '.slot[data-class="2"] .chrom')
    assert len(ones) == 2
    ActionChains(d).double_click(ones[0]).perform()
    _wait(d, lambda d: d.find_element(By.ID, "pair").is_displayed(), what="homolog view")
    assert d.find_element(By.ID, "pair-title").text == "Chromosome 2: 2 copies"
    imgs = d.find_elements(By.CSS_SELECTOR, "#pair-body img")
    assert len(imgs) == 2 and max(int(i.get_attribute("height")) for i in imgs) == 260
    _wait(d, lambda d: all(i.get_attribute("naturalWidth") != "0" for i in imgs), what="homologs loaded")
    # the centromeres on one line: each crop's centromere row, and the ideogram's, at one height on the page
    crops = {c["id"]: c["crop"] for c in _state(d, synth_server, "reload")["chromosomes"]}
    tops = d.execute_script(
        "return [...document.querySelectorAll('#pair-body img')].map(i => [Number(i.dataset.id), i.getBoundingClientRect().top])"
    )
    lines = [top + crops[i]["cen"] * 260 / max(crops[j]["h"] for j, _ in tops) for i, top in tops]
    ideo = d.execute_script(
        "const r = document.querySelector('#pair-body svg.ideogram').getBoundingClientRect(); return [r.top, r.height]"
    )
    cen = d.execute_script("return fetch('/api/ideogram/2').then(r => r.json()).then(j => j.centromere)")
    assert abs(lines[0] - lines[1]) < 2 and abs(ideo[0] + cen * ideo[1] - lines[0]) < 2
    assert len(d.find_elements(By.CSS_SELECTOR, "#pair-body svg.ideogram rect")) == len(bands(400)[2])
    shots = os.environ.get("KARYO_REVIEW_SCREENSHOT_DIR")
    if shots:
        d.execute_script("document.getElementById('pair').scrollIntoView({block: 'end'})")
        time.sleep(0.3)
        d.save_screenshot(str(Path(shots) / "review_homologs.png"))
    Select(d.find_element(By.ID, "pair-res")).select_by_visible_text("850")
    _wait(
        d,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pair-body svg.ideogram rect")) == len(bands(850)[2]),
        what="850 bands",
    )
    # the view follows the selection; h closes it
    d.find_element(By.CSS_SELECTOR, '.slot[data-class="7"] .chrom').click()
    _wait(d, lambda d: d.find_element(By.ID, "pair-title").text.startswith("Chromosome 7"), what="follows")
    d.find_element(By.TAG_NAME, "body").send_keys("h")
    assert not d.find_element(By.ID, "pair").is_displayed()


# ------------------------------------------------------------------------------ a case
@pytest.fixture(scope="module")
def case_folder(tmp_path_factory, browser) -> Path:
    """Case C7: five synthetic cells, three accepted (46,XY and 47,XY,+21 twice), one not reviewed, one
    unanalysable."""
    from tests.case_fixtures import write_case

    out = tmp_path_factory.mktemp("review_browser_case") / "results"
    cells = [("46,XY", "accepted"), ("47,XY,+21", "accepted"), ("47,XY,+21", "accepted"), ("46,XY", ""),
             ("46,XY", "unanalysable")]  # fmt: skip
    write_case(out, "C7", cells)
    return out


@pytest.fixture(scope="module")
def case_server(case_folder):
    yield from _serve(case_folder)


def test_a_case_signed_off_and_its_pdf_report(browser, case_server, case_folder):
    """From the index to the case page: tick the cells analysed, type the case karyotype, the cells counted and a
    name, save, make the PDF: a summary page and one page per analysed cell. With
    ``KARYO_REVIEW_SCREENSHOT_DIR=docs`` it writes docs/review_case.png."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.case_fixtures import pdf_pages

    d = browser
    d.get(case_server + "/")
    d.execute_script("sessionStorage.clear()")  # a name typed in an earlier test of this tab
    d.find_element(By.CSS_SELECTOR, 'tr.case-row[data-case="C7"] a.open-case').click()
    _wait(d, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="case page ready")
    msg = lambda: d.find_element(By.ID, "message").text  # noqa: E731
    box = lambda s: d.find_element(By.CSS_SELECTOR, f'input.analysed[value="{s}"]')  # noqa: E731
    # the accepted cells are ticked, the unanalysable one cannot be; the suggestion is the accepted cells' mosaic
    assert [s for s in ("C7_1", "C7_2", "C7_3", "C7_4", "C7_5") if box(s).is_selected()] == ["C7_1", "C7_2", "C7_3"]
    assert not box("C7_5").is_enabled() and box("C7_4").is_enabled()
    iscn = d.find_element(By.ID, "iscn")
    assert iscn.get_attribute("value") == "mos 47,XY,+21[2]/46,XY[1]" == d.find_element(By.ID, "suggestion").text
    assert d.find_element(By.ID, "reviewer").get_attribute("value") == ""  # typed, never a default
    # analysed: the two trisomic cells and the one not reviewed
    box("C7_1").click()
    box("C7_4").click()
    assert d.find_element(By.ID, "n-analysed").text == "3" and "unsaved" in d.find_element(By.ID, "case-status").text
    # no name: nothing saved; a count that disagrees with the karyotype: the server says so, nothing saved
    iscn.clear()
    iscn.send_keys("46,XY,+21")
    d.find_element(By.ID, "save").click()
    _wait(d, lambda d: "Type your name" in msg(), what="name first")
    d.find_element(By.ID, "reviewer").send_keys("Dr Case")
    d.find_element(By.ID, "save").click()
    _wait(d, lambda d: "count 46 disagrees" in msg(), what="ISCN refused")
    assert not (case_folder / "cases").exists()
    iscn.clear()
    iscn.send_keys("mos 47,XY,+21[2]/46,XY[2]")
    counted = d.find_element(By.ID, "counted")
    counted.send_keys(Keys.CONTROL, "a")
    counted.send_keys("20")
    d.find_element(By.ID, "save").click()
    _wait(d, lambda d: "Saved the case (revision 1)" in msg(), what="case saved")
    saved = json.loads((case_folder / "cases" / "C7" / "case.reviewed.json").read_text())
    c = saved["case"]
    assert (c["iscn"], c["counted"], c["analysed"], c["reviewer"]) == (
        "mos 47,XY,+21[2]/46,XY[2]", 20, ["C7_2", "C7_3", "C7_4"], "Dr Case"
    )  # fmt: skip
    assert "unsaved" not in d.find_element(By.ID, "case-status").text
    # a change not saved: the report waits for a save
    box("C7_1").click()
    d.find_element(By.ID, "report").click()
    _wait(d, lambda d: "Save the case first" in msg(), what="save first")
    box("C7_1").click()
    d.find_element(By.ID, "report").click()
    _wait(d, lambda d: "Report written (4 pages" in msg(), what="report written")
    pdf = case_folder / "cases" / "C7" / "C7_report.pdf"
    assert pdf_pages(pdf) == 4  # the summary + the three analysed cells
    link = d.find_element(By.ID, "report-link")
    assert link.is_displayed() and link.get_attribute("href").endswith("/case/C7/report.pdf")
    got = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('report-link').href).then(r => r.arrayBuffer().then(b => "
        "done([r.status, b.byteLength, r.headers.get('Content-Type'), r.headers.get('Content-Disposition')])));"
    )
    assert got[0] == 200 and got[1] == pdf.stat().st_size and got[2] == "application/pdf" and "attachment" in got[3]
    shots = os.environ.get("KARYO_REVIEW_SCREENSHOT_DIR")
    if shots:
        time.sleep(0.3)
        d.save_screenshot(str(Path(shots) / "review_case.png"))
    # the index shows the signed case
    d.get(case_server + "/")
    row = d.find_element(By.CSS_SELECTOR, 'tr.case-row[data-case="C7"]')
    assert "mos 47,XY,+21[2]/46,XY[2]" in row.text and "Dr Case" in row.text
