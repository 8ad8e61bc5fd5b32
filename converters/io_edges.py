"""Integer input and output for a model with layers kept in float (run in the TensorFlow child).

When a layer kept in float touches the model's input or output, TensorFlow's own I/O rewrite
gives up and leaves that end float32. The profile promised the board an integer end, so one is
put back: a DEQUANTIZE right after an integer input and a QUANTIZE right before an integer
output, with the scale and zero point of the full-int8 model's ends (what the manifest and the
daemon's preprocessing already describe).
"""

from __future__ import annotations

from typing import Any

IO_TYPES = ("int8", "uint8")


def integer_ends(data: bytes, io_dtype: str, edges: dict[str, Any]) -> bytes:
    """``data`` with every float32 input and output made ``io_dtype`` at the given quantization."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    if io_dtype not in IO_TYPES:
        return data
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    wanted = getattr(schema.TensorType, io_dtype.upper())
    sub = model.subgraphs[0]
    renamed: dict[int, int] = {}
    for position, index in enumerate(list(sub.inputs)):
        if sub.tensors[index].type != schema.TensorType.FLOAT32:
            continue
        new = _integer_copy(model, sub, index, wanted, edges["input"], "_int")
        sub.operators.insert(0, _op(model, schema.BuiltinOperator.DEQUANTIZE, new, index))
        sub.inputs[position] = renamed[index] = new
    for position, index in enumerate(list(sub.outputs)):
        if sub.tensors[index].type != schema.TensorType.FLOAT32:
            continue
        new = _integer_copy(model, sub, index, wanted, edges["output"], "_int")
        sub.operators.append(_op(model, schema.BuiltinOperator.QUANTIZE, index, new))
        sub.outputs[position] = renamed[index] = new
    for signature in model.signatureDefs or []:
        for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
            entry.tensorIndex = renamed.get(entry.tensorIndex, entry.tensorIndex)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _integer_copy(model: Any, sub: Any, index: int, tensor_type: int, quant: list[float],
                  suffix: str) -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    source = sub.tensors[index]
    tensor = schema.TensorT()
    tensor.shape = list(source.shape)
    tensor.shapeSignature = None if source.shapeSignature is None else \
        list(source.shapeSignature)
    tensor.type = tensor_type
    tensor.name = (source.name or b"") + suffix.encode()
    model.buffers.append(schema.BufferT())
    tensor.buffer = len(model.buffers) - 1
    params = schema.QuantizationParametersT()
    params.scale = [float(quant[0])]
    params.zeroPoint = [int(quant[1])]
    tensor.quantization = params
    sub.tensors.append(tensor)
    return len(sub.tensors) - 1


def _op(model: Any, builtin: int, source: int, target: int) -> Any:
    from tensorflow.lite.python import schema_py_generated as schema

    op = schema.OperatorT()
    op.opcodeIndex = _opcode(model, builtin)
    op.inputs = [source]
    op.outputs = [target]
    return op


def _opcode(model: Any, builtin: int) -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 2      # the int8 kernels of QUANTIZE and DEQUANTIZE
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1
