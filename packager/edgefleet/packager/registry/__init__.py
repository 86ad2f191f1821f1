"""The model registry: versions, lineage, aliases and stored artifacts.

See :mod:`edgefleet.packager.registry.store` for the on-disk layout and its
invariants, :mod:`~edgefleet.packager.registry.intake` for how a registration
is prepared and :mod:`~edgefleet.packager.registry.refs` for ``NAME:VERSION``
and ``NAME@ALIAS`` references.
"""

from __future__ import annotations

from edgefleet.packager.registry.records import (
    DatasetInfo,
    FeatureSpec,
    ModelVersion,
    ReferenceInfo,
)
from edgefleet.packager.registry.refs import ModelRef, parse_ref, parse_versioned_ref
from edgefleet.packager.registry.store import (
    DEFAULT_PATH,
    ENV_VAR,
    NewVersion,
    Registry,
    resolve_registry_path,
)

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "DatasetInfo",
    "FeatureSpec",
    "ModelRef",
    "ModelVersion",
    "NewVersion",
    "ReferenceInfo",
    "Registry",
    "parse_ref",
    "parse_versioned_ref",
    "resolve_registry_path",
]
