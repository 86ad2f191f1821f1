"""edgefleet packager: registry, conversion, quantization, validation, bundle build."""
