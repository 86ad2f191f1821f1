"""edgefleet packager: registry, conversion, quantization, validation, bundle build.

Modules:

- ``registry/``: SQLite metadata and content-addressed artifacts (``store``),
  registration intake, ``NAME:VERSION``/``NAME@ALIAS`` references, compare;
- ``loading`` / ``tables``: model files (pickles run code: local files only)
  and reference data;
- ``graph`` / ``convert``: ONNX targets per onnxruntime version, skl2onnx
  conversion, opset clean-up, the fidelity check;
- ``quantize`` / ``selection`` / ``validate``: variants, measuring them, the
  auto choice;
- ``smoke`` / ``build``: the smoke set and ``edgefleet pack``;
- ``cli/``: the ``registry`` group and the ``pack`` command.
"""
