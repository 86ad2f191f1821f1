"""The served-model interface the deployment driver, daemon, health checks and endpoint use.

:class:`ServedModel` is what a loaded version offers to the rest of the agent;
:class:`edgefleet.agent.model.runtime.LoadedModel` implements it. Code that
only moves models around (driver, daemon, serving set, health checks) types
against this protocol, so a change to the runtime's internals cannot leak
into them unnoticed and nothing threads an untyped ``Any`` through.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from edgefleet.agent.model.runtime import Prediction
    from edgefleet.agent.model.schema import ModelSchema
    from edgefleet.core.manifest import Manifest


class ServedModel(Protocol):
    """One model version ready to serve (thread-safe)."""

    name: str
    version: int
    task: str
    labels: list[Any] | None
    schema: ModelSchema
    input_names: list[str]
    output_names: list[str]
    bundle_dir: Path | None
    bundle_sha256: str | None
    manifest: Manifest | None

    def validate(self, X: Any) -> np.ndarray:
        """``X`` checked and converted for a single-input model."""
        ...

    def predict(self, X: Any) -> Prediction:
        """A batch through the single input."""
        ...

    def predict_validated(self, X: np.ndarray) -> Prediction:
        """A batch :meth:`validate` already returned."""
        ...

    def predict_inputs(self, feeds: Mapping[str, Any]) -> Prediction:
        """A batch given by input name (every input of the model)."""
        ...
