"""Errors of the packager, each derived from a core family (so the CLI exit code follows).

The tree::

    PackagerError (EdgefleetError)
    ├── NotARegistryError (UsageError)           the folder exists but is not a registry      -> 2
    ├── RegistryEntryNotFoundError (NotFoundError)  no such model, version or alias           -> 2
    ├── RetiredVersionError (UsageError)         a retired version cannot be packed or aliased -> 2
    ├── InvalidNameError (UsageError)            a model name, alias, reference or k=v is malformed -> 2
    ├── DataFileError (UsageError)               reference, labels or dataset file unusable   -> 2
    │                                            (unreadable, wrong column count, NaN, ...)
    ├── UnsupportedModelError (UsageError)       unknown model type, pickle that is not an
    │                                            estimator, ONNX signature we cannot pack     -> 2
    ├── QuantizationNotApplicableError (UsageError)  an explicit --quantize the graph cannot take -> 2
    ├── PackKeyError (UsageError)                signing key missing or unreadable            -> 2
    ├── RegistryStorageError (StorageError)      SQLite or artifact folder failed             -> 1
    ├── OutputFolderError (StorageError)         the --out folder cannot be created            -> 1
    ├── ModelLoadError (OperationalError)        unpickling or ONNX parsing failed            -> 1
    ├── ConversionError (OperationalError)       skl2onnx failed or the result does not load  -> 1
    ├── FidelityError (OperationalError)         converted model disagrees with the original  -> 1
    ├── QuantizationError (OperationalError)     onnxruntime's quantizer failed               -> 1
    ├── AccuracyDropError (OperationalError)     the requested variant loses too much accuracy -> 1
    └── BundleTooLargeError (OperationalError)   bundle over the profile's max_bundle_bytes   -> 1

Unknown device profiles raise core's ``ProfileError`` (exit 2) unchanged.
"""

from __future__ import annotations

from edgefleet.core.errors import (
    EdgefleetError,
    NotFoundError,
    OperationalError,
    StorageError,
    UsageError,
)


class PackagerError(EdgefleetError):
    """Base of the packager's errors."""


class NotARegistryError(PackagerError, UsageError):
    """The registry path exists but does not hold an edgefleet registry."""


class RegistryEntryNotFoundError(PackagerError, NotFoundError):
    """No such model, version or alias in the registry."""


class RetiredVersionError(PackagerError, UsageError):
    """A retired version was asked to be packed or aliased."""


class InvalidNameError(PackagerError, UsageError):
    """A model name, alias, model reference or ``k=v`` option is malformed."""


class DataFileError(PackagerError, UsageError):
    """A reference-data, labels or dataset file cannot be used."""


class UnsupportedModelError(PackagerError, UsageError):
    """The model file is of an unknown type, not an estimator, or not packable."""


class QuantizationNotApplicableError(PackagerError, UsageError):
    """An explicitly requested quantization does not apply to this graph or profile."""


class PackKeyError(PackagerError, UsageError):
    """The signing key file is missing, unreadable or not a private key."""


class RegistryStorageError(PackagerError, StorageError):
    """The registry database or artifact folder could not be read or written."""


class OutputFolderError(PackagerError, StorageError):
    """The output folder for a bundle cannot be created."""


class ModelLoadError(PackagerError, OperationalError):
    """A model file could not be unpickled or parsed."""


class ConversionError(PackagerError, OperationalError):
    """Conversion to ONNX failed or produced a model onnxruntime cannot load."""


class FidelityError(PackagerError, OperationalError):
    """The converted model does not reproduce the original's outputs."""


class QuantizationError(PackagerError, OperationalError):
    """onnxruntime's quantizer failed on a graph it should handle."""


class AccuracyDropError(PackagerError, OperationalError):
    """The explicitly requested variant loses more accuracy than allowed."""


class BundleTooLargeError(PackagerError, OperationalError):
    """The bundle is larger than the device profile allows."""
