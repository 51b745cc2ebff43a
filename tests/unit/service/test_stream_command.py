"""service/stream_command.py: the stream URL, and whether a stream's messages are compressed."""

from __future__ import annotations

import asyncio

import pytest

from service.cli import build_parser
from service.stream_command import stream_url, websocket_compression


def _args(*extra: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["stream", "--model", "m", "--file", "x.npy", *extra])


def test_compression_is_a_choice_and_auto_by_default() -> None:
    assert _args().compression == "auto"
    assert _args("--compression", "deflate").compression == "deflate"
    assert _args("--compression", "none").compression == "none"
    with pytest.raises(SystemExit):
        _args("--compression", "gzip")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "10.1.2.3", "192.168.0.7", "fe80::1"])
def test_auto_sends_uncompressed_on_this_host_and_a_private_network(host: str) -> None:
    assert asyncio.run(websocket_compression("auto", host)) is None


@pytest.mark.parametrize("host", ["8.8.8.8", "2001:4860:4860::8888"])
def test_auto_deflates_to_a_public_address(host: str) -> None:
    assert asyncio.run(websocket_compression("auto", host)) == "deflate"


@pytest.mark.parametrize("host", ["127.0.0.1", "8.8.8.8"])
def test_an_explicit_choice_holds_whatever_the_host(host: str) -> None:
    assert asyncio.run(websocket_compression("deflate", host)) == "deflate"
    assert asyncio.run(websocket_compression("none", host)) is None


def test_stream_url_from_the_gateway_and_flags() -> None:
    args = _args("--gateway", "https://gw.example:8443", "--fit", "scale", "--window-ms", "20")
    url = stream_url(args, {"format": "npy"})
    assert url.startswith("wss://gw.example:8443/v1/models/m/stream?")
    assert "window_ms=20" in url and "fit=scale" in url and "format=npy" in url
