"""The demo in a real browser: `janus-like demo` on the embedded default model, driven by headless
Chromium (Debian's package) through Playwright. Screenshots go to test-artifacts/browser/."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from janus_like.evaluation.shapes import Scene, render

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 120_000  # a generation on 2 busy CPU cores, at most
STATUS = {
    "images": re.compile(r"\d+ image\(s\) in [\d.]+ s · seed \d+"),
    "answer": re.compile(r"answered in [\d.]+ s · seed \d+"),
}

pytestmark = pytest.mark.slow


def _needs(what: str, present: bool) -> None:
    """Skip where a browser piece is missing, except in CI (.ci/run installs them): there it fails."""
    if present:
        return
    reason = f"{what} is not installed (apt-get install chromium; pip install playwright); CI installs both"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_type():
    """Playwright's Chromium driver, checked before any server starts."""
    _needs("Chromium", Path(CHROMIUM).exists())
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _needs("Playwright", False)
    with sync_playwright() as playwright:
        yield playwright.chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`janus-like demo` on loopback and a free port; yields (url, its console log path)."""
    port, log = _free_port(), tmp_path_factory.mktemp("demo") / "console.log"
    with open(log, "w") as console:
        proc = subprocess.Popen(
            [sys.executable, "-m", "janus_like.cli", "demo", "--port", str(port)],
            cwd=REPO,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"the demo exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"the demo did not answer: {log.read_text()}"
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page(browser_type, server):
    """A page on the demo, in headless Chromium."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    browser = browser_type.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server[0])
    page.get_by_role("button", name="Generate").wait_for(timeout=WAIT_MS)
    yield page
    browser.close()


@pytest.fixture(scope="module")
def shape_png(tmp_path_factory) -> str:
    """A large red circle on the left, as the default model's world draws it (64 px)."""
    path = tmp_path_factory.mktemp("upload") / "shape.png"
    render(Scene.single("red", "circle", "large", "left"), 64).save(path)
    return str(path)


def _panel(page, tab: str):
    """Open a tab; the visible tab panel."""
    page.get_by_role("tab", name=tab, exact=True).click()
    return page.get_by_role("tabpanel").filter(visible=True)


def _shot(page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png")


def _fresh_status(panel, kind: str, act) -> str:
    """Do `act` and wait for a status line of that kind other than the one shown before; returns it."""
    from playwright.sync_api import expect

    line = panel.get_by_text(STATUS[kind])
    before = line.inner_text() if line.count() else None
    act()
    expect(line).to_be_visible(timeout=WAIT_MS)
    if before is not None:
        expect(line).not_to_have_text(before, timeout=WAIT_MS)
    return line.inner_text()


def _error_marks(page):
    """What Gradio shows for a failed event: the red "Error" pill on each output and the toast."""
    return page.locator(".error").filter(visible=True)


def test_draws_images_with_an_empty_seed_and_says_which_seed_it_used(page):
    from playwright.sync_api import expect

    panel = _panel(page, "Text → image")
    seed = panel.get_by_label("seed")
    expect(seed).to_have_value("")
    panel.get_by_label("prompt").fill("a red circle on the left")
    status = _fresh_status(panel, "images", panel.get_by_role("button", name="Generate").click)
    assert status.startswith("4 image(s)")
    expect(panel.locator(".gallery-item img")).to_have_count(4)
    _shot(page, "1-text-to-image")
    expect(seed).to_have_value("")  # still random for the next press


def test_an_error_shows_then_clears_after_a_good_retry(page, server):
    from playwright.sync_api import expect

    panel = _panel(page, "Text → image")
    panel.get_by_label("prompt").fill("   ")
    panel.get_by_role("button", name="Generate").click()
    expect(page.get_by_text("the prompt is empty")).to_be_visible(timeout=WAIT_MS)
    expect(_error_marks(page).first).to_be_visible()
    page.wait_for_timeout(500)  # the toast slides in
    _shot(page, "2-error")
    panel.get_by_label("prompt").fill("a blue square in the center")
    _fresh_status(panel, "images", panel.get_by_role("button", name="Generate").click)
    _shot(page, "3-error-cleared")
    expect(_error_marks(page)).to_have_count(0)
    expect(page.get_by_text("the prompt is empty")).to_have_count(0)
    console = server[1].read_text()
    refused = [line for line in console.splitlines() if "refused a request" in line]
    assert len(refused) == 1 and "the prompt is empty" in refused[0] and "Traceback" not in console


def test_chats_about_an_uploaded_image_over_two_turns(page, shape_png):
    from playwright.sync_api import expect

    panel = _panel(page, "Chat")
    panel.locator("input[type=file]").set_input_files(shape_png)
    box = panel.get_by_placeholder("Ask about an image")
    box.fill("What is in this image?")
    _fresh_status(panel, "answer", lambda: box.press("Enter"))
    conversation = panel.get_by_role("log")
    expect(conversation.locator("[data-testid=user] img")).to_have_count(1)  # the uploaded image, in the question
    first = conversation.inner_text()
    assert "red" in first and "circle" in first and "left" in first
    box.fill("Describe the image.")
    _fresh_status(panel, "answer", lambda: box.press("Enter"))
    expect(conversation.get_by_text("Describe the image.")).to_be_visible()
    _shot(page, "4-chat-two-turns")
    assert conversation.get_by_text("What is in this image?").count() == 1


def test_edits_an_uploaded_image_with_its_preview_visible(page, shape_png):
    from playwright.sync_api import expect

    panel = _panel(page, "Image edit")
    panel.locator("input[type=file]").set_input_files(shape_png)
    preview = panel.locator("[data-testid=image] img")
    expect(preview.first).to_be_visible(timeout=WAIT_MS)
    panel.get_by_label("instruction").fill("make it blue")
    status = _fresh_status(panel, "images", panel.get_by_role("button", name="Edit", exact=True).click)
    assert status.startswith("2 image(s)")
    expect(preview.first).to_be_visible()
    _shot(page, "5-image-edit")
