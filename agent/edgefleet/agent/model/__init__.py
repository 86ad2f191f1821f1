"""The served model: loading a verified bundle, checking inputs, running, batch files.

- :mod:`.runtime`: :class:`~.runtime.LoadedModel` (one onnxruntime session per
  version) and :class:`~.runtime.Prediction`;
- :mod:`.schema`: the io schema as the runtime checks it (built from
  :mod:`edgefleet.core.io_schema`);
- :mod:`.tables`: input files of ``agent predict`` and the rows written back;
- :mod:`.tensors`: ``.npz`` inputs and outputs by tensor name;
- :mod:`.external_data`: the model may read external data only from its bundle;
- :mod:`.serving`: the set of models being served.
"""
