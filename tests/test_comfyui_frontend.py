"""The pack in ComfyUI's own front end (the Vue app the real server serves), in headless Chromium over CDP.

What is clicked and what is called: the Templates button, the pack's category in the templates dialog, the example's
card, the Node Library button, its OmniGen2 folder and the Run button are real mouse clicks (CDP Input events at the
elements' centres). Reading the node library's entries, the loaded graph (`app.graph`), the front end's own API
conversion (`app.graphToPrompt()`) and the stats widget's text, and giving the loaded workflow a seed of its own
(setting `widget.value`), go through the page's JavaScript. Screenshots go to outputs/comfyui-frontend/.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from comfy_workflow import to_api_prompt
from comfyui_server import PACK_FOLDER
from devtools import Browser
from omni_core.training.shapes.measure import read_scene, scene_matches
from test_comfyui_api import BUNDLED_EXPECTED, WORKFLOWS
from conftest import ROOT, load_pack
from test_web import CHROMIUM, CHROMIUM_FLAGS

SCREENSHOTS = ROOT / "outputs" / "comfyui-frontend"
# The bundled model's edit at its own settings (one reference image: the stats show reference tokens), so that the
# screenshot (the README's docs/comfyui-frontend.png) shows a real result.
EXAMPLE = "omnigen2_bundled_edit"
SEED = 424245  # a seed no other test uses, so ComfyUI really runs the sampler; the edit comes out right with it


def by_text(text: str, inside: str = "document") -> str:
    """JavaScript for the innermost element whose whole text is `text`."""
    return (f"[...{inside}.querySelectorAll('*')].filter(e => (e.textContent || '').trim() === {json.dumps(text)})"
            ".pop()")


@pytest.fixture(scope="module")
def browser(comfyui, tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the front-end test: Chromium is not installed", pytrace=False)
        pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium)")
    page = Browser(CHROMIUM, CHROMIUM_FLAGS, tmp_path_factory.mktemp("chromium-profile"))
    try:
        page.call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
        # Not a first visit: a new user's first visit opens the templates dialog by itself, at a moment of its own.
        comfyui.post("/settings/Comfy.TutorialCompleted", True)
        page.call("Page.navigate", url=comfyui.url)
        page.wait_for("!!(window.app && app.graph && app.canvas && window.LiteGraph"
                      " && LiteGraph.registered_node_types['OmniGen2CachedSampler']"
                      " && app.api && app.api.socket && app.api.socket.readyState === 1)", 120, "the front end to start")
        yield page
    finally:
        try:
            page.screenshot(SCREENSHOTS / "last.png")  # what the page showed at the end (or when a test failed)
        finally:
            page.close()


def test_example_from_the_templates_menu_runs_and_shows_the_runs_figures(browser, comfyui):
    pack_category = by_text(PACK_FOLDER)
    browser.click_element("document.querySelector('button[aria-label=\"Templates\"]')", "the Templates button")
    # The category lists exactly the pack's examples (clicked again if the dialog was still animating in).
    expected_cards = json.dumps(sorted(f"template-workflow-{path.stem}" for path in WORKFLOWS), separators=(",", ":"))
    cards = ("JSON.stringify([...document.querySelectorAll('[data-testid^=\"template-workflow-\"]')]"
             f".map(e => e.dataset.testid).filter(t => t !== 'template-workflows-content').sort()) === {json.dumps(expected_cards)}")
    for attempt in range(3):
        browser.click_element(pack_category, "the pack's category in the templates dialog")
        try:
            browser.wait_for(cards, 10, "exactly the pack's example cards")
            break
        except AssertionError:
            if attempt == 2:
                raise
    browser.screenshot(SCREENSHOTS / "templates.png")
    browser.click_element(f"document.querySelector('[data-testid=\"template-workflow-{EXAMPLE}\"]')", "the card")
    workflow = json.loads((ROOT / "example_workflows" / f"{EXAMPLE}.json").read_text())
    expected_types = json.dumps(sorted(node["type"] for node in workflow["nodes"]), separators=(",", ":"))
    browser.wait_for(f"JSON.stringify(app.graph._nodes.map(n => n.type).sort()) === {json.dumps(expected_types)}",
                     30, "the example in the graph")
    # The front end's own conversion of what it loaded is ours (tests/comfy_workflow.py) of the file.
    front_end = browser.evaluate("app.graphToPrompt().then(p => p.output)")
    ours = to_api_prompt(workflow, comfyui.get("/object_info"))
    assert {k: (v["class_type"], v["inputs"]) for k, v in front_end.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in ours.items()}
    _run_and_check_the_stats_widget(browser, comfyui)


def test_nodes_are_in_the_node_library_under_omnigen2(browser):
    browser.click_element("document.querySelector('button[aria-label^=\"Node Library\"]')", "the Node Library button")
    folder = "[...document.querySelectorAll('[role=treeitem][aria-level=\"1\"]')].find(e => e.getAttribute('aria-label') === 'OmniGen2')"
    browser.click_element(f"{by_text('OmniGen2', folder)}", "the OmniGen2 folder")
    names = browser.wait_for(
        f"(() => {{ const f = {folder}; const items = f ? [...f.querySelectorAll('[role=treeitem][aria-level=\"2\"]')] : [];"
        " return items.length ? items.map(e => e.getAttribute('aria-label')) : null; })()", 30, "the folder's entries")
    browser.screenshot(SCREENSHOTS / "node-library.png")
    assert sorted(names) == sorted(load_pack().NODE_DISPLAY_NAME_MAPPINGS.values())
    browser.click_element("document.querySelector('button[aria-label^=\"Node Library\"]')", "the Node Library button")


def _history_of_the_run(comfyui, timeout: float = 60) -> dict:
    """The /history entry of the run the front end queued (its seed is SEED); ComfyUI writes it once the whole
    prompt is done, a moment after the sampler's "executed" message reached the page."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in comfyui.get("/history").values():
            seeds = [n["inputs"].get("seed") for n in entry["prompt"][2].values()]
            if SEED in seeds and entry.get("status", {}).get("completed") is not None:
                return entry
        time.sleep(0.25)
    raise AssertionError("the front end's run is not in /history")


def _run_and_check_the_stats_widget(browser, comfyui) -> None:
    """Give the loaded example its seed, press Run, and read the figures the stats widget shows against /history's;
    the saved picture reads back as the edit asks."""
    seed = (f"(() => {{ for (const node of app.graph._nodes) for (const w of node.widgets || []) {{"
            f" if (w.name === 'seed') w.value = {SEED}; if (w.name === 'control_after_generate') w.value = 'fixed'; }}"
            " app.graph.setDirtyCanvas(true, true); return true; })()")
    browser.evaluate(seed)
    browser.click_element("document.querySelector('[data-testid=\"queue-button\"] button')", "the Run button")
    sampler = "app.graph._nodes.find(n => n.type === 'OmniGen2CachedSampler')"
    text = browser.wait_for(f"(() => {{ const n = {sampler}; return n && n.omnigen2StatsElement && n.omnigen2StatsElement.innerText; }})()",
                            300, "the stats on the sampler node")
    entry = _history_of_the_run(comfyui)
    assert entry["status"]["status_str"] == "success"
    (sampler_id,) = [k for k, n in entry["prompt"][2].items() if n["class_type"] == "OmniGen2CachedSampler"]
    stats = entry["outputs"][sampler_id]["omnigen2_stats"][0]
    rows = dict(line.split(": ", 1) for line in text.splitlines())
    assert rows["steps"] == str(stats["steps"]) == "20"
    assert rows["ref tokens computed"] == f"{stats['reference_tokens_computed']:,}"
    assert rows["ref tokens reused"].split(" ")[0] == f"{stats['reference_tokens_reused']:,}"
    assert "time per step" in rows
    browser.evaluate(f"(() => {{ const n = {sampler}; app.canvas.ds.offset = [-n.pos[0] + 520, -n.pos[1] + 150];"
                     " app.canvas.ds.scale = 1; app.graph.setDirtyCanvas(true, true); })()")
    time.sleep(1)
    shot = browser.screenshot(SCREENSHOTS / "stats-after-run.png")
    assert shot.stat().st_size > 10_000
    (pictures,) = comfyui.saved_images(entry).values()
    assert scene_matches(read_scene(pictures[0]), BUNDLED_EXPECTED[f"{EXAMPLE}.json"])
