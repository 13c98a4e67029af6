"""The user study in a real browser: headless Chromium (Debian's, tools/chromium-local) driven by
Playwright against `wig serve-study`. A rater agrees on the consent page, answers every set — by
clicks and by keys — enlarging an image and on a phone's width, reloading mid-way, and gets the
completion code; the votes in the database are the choices; nothing the browser receives names a
method or a path.

Installing Chromium needs root; without it the test is skipped unless WIG_REQUIRE_BROWSER=1 (set
by .ci/run) turns the skip into a failure."""

import json
import os
import re
import sqlite3
import subprocess

import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright

from wig.user_study.design import UserStudy

from conftest import ROOT, StudyServer, make_user_study, png_chunks

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [  # no network beyond loopback on this machine: no background fetches
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium():
    tool = ROOT / "tools/chromium-local"
    if subprocess.run([tool, "path"], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            if os.environ.get("WIG_REQUIRE_BROWSER") == "1":
                pytest.fail("Chromium is missing and installing it needs root (WIG_REQUIRE_BROWSER=1 forbids skipping)")
            pytest.skip("Chromium is missing and installing it needs root")
        subprocess.run([tool, "install"], check=True)
    path = subprocess.run([tool, "path"], check=True, capture_output=True, text=True).stdout.strip()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_a_rater_answers_every_set_in_chromium_resumes_after_a_reload_and_sees_no_method(chromium, tmp_path):
    labels = ["CFG", "CFG + SAG", "CFG + AG", "PG"]
    folder = make_user_study(tmp_path / "sets", n_sets=4, attention=1, entries={"sd21/classdiffusion": labels})
    data = json.loads((folder / "study.json").read_text())
    data["completion"] = {"code": "C0DE42", "url": "https://app.prolific.com/submissions/complete?cc=C0DE42"}
    (folder / "study.json").write_text(json.dumps(data))
    db = tmp_path / "votes.sqlite"
    study = UserStudy.load(folder)
    server = StudyServer(folder, db, raters=2)
    page = chromium.new_page()
    seen = {"urls": [], "bodies": [], "html": []}
    page.on("request", lambda r: seen["urls"].append(r.url) or seen["bodies"].append(r.post_data or ""))

    def keep(response):
        body = response.body()
        if "/img/" in response.url:
            assert set(png_chunks(body)) == {"IHDR", "IDAT", "IEND"}, response.url  # pixels, no metadata
        else:
            seen["bodies"].append(body.decode())

    page.on("response", keep)
    rng = np.random.default_rng(0)
    clicks = []
    try:
        # the instructions/consent page first; the link's platform id goes with the agreement
        page.goto(f"{server.base}/r/{server.tokens[1]}?PROLIFIC_PID=5f1e2d3c4b5a69788796a5b4")
        expect(page.locator("#consent")).to_be_visible()
        expect(page.locator("#instructions")).to_contain_text("Taking part is voluntary")
        assert page.locator("#start").is_disabled()
        page.keyboard.press("Enter")  # nothing before agreeing
        expect(page.locator("#consent")).to_be_visible()
        page.locator("#agree").check()
        page.keyboard.press("Enter")
        total = len(study.sets)
        index = 1
        while index <= total:
            expect(page.locator("#progress")).to_have_text(f"Set {index} of {total}")
            seen["html"].append(page.content())
            shown = [img.get_attribute("src") for img in page.locator("#candidates img").all()]
            if index == 1:
                # smooth downscaling in the set; a click enlarges, in pixels on purpose for a tiny image
                rendering = "getComputedStyle(document.querySelector('#candidates img')).imageRendering"
                assert page.evaluate(rendering) == "auto"
                page.locator("#candidates img").nth(1).click()
                expect(page.locator("#zoom")).to_be_visible()
                assert (
                    page.evaluate("getComputedStyle(document.querySelector('#zoom-image')).imageRendering")
                    == "pixelated"
                )
                page.keyboard.press("Enter")
                expect(page.locator("#zoom")).to_be_hidden()
                # side by side on a phone: the four images on one row, each as wide as the others
                page.set_viewport_size({"width": 390, "height": 844})
                boxes = [img.bounding_box() for img in page.locator("#candidates img").all()]
                assert len({round(b["y"]) for b in boxes}) == 1 and len({round(b["width"]) for b in boxes}) == 1
                assert boxes[-1]["x"] + boxes[-1]["width"] <= 390
                page.set_viewport_size({"width": 1280, "height": 900})
            if index in (2, 4):  # by keyboard: a digit for the subject, U for the text, Enter
                digit = int(rng.integers(len(labels))) + 1
                page.keyboard.press(str(digit))
                page.keyboard.press("u")
                values = [page.locator(f"input[name={q}]:checked").get_attribute("value") for q in ("subject", "text")]
                assert values == [shown[digit - 1].removeprefix("/img/"), "undecided"]
                clicks += [("subject", values[0], shown), ("text", values[1], shown)]
                page.keyboard.press("Enter")
                index += 1
                continue
            if index == 3:  # a reload mid-way, one question chosen but not sent: the same set, as it was
                page.locator("input[name=subject]").first.check()
                page.reload()
                expect(page.locator("#progress")).to_have_text(f"Set {index} of {total}")
                assert [img.get_attribute("src") for img in page.locator("#candidates img").all()] == shown
                assert page.locator("input:checked").count() == 0
            assert page.locator("#next").is_disabled()
            for question in ("subject", "text"):
                options = page.locator(f"input[name={question}]")
                assert options.count() == len(labels) + 1  # the images and "Undecided"
                pick = options.nth(int(rng.integers(options.count())))
                pick.check()
                clicks.append((question, pick.get_attribute("value"), shown))
            page.locator("#next").click()
            index += 1
        page.wait_for_selector("#done:not([hidden])")
        page.reload()  # a finished rater stays finished
        page.wait_for_selector("#done:not([hidden])")
        expect(page.locator("#code-value")).to_have_text("C0DE42")
        assert page.locator("#return-link").get_attribute("href") == data["completion"]["url"]
        seen["html"].append(page.content())
    finally:
        server.stop()

    # the votes in the database are the clicks, in the rater's plan order
    with sqlite3.connect(db) as conn:
        stored = list(conn.execute("SELECT rater, set_id, question, choice FROM answers ORDER BY id"))
    plan = study.plan(1)
    expected = [(1, plan[i // 2][0], question, choice) for i, (question, choice, _) in enumerate(clicks)]
    assert stored == expected and len(stored) == 2 * total
    with sqlite3.connect(db) as conn:
        assert list(conn.execute("SELECT rater, external_id FROM consents")) == [(1, "5f1e2d3c4b5a69788796a5b4")]
    for (set_id, images), (_, _, shown) in zip(plan, clicks[::2]):
        assert shown == [f"/img/{i}" for i in images]  # shown in the rater's order

    # blind: no method label or name, no path of the study, in any URL, body or page
    everything = "\n".join(seen["urls"] + seen["bodies"] + seen["html"])
    assert "/img/" in everything and "sks thing" in everything  # what was read is the real traffic
    forbidden = re.compile(r"(?<![A-Za-z0-9])(CFG|SAG|AG|PG|cfg|sag|ag|pg|classdiffusion|sd21)(?![A-Za-z0-9])")
    assert not forbidden.search(everything), forbidden.search(everything)
    for leak in (str(tmp_path), "study.json", "sources", "repeat", "attention", "concept", "images/", ".png"):
        assert leak not in everything, leak
