"""The front-end extension (web/omnigen2_stats.js) in a real headless Chromium.

A page under tests/web_harness/ loads the extension from the same URL layout ComfyUI serves it from
(/extensions/<pack>/omnigen2_stats.js importing ../../scripts/app.js, here a stand-in that records registrations),
plays the front-end's part (registers node types, delivers "executed" messages) and prints what the node shows.
Chromium dumps the DOM after the page's scripts ran; the test reads the result from it.

Needs Debian's `chromium` (apt-get install chromium); skipped with that reason when it is not installed.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT

HARNESS = Path(__file__).resolve().parent / "web_harness"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)"
)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


@pytest.fixture()
def site(tmp_path):
    """The harness page and the extension, laid out as ComfyUI's server lays them out, on a loopback port."""
    shutil.copytree(HARNESS, tmp_path, dirs_exist_ok=True)
    shutil.copytree(ROOT / "web", tmp_path / "extensions" / "omnigen2")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_page(url: str, profile: Path) -> dict:
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
               url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert match, f"page produced no result (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    text = html.unescape(match.group(1))
    assert text != "pending", "the page's module script did not run (extension failed to import?)"
    return json.loads(text)


def test_extension_shows_run_stats_on_the_sampler(site, tmp_path_factory):
    result = _run_page(f"{site}/index.html", tmp_path_factory.mktemp("chromium-profile"))

    assert result["errors"] == []
    assert result["extensionNames"] == ["OmniGen2.SamplerStats"]
    # One table widget that is replaced by the latest run, not one per run.
    assert result["samplerWidgets"] == ["omnigen2_run_stats"]
    assert result["samplerRows"] == [
        "steps: 50",
        "ref tokens computed: 6,144",
        "ref tokens reused: 301,056 (98%)",
        "saved by compaction: 18,432 tokens",
        "skipped by TaylorSeer: 90 of 150 pass steps (60%)",
        "time per step: 1.25 s",
    ]
    assert result["previousHandlerCalls"] == 2, "the node type's own onExecuted must still run"
    assert result["repaintRows"] == [
        "steps: 30",
        "ref tokens computed: 3,584",
        "ref tokens reused: 0 (0%)",
        "repainted tokens: 512 of 4,096",
        "time per step: 800 ms",
    ]
    assert result["dirty"] >= 1


def test_extension_leaves_other_nodes_and_empty_messages_alone(site, tmp_path_factory):
    result = _run_page(f"{site}/index.html", tmp_path_factory.mktemp("chromium-profile"))

    assert result["otherWidgets"] == 0
    assert result["otherPreviousHandlerCalls"] == 1
    assert result["emptyWidgets"] == 0
    assert result["formatEmpty"] == []
    assert result["formatPartial"] == [["steps", "4"], ["time per step", "50 ms"]]


def test_extension_shows_the_chat_answer_on_the_chat_node(site, tmp_path_factory):
    result = _run_page(f"{site}/index.html", tmp_path_factory.mktemp("chromium-profile"))

    assert result["errors"] == []
    assert result["chatAnswer"] == "A red square\non white."
    assert result["chatRows"] == []  # an answer only: no sampling figures
    assert result["chatHeight"] == 2 * 18 + 8  # two lines of answer
    assert result["chatDrawnAnswer"] == ["<|img|>"]  # replaced by the next run, not added
    assert result["chatDrawnRows"] == ["steps: 20", "time per step: 500 ms"]
    assert result["answerRows"] == [0, 1, 2, 3, 8]
