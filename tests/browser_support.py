"""A real headless browser for the console tests: Debian's chromium, driven by selenium.

``make test`` installs ``chromium`` and ``chromium-driver`` (apt) before pytest runs. Selenium is
pointed at /usr/bin/chromedriver and /usr/bin/chromium, so its own manager downloads nothing.
The browser runs as root in CI, hence ``--no-sandbox``; each session gets a fresh profile folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 1500)  # tall enough that a view's answer shows in its screenshot


def start_chromium(profile: Path) -> Any:
    """A headless chromium WebDriver with the browser console log enabled."""
    import pytest
    from selenium import webdriver

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("the console tests need Debian's chromium and chromium-driver: run `make test`")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(service=service, options=options)


def wait_for(check: Any, timeout_s: float = 30, what: str = "the page") -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not there yet
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s (last error: {last})")


def console_errors(driver: Any, allowed: tuple[str, ...] = ()) -> list[str]:
    """SEVERE entries of the browser console since the last call, less those containing ``allowed``."""
    entries = driver.get_log("browser")
    return [
        entry["message"]
        for entry in entries
        if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
    ]
