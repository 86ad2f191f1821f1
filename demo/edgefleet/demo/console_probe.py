"""The demo's look at the fleet console: the hub's API answers, and the viewer token works.

The demo's hub serves the REST API and dashboard (``hub serve --api``); the demo creates
a viewer token with ``hub token create`` and prints the dashboard's URL and the token so
a person can open it while the story runs. These calls are what a browser or a CI job
would make, over HTTP, so the summary's console check is from the API's own answers.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from edgefleet.core.errors import OperationalError

_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ConsoleAccess:
    url: str  # the dashboard, e.g. http://127.0.0.1:PORT/
    token: str  # a viewer token: read-only
    role: str = "viewer"

    def api(self, path: str) -> str:
        return f"{self.url.rstrip('/')}/api/v1/{path.lstrip('/')}"


def _get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:  # noqa: S310 - our own loopback URL
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise OperationalError(f"GET {url}: HTTP {e.code}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise OperationalError(f"GET {url}: {e}") from e


def api_healthy(url: str) -> bool:
    """The unauthenticated health probe answers (the API is up)."""
    try:
        return _get_json(f"{url.rstrip('/')}/api/v1/health").get("status") == "ok"
    except OperationalError:
        return False


def devices_seen(access: ConsoleAccess) -> list[str]:
    """Device ids the API lists with the viewer token (raises if the token is refused)."""
    page = _get_json(access.api("devices?limit=100"), access.token)
    return sorted(str(item.get("device")) for item in page.get("items", []))
