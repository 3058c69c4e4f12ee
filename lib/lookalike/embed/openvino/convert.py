"""Keras -> OpenVINO IR: the model traced (TensorFlow) or exported (other backends), converted,
checked against Keras, and written with the metadata the cache validates."""

from __future__ import annotations

import json
import os
import shutil
import time

from lookalike.embed.backend import keras_backend
from lookalike.embed.openvino import agreement
from lookalike.embed.openvino.installed import version
from lookalike.embed.openvino.ir import CONVERSION, INPUT_NAME, IR_BIN, IR_XML, META, OUTPUT_NAME, fsync, one_line
from lookalike.embed.openvino.telemetry import without_telemetry


def to_ir(ov, core, inference_model, name: str, out_dir: str, input_shape: tuple, dim: int) -> None:
    """Write ``out_dir/model.xml`` and ``model.bin`` (float32 weights, dynamic batch) and check them."""
    saved = os.path.join(out_dir, "saved_model")
    try:
        if keras_backend() == "tensorflow":
            ov_model = from_tf_function(ov, inference_model, input_shape)
        else:
            ov_model = from_saved_model(ov, inference_model, saved)
        (model_input,), (model_output,) = ov_model.inputs, ov_model.outputs
        shape = model_input.get_partial_shape()
        if not shape[0].is_dynamic:
            ov_model.reshape({model_input: ov.PartialShape([-1, *input_shape])})
        model_input.get_tensor().set_names({INPUT_NAME})
        model_output.get_tensor().set_names({OUTPUT_NAME})
        xml = os.path.join(out_dir, IR_XML)
        # compress_to_fp16 (the default) would store float16 weights: float32 results must not lose them.
        ov.save_model(ov_model, xml, compress_to_fp16=False)
        del ov_model
        shutil.rmtree(saved, ignore_errors=True)
        differs = agreement.check(core, inference_model, xml, input_shape)
    except Exception as exc:
        raise RuntimeError(f"OpenVINO {version()} cannot convert {name} ({one_line(exc)})") from exc
    if differs is not None:
        raise RuntimeError(
            f"OpenVINO {version()} converted {name}, but its float32 results differ from Keras' "
            f"({differs}): not using it; set model.runtime=keras"
        )
    with open(os.path.join(out_dir, META), "w", encoding="utf-8") as handle:
        json.dump(
            {
                "conversion": CONVERSION,
                "model": name,
                "openvino": version(),
                "keras_backend": keras_backend(),
                "input_shape": list(input_shape),
                "dim": dim,
                "created": time.time(),
                "pid": os.getpid(),
            },
            handle,
        )
    for file_name in (IR_XML, IR_BIN, META):
        fsync(os.path.join(out_dir, file_name))


def from_tf_function(ov, inference_model, input_shape: tuple):
    """The fast way (2-3x a SavedModel's): the model traced as a tf.function, converted in memory."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *input_shape], tf.uint8, name=INPUT_NAME)
    function = tf.function(
        lambda pixels: inference_model(pixels, training=False), input_signature=[spec], autograph=False
    ).get_concrete_function()
    with without_telemetry():
        ov_model = ov.convert_model(function)
    # Activations with a custom gradient (swish in EfficientNetV2) leave IdentityN nodes that the
    # converter also returns as outputs: keep the function's own output only.
    wanted = function.outputs[0].name
    outputs = [output for output in ov_model.outputs if wanted in output.get_names()]
    if len(outputs) != 1:
        raise ValueError(
            f"the converted model has no single output named {wanted} "
            f"(outputs: {[sorted(o.get_names())[:2] for o in ov_model.outputs][:5]})"
        )
    return ov_model if len(ov_model.outputs) == 1 else ov.Model(outputs, ov_model.get_parameters(), ov_model.get_name())


def from_saved_model(ov, inference_model, saved: str):
    """Other Keras backends (JAX): Keras' own SavedModel export (needs TensorFlow installed)."""
    inference_model.export(saved, format="tf_saved_model", verbose=False)
    with without_telemetry():
        return ov.convert_model(saved)
