"""The models being served right now: :class:`ServingSet`, model name -> :class:`LoadedModel`.

Invariants:

- Readers never lock and never see a half-made change: the mapping is
  replaced as a whole (copy on write) under a writer lock, and a single
  reference assignment is atomic in CPython.
- A request that already holds a ``LoadedModel`` finishes on it even if a
  swap happens meanwhile; the old session is released when the last request
  drops it.
- ``ready`` is False until the owner says the agent is ready (the daemon sets
  it once its models are loaded); ``/v2/health/ready`` answers from it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from edgefleet.agent.errors import ModelNotFoundError
from edgefleet.agent.model.runtime import LoadedModel

SwapListener = Callable[[str, "LoadedModel | None"], None]


class ServingSet:
    """Thread-safe registry of the active version of each model."""

    def __init__(self, models: Mapping[str, LoadedModel] | None = None, *, ready: bool = True):
        self._models: dict[str, LoadedModel] = dict(models or {})
        self._write_lock = threading.Lock()
        self._listeners: list[SwapListener] = []
        self.ready = ready

    def swap(self, name: str, loaded: LoadedModel | None) -> LoadedModel | None:
        """Serve ``loaded`` under ``name`` (None removes it); returns what was served before."""
        if loaded is not None and loaded.name != name:
            raise ValueError(f"model {loaded.name!r} cannot be served under the name {name!r}")
        with self._write_lock:
            models = dict(self._models)
            previous = models.pop(name, None)
            if loaded is not None:
                models[name] = loaded
            self._models = models
            listeners = list(self._listeners)
        for listener in listeners:
            listener(name, loaded)
        return previous

    def remove(self, name: str) -> LoadedModel | None:
        return self.swap(name, None)

    def get(self, name: str, version: int | str | None = None) -> LoadedModel:
        """The served model ``name`` (at ``version`` if given); ModelNotFoundError otherwise."""
        loaded = self._models.get(name)
        if loaded is None:
            raise ModelNotFoundError(f"model {name!r} is not served here")
        if version is not None and str(version) != str(loaded.version):
            raise ModelNotFoundError(
                f"model {name!r} version {version} is not served here "
                f"(serving version {loaded.version})"
            )
        return loaded

    def find(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def snapshot(self) -> dict[str, LoadedModel]:
        """A consistent copy of name -> model at this instant."""
        return dict(self._models)

    def names(self) -> list[str]:
        return sorted(self._models)

    def on_swap(self, listener: SwapListener) -> None:
        """Call ``listener(name, loaded_or_None)`` after every swap (e.g. to reset metrics)."""
        with self._write_lock:
            self._listeners.append(listener)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)
