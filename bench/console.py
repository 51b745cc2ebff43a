"""Console load time on loopback: /ui/ in headless chromium, against the gateway's plain start page.

Starts a real ``spikeserve serve`` on the zoo/ registry and Debian's chromium (as the console
tests do). Each round clears the browser cache, then loads the start page ``/`` (one small HTML
answer: the baseline) and the console ``/ui/`` (HTML, CSS, its JavaScript modules, then
``/readyz`` and one ``/v2/models/{name}`` per served model) in alternating order. The console
counts as loaded at its ``console-ready`` performance mark: the model pickers are filled and the
page answers clicks. Prints per round the console's time, the baseline's and their ratio, then
medians and ranges, and the bytes the console transferred.

    .venv/bin/python bench/console.py                 # 15 rounds
    .venv/bin/python bench/console.py --rounds 30
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # server_process and browser_support: shared with the tests

from browser_support import start_chromium, wait_for  # noqa: E402
from server_process import ServerProcess  # noqa: E402


def load_start_page(driver, url: str) -> float:
    """ms from navigation start to the load event of the start page."""
    driver.get(f"{url}/")
    return float(driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd"))


def load_console(driver, url: str) -> tuple[float, int]:
    """(ms from navigation start to the console-ready mark, bytes transferred)."""
    driver.get(f"{url}/ui/")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "true", 30, "the console")
    ready = driver.execute_script("return performance.getEntriesByName('console-ready')[0].startTime")
    transferred = driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].transferSize"
        " + performance.getEntriesByType('resource').reduce((sum, e) => sum + e.transferSize, 0)"
    )
    return float(ready), int(transferred)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--registry", type=Path, default=REPO_ROOT / "zoo")
    args = parser.parse_args()

    env = {"SPIKESERVE_NEURON_BACKEND": "torch", "SPIKESERVE_TORCH_THREADS": "1"}
    with ServerProcess(args.registry, env=env) as server, tempfile.TemporaryDirectory() as profile:
        driver = start_chromium(Path(profile))
        try:
            load_console(driver, server.url)  # the first browser start pays for itself, not the page
            console_ms, start_ms, ratios, sizes = [], [], [], []
            for round_index in range(args.rounds):
                driver.execute_cdp_cmd("Network.clearBrowserCache", {})
                if round_index % 2:
                    page, size = load_console(driver, server.url)
                    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
                    base = load_start_page(driver, server.url)
                else:
                    base = load_start_page(driver, server.url)
                    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
                    page, size = load_console(driver, server.url)
                console_ms.append(page)
                start_ms.append(base)
                ratios.append(page / base)
                sizes.append(size)
                print(
                    f"round {round_index + 1:2d}: console {page:7.1f} ms   start page {base:6.1f} ms   "
                    f"ratio {page / base:5.1f}"
                )
                time.sleep(0.2)
        finally:
            driver.quit()

    def summary(values: list[float]) -> str:
        return f"median {statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"

    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {args.rounds} rounds")
    print(f"console ready (ms):     {summary(console_ms)}")
    print(f"start page loaded (ms): {summary(start_ms)}")
    print(f"ratio console / start:  {summary(ratios)}")
    print(f"console bytes transferred: median {statistics.median(sizes):,.0f}")


if __name__ == "__main__":
    main()
