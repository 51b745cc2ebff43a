"""service/routes/console.py and service/ui/: the console is served, self-contained and uncounted.

The browser flows are in tests/e2e/test_console.py; these check the files and routes themselves:
every file the page loads exists and is served with a type a browser runs, nothing is fetched
from another host, and the console's own requests add no series to the request metrics.
"""

from __future__ import annotations

import re
from typing import Any

from service_support import TestClient

from service.routes.console import UI_DIR

LOCAL_REFERENCE = re.compile(r"""(?:src|href)="([^"#:]+)"|from "(\./[^"]+)"|import\("(\./[^"]+)"\)""")


def ui_files() -> list[str]:
    return sorted(str(path.relative_to(UI_DIR)) for path in UI_DIR.rglob("*") if path.is_file())


def test_the_start_page_links_to_the_console(static_app: tuple[TestClient, Any]) -> None:
    client, _ = static_app
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'href="/ui/"' in page.text
    assert client.get("/ui", follow_redirects=False).status_code in (307, 308)
    index = client.get("/ui/")
    assert index.status_code == 200 and "<title>spikeserve console</title>" in index.text


def test_every_file_the_page_references_is_served(static_app: tuple[TestClient, Any]) -> None:
    client, _ = static_app
    referenced = {"index.html"}
    for name in ui_files():
        folder = (UI_DIR / name).parent
        for match in LOCAL_REFERENCE.finditer((UI_DIR / name).read_text()):
            target = next(group for group in match.groups() if group)
            if target.startswith("/"):
                continue  # links to the gateway's own pages (/, /docs)
            referenced.add(str((folder / target).resolve().relative_to(UI_DIR)))
    assert referenced == set(ui_files()), "a file is referenced but missing, or shipped but unused"
    for name in referenced:
        answer = client.get(f"/ui/{name}")
        assert answer.status_code == 200, name
        kind = {"html": "text/html", "css": "text/css", "js": "javascript"}[name.rsplit(".", 1)[1]]
        assert kind in answer.headers["content-type"], (name, answer.headers["content-type"])


def test_nothing_is_fetched_from_another_host() -> None:
    for name in ui_files():
        text = (UI_DIR / name).read_text()
        # the SVG namespace is an identifier, never fetched
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text)) - {
            "http://www.w3.org/2000/svg"
        }
        assert not urls, f"{name} refers to {urls}"


def test_the_consoles_files_add_no_request_series(static_app: tuple[TestClient, Any]) -> None:
    client, _ = static_app
    for name in ui_files():
        client.get(f"/ui/{name}")
    assert 'route="/ui' not in client.get("/metrics").text


def test_v2_metadata_gives_the_input_spec_a_client_prepares_input_with(
    static_app: tuple[TestClient, Any],
) -> None:
    client, _ = static_app
    events = client.get("/v2/models/tiny-spikeformer").json()["parameters"]["input"]
    assert events == {
        "kind": "events",
        "sensor_width": 34,
        "sensor_height": 34,
        "polarities": 2,
        "binning": "time_bins",
        "time_window_us": None,
        "event_count": None,
    }
    image = client.get("/v2/models/tiny-danet").json()["parameters"]["input"]
    assert (image["kind"], image["channels"], image["height"], image["width"]) == ("image", 1, 28, 28)
