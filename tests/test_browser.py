"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): search, see thumbnails, open the region view, search by image, describe an
image, filter."""

import os

import pytest

from conftest import live_server, need
from vtsearch.server import Library, create_app

CHROMIUM = os.environ.get("VTSEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VTSEARCH_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    need(os.path.isfile(CHROMIUM) and os.path.isfile(CHROMEDRIVER), "Chromium and ChromeDriver (apt install chromium chromium-driver)")
    need(_has_selenium(), "selenium (pip install selenium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _has_selenium() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def page(served_dir):
    with live_server(create_app(Library.open([served_dir], device="cpu"))) as base:
        yield base


def test_search_look_and_describe(browser, page, served_dir, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))  # grids are redrawn
    browser.get(page)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#index option"))

    # a text search fills the grid with thumbnails that really load
    browser.find_element(By.ID, "query").send_keys("a red square", Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 24)
    loaded = "return [...document.querySelectorAll('#results img')].slice(0, 8)" \
             ".every(img => img.complete && img.naturalWidth > 0)"
    wait.until(lambda d: d.execute_script(loaded))
    first = browser.find_element(By.CSS_SELECTOR, "#results .result")
    first_id = first.get_attribute("data-id")
    assert "score" in first.get_attribute("title")
    assert "reranked" in browser.find_element(By.ID, "status").text

    # one result: the scorer's attention for each word, painted over the image
    first.click()
    wait.until(lambda d: d.find_element(By.ID, "viewer").get_attribute("data-state") == "ready")
    chips = [chip.text for chip in browser.find_elements(By.CSS_SELECTOR, "#tokens .token")]
    assert chips == ["a", "red", "square", "whole text"]
    painted = ("const c = document.getElementById('attention');"
               "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
               "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return [c.width, n];")
    width, opaque = browser.execute_script(painted)
    assert width > 0 and opaque > 0
    browser.find_element(By.XPATH, "//div[@id='tokens']/button[text()='square']").click()
    assert browser.find_element(By.ID, "attention").get_attribute("data-token") == "3"
    browser.save_screenshot(str(tmp_path / "region-view.png"))

    # more like this: a search by the viewed image, which comes first
    browser.find_element(By.ID, "more-like-this").click()
    wait.until(lambda d: "stage 1 order" in d.find_element(By.ID, "status").text)
    assert browser.find_element(By.CSS_SELECTOR, "#results .result").get_attribute("data-id") == first_id

    # search by uploading an image file
    photo = served_dir.parent / "photos" / "image_0007.png"
    browser.find_element(By.ID, "query-image").send_keys(str(photo))
    wait.until(lambda d: str(photo) in (d.find_element(By.CSS_SELECTOR, "#results .result").get_attribute("title") or ""))

    # describe an uploaded image with the index's texts
    browser.find_element(By.CSS_SELECTOR, ".tab[data-tab=match]").click()
    browser.find_element(By.ID, "match-image").send_keys(str(photo))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#match-results li")) == 5)
    assert "reranked" in browser.find_element(By.ID, "match-status").text
    # filters: only PNG files (8 of the 24)
    browser.find_element(By.CSS_SELECTOR, ".tab[data-tab=search]").click()
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
    browser.find_element(By.ID, "f-glob").send_keys("*.png")
    query = browser.find_element(By.ID, "query")
    query.clear()
    query.send_keys("a blue circle", Keys.ENTER)
    names = "return [...document.querySelectorAll('#results .result img')].map(img => img.alt)"
    wait.until(lambda d: len(d.execute_script(names)) == 8)
    assert all(name.endswith(".png") for name in browser.execute_script(names))

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
