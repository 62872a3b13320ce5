"""The web page in a real browser (Debian's chromium, headless, through selenium): a hostile file name
runs no script, a key typed into the page lists the collections, a first-time user is told what to do.

Skips where ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` are absent (``apt-get install chromium
chromium-driver``); selenium is never allowed to download a browser.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchseek.api.app import STATIC_DIR
from tests.api.server import running_server
from tests.conftest import make_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "browser-test-key"
HOSTILE = "<img src=x onerror=document.title=`STOLEN:`+apikey.value>receipt.png"


class TestPageSource:
    """What the browser test relies on, checked without a browser."""

    def test_the_page_runs_no_inline_script(self) -> None:
        html = (STATIC_DIR / "index.html").read_text()
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/app.js" defer>']
        assert "<style" not in html and " style=" not in html
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", html)  # no inline event handler attribute

    def test_the_script_never_writes_html(self) -> None:
        script = (STATIC_DIR / "app.js").read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script, sink

    def test_the_page_is_served_with_a_strict_policy(self, tmp_path: Path) -> None:
        with running_server(make_settings(tmp_path / "data", None)) as client:
            page = client.get("/")
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "default-src 'none'" in policy
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
            assert page.headers["x-content-type-options"] == "nosniff"
            for asset, kind in (("/app.js", "javascript"), ("/app.css", "text/css")):
                r = client.get(asset)
                assert r.status_code == 200 and kind in r.headers["content-type"]


@pytest.fixture
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    options.add_argument("--disable-dev-shm-usage")  # containers have a small /dev/shm
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_hostile_file_name_runs_no_script_and_the_hits_show(browser, tmp_path, samples) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    hostile = tmp_path / "upload" / HOSTILE
    hostile.parent.mkdir()
    shutil.copy(samples.receipt, hostile)
    settings = make_settings(tmp_path / "data", None, worker_in_process=True, api_keys=[KEY])
    with running_server(settings) as client:
        driver = browser
        wait = WebDriverWait(driver, 120)
        driver.get(str(client.base_url))
        assert driver.title == "patchseek"

        # Without a key the page says it needs one; with it, a fresh server says how to start.
        wait.until(ec.text_to_be_present_in_element((By.ID, "hint"), "needs an API key"))
        driver.find_element(By.ID, "apikey").send_keys(KEY, Keys.ENTER)
        wait.until(ec.text_to_be_present_in_element((By.ID, "hint"), "No collections yet"))
        driver.find_element(By.ID, "newname").send_keys("docs")
        driver.find_element(By.ID, "create").click()
        wait.until(lambda d: Select(d.find_element(By.ID, "collection")).first_selected_option.text == "docs")
        wait.until(ec.text_to_be_present_in_element((By.ID, "hint"), "collection is empty"))

        # Upload through the page: the job's per-file report shows the name as text.
        driver.find_element(By.ID, "files").send_keys(str(hostile))
        driver.find_element(By.CSS_SELECTOR, "#upload button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "job"), "succeeded"))
        assert HOSTILE in driver.find_element(By.ID, "job").text
        wait.until(lambda d: d.find_element(By.ID, "hint").text == "")

        query = driver.find_element(By.ID, "query")
        query.send_keys("espresso croissant", Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit"))
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#results .hit img").get_attribute("src"))

        assert "hits from" in driver.find_element(By.ID, "status").text
        names = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#results .hit .document")]
        assert names[0] == HOSTILE, names
        # No element came out of the name: the only image is the thumbnail, a blob: URL.
        sources = [img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, "#results img")]
        assert sources and all(s.startswith("blob:") for s in sources), sources
        assert driver.title == "patchseek" and "STOLEN" not in driver.title
