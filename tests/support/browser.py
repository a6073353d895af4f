"""A real headless Chromium, driven through Selenium, for the dashboard's tests.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs both) and the ``selenium``
package (the ``test`` extra). The browser binary is started directly, not through Debian's
``/usr/bin/chromium`` wrapper script, which only adds flags for a desktop session. Selenium is
given the driver's path, so it never tries to download one.

``chromium()`` opens one browser (JavaScript on or off) and always quits it; page loads and
scripts are bounded by timeouts, and every wait in ``wait_for`` is too. ``screenshot`` writes a
full-page PNG to ``$CANARYD_SCREENSHOTS`` (default ``tests/.artifacts/screenshots``, ignored by
git), so a person can look at what the tests saw.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / ".artifacts" / "screenshots"
BINARIES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
PAGE_TIMEOUT = 20.0
WIDTH = 1280

T = TypeVar("T")
__all__ = ["By", "WebDriver", "chromium", "screenshot", "text_of", "texts", "wait_for"]


def _binary() -> str:
    for name in BINARIES:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if found:
            return found
    raise AssertionError(f"no Chromium found ({', '.join(BINARIES)}): apt-get install chromium")


def _driver() -> str:
    found = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if not os.access(found, os.X_OK):
        raise AssertionError("no chromedriver found: apt-get install chromium-driver")
    return found


@contextlib.contextmanager
def chromium(*, javascript: bool = True) -> Iterator[WebDriver]:
    """A headless Chromium with JavaScript on or off; quit on the way out, whatever happens."""
    options = webdriver.ChromeOptions()
    options.binary_location = _binary()
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--window-size={WIDTH},900",
    ):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_driver()))
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        driver.set_script_timeout(PAGE_TIMEOUT)
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, read: Callable[[WebDriver], T], timeout: float, what: str) -> T:
    """``read(driver)`` once it is truthy; fail naming ``what`` and the page's text if never."""
    try:
        value: T = WebDriverWait(driver, timeout, poll_frequency=0.1).until(read)
        return value
    except Exception as exc:
        body = driver.find_element(By.TAG_NAME, "body").text[:3000]
        message = f"{what}: not seen within {timeout:g}s; the page says:\n{body}"
        raise AssertionError(message) from exc


def text_of(css: str) -> Callable[[WebDriver], str]:
    """A reader for ``wait_for``: the text of the first element matching ``css`` (or '')."""

    def read(driver: WebDriver) -> str:
        return " ".join(texts(driver, css)[:1])

    return read


def texts(driver: WebDriver, css: str) -> list[str]:
    """The rendered text of every element matching ``css``, read in one script call.

    One call, so a live refresh replacing the elements between finding one and reading it
    cannot make the read fail (Selenium's elements go stale when the page swaps them)."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText)", css
    )
    return [str(t) for t in found]


def screenshot(driver: WebDriver, name: str) -> Path:
    """A full-page PNG of what ``driver`` shows, as ``<name>.png`` in the screenshots folder."""
    folder = Path(os.environ.get("CANARYD_SCREENSHOTS") or SHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000)}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
    )
    path = folder / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """The browser console's errors (a script error, a Content-Security-Policy violation).

    An API call the API refused is logged by Chromium as a failed load; it is the answer the
    page shows, not an error of the page, so those lines are left out."""
    return [
        e
        for e in driver.get_log("browser")
        if e.get("level") == "SEVERE"
        and not (e.get("source") == "network" and "/api/v1/" in str(e.get("message")))
    ]
