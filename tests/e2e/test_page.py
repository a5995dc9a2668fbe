"""The web page (frontend_static/) in a real headless Chromium against the real local stack.

Chromium is the Debian package (/usr/bin/chromium) driven by Playwright; no browser is
downloaded. Every page records console errors and uncaught exceptions and each test asserts
there were none (besides the browser's own "Failed to load resource" line for a status the test
provoked on purpose). Screenshots at desktop and phone width go to test-artifacts/e2e/.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.imagegen import artwork, encode

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
GALLERY_SEEDS = range(7100, 7112)  # distinct from other tests' seeds: no dedup surprises
QUERY_SEED = 7300
NEIGHBORS = 5
INDEX_TIMEOUT_S = 120.0


# -- helpers ----------------------------------------------------------------------------------


def api_get(stack, path: str) -> dict:
    request = urllib.request.Request(
        f"{stack.base_url}{path}", headers={"Authorization": f"Bearer {stack.token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def indexed(stack) -> int:
    with urllib.request.urlopen(f"{stack.base_url}/health", timeout=30) as answer:
        return int(json.loads(answer.read())["indexed"])


def display(label: str) -> str:
    return label[:1].upper() + label[1:]


def percent(p: float, digits: int = 1) -> str:
    return f"{p * 100:.{digits}f}%"


class PageProbe:
    """A page plus the console errors and uncaught exceptions it produced."""

    def __init__(self, page: Page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def assert_no_errors(
        self, provoked_statuses: tuple[int, ...] = (), also_allowed: tuple[str, ...] = ()
    ) -> None:
        # Chromium itself logs every failed fetch; those the test provoked are expected.
        allowed = [
            re.compile(
                r"Failed to load resource: the server responded with a status of "
                rf"({'|'.join(map(str, provoked_statuses)) or 'none'})\b"
            ),
            *(re.compile(pattern) for pattern in also_allowed),
        ]
        unexpected = [e for e in self.errors if not any(p.search(e) for p in allowed)]
        assert unexpected == []


def open_page(browser, stack, viewport: dict, *, token: str | None = None) -> PageProbe:
    context = browser.new_context(viewport=viewport, device_scale_factor=1)
    probe = PageProbe(context.new_page())
    probe.page.goto(f"{stack.base_url}/")
    probe.page.wait_for_selector("html[data-ready=true]")
    if token is not None:
        probe.page.fill("#token-input", token)
    return probe


def query_png() -> tuple[bytes, tuple[int, int, int]]:
    img = artwork(QUERY_SEED, size=(240, 180))
    means = tuple(int(round(v)) for v in np.asarray(img, dtype=np.float64).mean(axis=(0, 1)))
    return encode(img, "PNG"), means


def choose_file(page: Page, name: str, mime: str, data: bytes) -> None:
    page.set_input_files("#file-input", {"name": name, "mimeType": mime, "buffer": data})


def canvas_ink(page: Page, selector: str) -> float:
    """Share of the canvas's pixels that are not transparent."""
    return page.eval_on_selector(
        selector,
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                  return n / (d.length / 4); }""",
    )


def analyze(page: Page, scope: str = "class", trigger=None) -> dict:
    """Click Analyze (or run `trigger`) and return the /predict answer the page received."""
    with page.expect_response(lambda r: "/predict" in r.url) as answer:
        (trigger or (lambda: page.click("#analyze-button")))()
    response = answer.value
    assert f"scope={scope}" in response.request.url
    assert response.request.headers.get("authorization", "").startswith("Bearer ")
    return {"status": response.status, "body": response.json()}


def no_horizontal_overflow(page: Page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def gallery(local_stack) -> int:
    """Index a few generated works through the lake's incoming/ drop; return the indexed count."""
    incoming = local_stack.lake_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    before = indexed(local_stack)
    names = []
    for seed in GALLERY_SEEDS:
        name = f"page-{seed}.jpg"
        part = incoming / f".{name}.part"
        part.write_bytes(encode(artwork(seed), "JPEG", quality=90))
        part.rename(incoming / name)  # the watcher never sees half a file
        names.append(name)
    deadline = time.monotonic() + INDEX_TIMEOUT_S
    while time.monotonic() < deadline:
        if not any((incoming / n).exists() for n in names):
            count = indexed(local_stack)
            if count >= before + len(names):
                return count
        time.sleep(0.3)
    raise AssertionError(
        f"works not indexed within {INDEX_TIMEOUT_S:.0f} s:\n{local_stack.log_tail()}"
    )


@pytest.fixture(autouse=True, scope="module")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# -- tests ------------------------------------------------------------------------------------


def test_analyze_shows_type_probability_bars_and_similar_works(browser, local_stack, gallery):
    probe = open_page(browser, local_stack, DESKTOP, token=local_stack.token)
    page = probe.page
    data, means = query_png()
    choose_file(page, "query.png", "image/png", data)

    page.wait_for_selector("#preview-image[src^='blob:']")
    assert page.eval_on_selector("#preview-image", "img => img.complete && img.naturalWidth") == 240
    assert canvas_ink(page, "#histogram-canvas") > 0.05
    # The histogram's text equivalent is computed from the browser's decode of the same pixels.
    described = page.get_attribute("#histogram-canvas", "aria-label")
    found = tuple(int(v) for v in re.findall(r"(?:red|green|blue) (\d+)", described))
    assert len(found) == 3 and all(abs(a - b) <= 1 for a, b in zip(found, means, strict=True))

    answer = analyze(page, "class")
    assert answer["status"] == 200
    result = answer["body"]
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#predicted-label") == display(result["label"])
    assert page.text_content("#predicted-probability") == percent(result["probability"])
    collection = api_get(local_stack, "/map?limit=1000")
    assert len(collection["points"]) >= gallery
    assert result["label"] in collection["classes"]

    bars = page.locator("#class-bars li")
    assert bars.count() == len(result["probabilities"]) == len(collection["classes"])
    shown = {
        bar.locator(".class-name").text_content(): bar.locator(".class-value").text_content()
        for bar in bars.all()
    }
    assert shown == {display(k): percent(v) for k, v in result["probabilities"].items()}

    # Same-type scope: only works of the predicted type, as many as the gallery holds (max 5).
    same_type = sum(1 for p in collection["points"] if p["label"] == result["label"])
    thumbs = page.locator("#neighbors .neighbor-button")
    assert thumbs.count() == len(result["neighbors"]) == min(NEIGHBORS, same_type)
    for i in range(thumbs.count()):
        assert thumbs.nth(i).locator(".neighbor-label").text_content() == display(result["label"])

    # All-types scope re-queries and shows five works, each thumbnail really loaded.
    all_types = analyze(page, "all", trigger=lambda: page.check("#scope-switch"))["body"]
    page.wait_for_function(
        "n => document.querySelectorAll('#neighbors .neighbor-button').length === n",
        arg=len(all_types["neighbors"]),
    )
    assert len(all_types["neighbors"]) == NEIGHBORS
    page.wait_for_function(
        "() => [...document.querySelectorAll('#neighbors img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    for i, neighbor in enumerate(all_types["neighbors"]):
        caption = thumbs.nth(i)
        assert caption.locator(".neighbor-label").text_content() == display(neighbor["label"])
        similarity = caption.locator(".neighbor-similarity").text_content()
        assert similarity == percent(neighbor["similarity"], 0)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "desktop-analyze.png"), full_page=True)

    # A thumbnail opens a larger view in a modal dialog; Esc closes it and focus comes back.
    thumbs.nth(1).click()
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => document.getElementById('viewer-image').naturalWidth > 0")
    assert page.text_content("#viewer-title") == display(all_types["neighbors"][1]["label"])
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    assert page.evaluate(
        "() => document.activeElement"
        " === document.querySelectorAll('#neighbors .neighbor-button')[1]"
    )
    probe.assert_no_errors()
    page.context.close()


def test_phone_width_layout_and_keyboard_file_choice(browser, local_stack, gallery):
    probe = open_page(browser, local_stack, PHONE, token=local_stack.token)
    page = probe.page
    # Playwright turns file-chooser interception on when the first listener is added, without
    # waiting; adding one now (and a round trip) keeps Enter from racing that switch.
    page.on("filechooser", lambda chooser: None)
    page.evaluate("1")
    # The drop zone is reachable with Tab and opens the file chooser with Enter.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "choose-button":
            break
    assert page.evaluate("document.activeElement.id") == "choose-button"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    data, _ = query_png()
    chooser.value.set_files({"name": "query.png", "mimeType": "image/png", "buffer": data})
    page.wait_for_selector("#preview-image[src^='blob:']")

    page.check("#scope-switch")  # before any result: no request, just the setting
    result = analyze(page, "all")["body"]
    page.wait_for_function(
        "n => document.querySelectorAll('#neighbors .neighbor-button').length === n",
        arg=NEIGHBORS,
    )
    assert page.text_content("#predicted-label") == display(result["label"])
    assert no_horizontal_overflow(page)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "phone-analyze.png"), full_page=True)

    page.click("a[href='#map']")
    page.wait_for_selector("#map-legend li")
    assert no_horizontal_overflow(page)
    page.screenshot(path=str(ARTIFACTS / "phone-map.png"), full_page=True)
    probe.assert_no_errors()
    page.context.close()


def test_missing_or_bad_token_says_so_and_focuses_the_token_field(browser, local_stack):
    probe = open_page(browser, local_stack, DESKTOP)
    page = probe.page
    data, _ = query_png()
    choose_file(page, "query.png", "image/png", data)
    page.wait_for_selector("#analyze-button:enabled")

    page.click("#analyze-button")  # no token at all: explained without a request
    page.wait_for_selector("#result-error:not([hidden])")
    assert "token" in page.text_content("#result-error").lower()
    assert page.evaluate("document.activeElement.id") == "token-input"

    page.fill("#token-input", "not-a-valid-token")
    answer = analyze(page)
    assert answer["status"] == 401
    page.wait_for_selector("#result-error:not([hidden])")
    message = page.text_content("#result-error")
    assert "access token is missing, expired or not valid" in message
    assert page.evaluate("document.activeElement.id") == "token-input"
    assert page.get_attribute("#token-input", "aria-invalid") == "true"
    assert page.is_hidden("#result")
    assert page.get_attribute("#announcer", "aria-live") == "polite"
    assert page.get_attribute("#result-error", "role") == "alert"
    probe.assert_no_errors(provoked_statuses=(401,))
    page.context.close()


def test_non_image_file_shows_the_servers_415_explanation(browser, local_stack):
    probe = open_page(browser, local_stack, DESKTOP, token=local_stack.token)
    page = probe.page
    choose_file(page, "notes.txt", "text/plain", b"These are notes, not a picture.\n" * 20)
    page.wait_for_selector("#histogram-note:has-text('cannot display')")
    answer = analyze(page)
    assert answer["status"] == 415
    page.wait_for_selector("#result-error:not([hidden])")
    shown = page.text_content("#result-error")
    assert "This file type is not supported." in shown
    assert answer["body"]["message"] in shown
    assert page.is_enabled("#analyze-button")  # the spinner is gone, the button usable again
    probe.assert_no_errors(provoked_statuses=(415,))
    page.context.close()


def test_too_large_file_is_explained_before_sending(browser, local_stack):
    probe = open_page(browser, local_stack, DESKTOP, token=local_stack.token)
    page = probe.page
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/predict" in r.url else None)
    big = io.BytesIO()
    big.write(encode(artwork(1, (64, 64)), "PNG"))
    big.write(b"\0" * (6 * 1024 * 1024))  # trailing bytes: still a PNG for the browser
    choose_file(page, "huge.png", "image/png", big.getvalue())
    page.wait_for_selector("#file-error:not([hidden])")
    assert "too large" in page.text_content("#file-error")
    assert "6.0 MB" in page.text_content("#file-error")
    assert page.is_disabled("#analyze-button")
    assert sent == []
    probe.assert_no_errors()
    page.context.close()


def test_collection_map_draws_every_work_and_rotates(browser, local_stack, gallery):
    probe = open_page(browser, local_stack, DESKTOP, token=local_stack.token)
    page = probe.page
    with page.expect_response(lambda r: "/map?" in r.url) as answer:
        page.click("a[href='#map']")
    collection = answer.value.json()
    assert answer.value.status == 200
    page.wait_for_selector("#map-legend li")
    assert page.get_attribute("a[href='#map']", "aria-current") == "page"

    legend = page.locator("#map-legend .legend-item")
    assert legend.count() == len(collection["classes"])
    counts = [int(item.locator(".legend-count").text_content()) for item in legend.all()]
    assert sum(counts) == len(collection["points"]) >= gallery

    page.wait_for_function("() => document.getElementById('map-canvas').width > 0")
    page.wait_for_timeout(100)  # one animation frame
    assert canvas_ink(page, "#map-canvas") > 0.001
    before = page.eval_on_selector("#map-canvas", "c => c.toDataURL()")
    page.focus("#map-canvas")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowUp")
    page.wait_for_timeout(100)
    assert page.eval_on_selector("#map-canvas", "c => c.toDataURL()") != before

    # Hiding a type removes its points from the plot.
    legend.nth(counts.index(max(counts))).click()
    page.wait_for_timeout(100)
    assert page.get_attribute(
        f"#map-legend li:nth-child({counts.index(max(counts)) + 1}) button", "aria-pressed"
    ) == "false"
    hidden_ink = canvas_ink(page, "#map-canvas")
    legend.nth(counts.index(max(counts))).click()
    page.wait_for_timeout(100)
    assert canvas_ink(page, "#map-canvas") > hidden_ink
    page.screenshot(path=str(ARTIFACTS / "desktop-map.png"), full_page=True)
    probe.assert_no_errors()
    page.context.close()


def test_paste_and_drop_choose_a_file_too(browser, local_stack):
    probe = open_page(browser, local_stack, DESKTOP, token=local_stack.token)
    page = probe.page
    data, _ = query_png()
    make_event = """([kind, bytes, name]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name, { type: 'image/png' }));
        if (kind === 'paste') {
          document.body.dispatchEvent(new ClipboardEvent('paste',
            { clipboardData: transfer, bubbles: true, cancelable: true }));
        } else {
          document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop',
            { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
    }"""
    page.evaluate(make_event, ["paste", list(data), "pasted.png"])
    page.wait_for_selector("#file-info:has-text('pasted.png')")
    page.wait_for_selector("#preview-image[src^='blob:']")
    assert page.is_enabled("#analyze-button")

    page.evaluate(make_event, ["drop", list(data), "dropped.png"])
    page.wait_for_selector("#file-info:has-text('dropped.png')")
    assert "240 × 180 px" in page.text_content("#file-info")
    assert canvas_ink(page, "#histogram-canvas") > 0.05
    probe.assert_no_errors()
    page.context.close()


def test_slow_answer_and_network_failure_are_explained(browser, local_stack):
    """Fault injection in the browser's network layer: a /predict that never answers (the page
    gives up after config.json's requestTimeoutMs) and one whose connection fails."""
    probe = open_page(browser, local_stack, DESKTOP, token=local_stack.token)
    page = probe.page
    page.route(
        "**/config.json",
        lambda route: route.fulfill(json={"apiBaseUrl": "", "requestTimeoutMs": 1500}),
    )
    page.reload()
    page.wait_for_selector("html[data-ready=true]")
    data, _ = query_png()
    choose_file(page, "query.png", "image/png", data)
    page.wait_for_selector("#analyze-button:enabled")

    held = []
    page.route("**/predict?*", lambda route: held.append(route))  # never answered
    page.click("#analyze-button")
    page.wait_for_selector("#analyze-button.is-busy")
    assert page.is_disabled("#analyze-button")
    assert page.get_attribute("#analyze-button", "aria-busy") == "true"
    assert page.is_visible("#analyze-button .spinner")
    page.wait_for_selector("#result-error:not([hidden])", timeout=10_000)
    assert "taking too long" in page.text_content("#result-error")
    assert page.is_enabled("#analyze-button")
    assert not page.is_visible("#analyze-button .spinner")
    assert len(held) == 1

    page.unroute("**/predict?*")
    page.route("**/predict?*", lambda route: route.abort("connectionfailed"))
    page.click("#analyze-button")
    page.wait_for_selector("#result-error:has-text('Could not reach')")
    assert page.is_enabled("#analyze-button")
    probe.assert_no_errors(also_allowed=(r"net::ERR_(CONNECTION_FAILED|FAILED|ABORTED)",))
    page.context.close()
