"""The dashboard in Debian's headless Chromium driven by Playwright, against a real hub store
with a running rollout and drift on one device."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.hub.console.consolekit import (
    DRIFTING_DEVICE,
    REFUSAL,
    REFUSING_DEVICE,
    ROLLOUT,
    ConsoleHub,
    populate,
    serve_api,
)
from tests.hub.fleet.fleetkit import MODEL, run_cli

pytestmark = pytest.mark.chromium

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = {
    "overview": "#/",
    "devices": "#/devices",
    "rollouts": "#/rollouts",
    "rollout": f"#/rollout/{ROLLOUT}",
    "drift-index": "#/drift",
    "drift": f"#/drift/{MODEL}?scope=device",
    "device": f"#/device/{REFUSING_DEVICE}",
    "alerts": "#/alerts",
}


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (scripts/install-system-deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[ConsoleHub, str]]:
    hub = populate(tmp_path / "hub")
    with serve_api(hub) as url:
        yield hub, url
    hub.store.close()


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def show(self, base: str, route: str) -> None:
        self.page.goto(f"{base}/{route}")
        self.page.wait_for_selector(f'body[data-loaded="{route}"]', timeout=30_000)


def sign_in(page: Any, base: str, token: str) -> Watched:
    watched = Watched(page)
    page.goto(base + "/")
    page.fill("#token", token)
    page.click("#signin")
    page.wait_for_selector('body[data-loaded="#/"]', timeout=30_000)
    return watched


def test_every_page_loads_without_errors(
    browser: Any, site: tuple[ConsoleHub, str], tmp_path: Path
) -> None:
    hub, base = site
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    watched = sign_in(page, base, hub.token("viewer"))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    for name, route in PAGES.items():
        watched.show(base, route)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert watched.errors == []
    assert sorted(p.stem for p in shots.iterdir()) == sorted(PAGES)
    # What the pages say comes from the hub: the refusal, the drifting device.
    watched.show(base, f"#/device/{REFUSING_DEVICE}")
    assert REFUSAL in page.inner_text("#refusal")
    watched.show(base, f"#/drift/{MODEL}?scope=device")
    assert f"device {DRIFTING_DEVICE}" in page.inner_text("#drift-headline")
    # A viewer sees no buttons that would change the rollout.
    watched.show(base, f"#/rollout/{ROLLOUT}")
    assert page.query_selector("#action-pause") is None


def test_drifted_device_is_two_clicks_from_the_overview(
    browser: Any, site: tuple[ConsoleHub, str]
) -> None:
    hub, base = site
    page = browser.new_page()
    watched = sign_in(page, base, hub.token("viewer"))
    page.get_by_role("link", name=f"{MODEL} (versions 1)").click()  # 1: drift by device
    page.wait_for_selector("#drift-headline", timeout=30_000)
    page.get_by_role("link", name=f"device {DRIFTING_DEVICE}").click()  # 2: the device
    page.wait_for_selector(f'body[data-loaded="#/device/{DRIFTING_DEVICE}"]', timeout=30_000)
    assert page.inner_text("h1") == f"Device {DRIFTING_DEVICE}"
    assert watched.errors == []


def test_operator_pauses_a_rollout_from_the_page(
    browser: Any, site: tuple[ConsoleHub, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hub, base = site
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    watched = sign_in(page, base, hub.token("operator"))
    watched.show(base, f"#/rollout/{ROLLOUT}")
    assert page.inner_text("#state") == "running"
    page.click("#action-pause")
    # (wait_for_function would evaluate a string: the page's CSP forbids that, rightly.)
    page.locator("#state", has_text="paused").wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "paused.png"), full_page=True)
    code, out, err = run_cli(
        capsys, "hub", "rollout", "status", ROLLOUT, "--config", str(hub.fx.config_path), "--json"
    )
    assert code == 0, err
    status = json.loads(out)
    assert status["state"] == "paused"
    assert status["events"][-1]["detail"] == "pause from the dashboard by operator-token"
    assert watched.errors == []


def test_overview_stays_under_300_kb(browser: Any, site: tuple[ConsoleHub, str]) -> None:
    hub, base = site
    page = browser.new_page()
    sizes: list[int] = []
    page.on("response", lambda r: sizes.append(len(r.body())) if r.ok else None)
    sign_in(page, base, hub.token("viewer"))
    assert 0 < sum(sizes) <= 300 * 1024
