"""``FunctionTransformer`` with a numpy element-wise function, as ONNX.

skl2onnx converts a ``FunctionTransformer`` only when its function is None
(identity). Tabular pipelines commonly hold ``FunctionTransformer(np.log1p)``
on skewed numeric columns, so this module replaces skl2onnx's converter with
one that also knows a short table of numpy functions, each a fixed ONNX op
chain on float inputs (several inputs are concatenated first, as skl2onnx
does for the identity). Any other function (a lambda, a custom function,
``kw_args``) is refused before conversion with one line naming it; its code
is Python, and ONNX cannot carry it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.packager.errors import UnsupportedModelError

# numpy function -> ONNX ops applied in turn; ("Add", 1.0) adds a constant.
_OPS: dict[Any, tuple[tuple[str, float | None], ...]] = {
    np.log1p: (("Add", 1.0), ("Log", None)),
    np.log: (("Log", None),),
    np.exp: (("Exp", None),),
    np.expm1: (("Exp", None), ("Sub", 1.0)),
    np.sqrt: (("Sqrt", None),),
    np.abs: (("Abs", None),),
}
SUPPORTED = "None (identity), " + ", ".join(f"np.{f.__name__}" for f in _OPS)


def _func_name(func: Any) -> str:
    return str(getattr(func, "__name__", None) or type(func).__name__)


def check_function_transformers(parts: list[Any]) -> None:
    """Refuse a FunctionTransformer whose function has no ONNX form (one line)."""
    from sklearn.preprocessing import FunctionTransformer

    for part in parts:
        if not isinstance(part, FunctionTransformer) or part.func is None:
            continue
        if part.func not in _OPS or part.kw_args:
            raise UnsupportedModelError(
                f"FunctionTransformer(func={_func_name(part.func)}) has no ONNX form: "
                f"edgefleet converts FunctionTransformer with func {SUPPORTED}, no kw_args"
            )


def _shape(operator: Any) -> None:
    import copy

    n = operator.inputs[0].get_first_dimension()
    widths = [v.type.shape[1] for v in operator.inputs]
    operator.outputs[0].type = copy.deepcopy(operator.inputs[0].type)
    operator.outputs[0].type.shape = [n, None if None in widths else sum(widths)]


def _convert(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto
    from skl2onnx.common._apply_operation import apply_concat, apply_identity

    func = operator.raw_operator.func
    source = operator.inputs[0].full_name
    if len(operator.inputs) > 1:
        source = scope.get_unique_variable_name("function_concat")
        apply_concat(scope, [i.full_name for i in operator.inputs], source, container, axis=1)
    if func is None:
        apply_identity(scope, source, operator.outputs[0].full_name, container)
        return
    steps = _OPS[func]
    for i, (op, constant) in enumerate(steps):
        last = i == len(steps) - 1
        out = operator.outputs[0].full_name if last else scope.get_unique_variable_name(op)
        inputs = [source]
        if constant is not None:
            name = scope.get_unique_variable_name("function_constant")
            container.add_initializer(name, TensorProto.FLOAT, [], [constant])
            inputs.append(name)
        container.add_node(op, inputs, [out], name=scope.get_unique_operator_name(op))
        source = out


_registered = False


def register_function_transformer() -> None:
    """Install the converter above in skl2onnx (once per process)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from sklearn.preprocessing import FunctionTransformer

    update_registered_converter(FunctionTransformer, "SklearnFunctionTransformer", _shape, _convert)
    _registered = True
