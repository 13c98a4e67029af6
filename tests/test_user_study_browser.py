"""The user study in a real browser: headless Chromium (Debian's, tools/chromium-local) driven by
Playwright against `wig serve-study`. A rater answers every set, reloading mid-way; the votes in
the database are the clicks; nothing the browser receives names a method or a path.

Installing Chromium needs root; without it the test is skipped unless WIG_REQUIRE_BROWSER=1 (set
by .ci/run) turns the skip into a failure."""

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
        page.goto(f"{server.base}/r/{server.tokens[1]}")
        total = len(study.sets)
        index = 1
        while index <= total:
            expect(page.locator("#progress")).to_have_text(f"Set {index} of {total}")
            seen["html"].append(page.content())
            shown = [img.get_attribute("src") for img in page.locator("#candidates img").all()]
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
        seen["html"].append(page.content())
    finally:
        server.stop()

    # the votes in the database are the clicks, in the rater's plan order
    with sqlite3.connect(db) as conn:
        stored = list(conn.execute("SELECT rater, set_id, question, choice FROM answers ORDER BY id"))
    plan = study.plan(1)
    expected = [(1, plan[i // 2][0], question, choice) for i, (question, choice, _) in enumerate(clicks)]
    assert stored == expected and len(stored) == 2 * total
    for (set_id, images), (_, _, shown) in zip(plan, clicks[::2]):
        assert shown == [f"/img/{i}" for i in images]  # shown in the rater's order

    # blind: no method label or name, no path of the study, in any URL, body or page
    everything = "\n".join(seen["urls"] + seen["bodies"] + seen["html"])
    assert "/img/" in everything and "sks thing" in everything  # what was read is the real traffic
    forbidden = re.compile(r"(?<![A-Za-z0-9])(CFG|SAG|AG|PG|cfg|sag|ag|pg|classdiffusion|sd21)(?![A-Za-z0-9])")
    assert not forbidden.search(everything), forbidden.search(everything)
    for leak in (str(tmp_path), "study.json", "sources", "repeat", "attention", "concept", "images/", ".png"):
        assert leak not in everything, leak
