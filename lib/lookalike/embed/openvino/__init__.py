"""OpenVINO as the CPU runtime of a Keras model: converted once per host, cached, compiled per worker.

The Keras model (``Embedder.inference_model``: uint8 ``rgb_uint8`` (N, H, W, 3) in, preprocessing
layer, trunk, (N, dim) out) stays the source of truth. :func:`compile_model` converts it to an
OpenVINO IR (``model.xml`` + ``model.bin``, float32 weights) the first time a host sees a key,
caches it under ``cache_dir/openvino/<key>/``, and compiles it for this CPU with the precision asked
for. Measured on 2 cores of a Xeon with AMX-BF16 (images/s, batch 32, 2 threads):

                       Keras f32  Keras bf16  OpenVINO f32  OpenVINO bf16
    efficientnet_lite0     114        81          239            575
    vgg16                   13        84           13             91

bfloat16 matters most for VGG16 (7x), OpenVINO most for the EfficientNets, whose depthwise
convolutions TensorFlow runs slowly (and more slowly still in bfloat16).

Nothing process-wide is changed: no environment variables, no Keras or TensorFlow settings. The
OpenVINO ``Core`` is this package's own.

    installed.py  whether openvino can be imported here, and its version
    ir.py         the IR's files and names, shared by the conversion, the cache and the runtime
    lock.py       the advisory lock that lets one worker per host convert while the others wait
    cache.py      cache_dir/openvino/<key>/: atomic publication, validation, cleanup
    telemetry.py  the converter kept from sending usage data during a conversion
    agreement.py  the converted IR checked against the Keras model before it is cached
    convert.py    Keras -> IR
    runtime.py    compile_model / load_cached and the CompiledModel they return

model.py and hardware.py, above this package, import the module they need; the names below are the
package's public surface.
"""

from lookalike.embed.openvino.cache import ABANDONED_AFTER_S, STALE_PREFIX, SUBDIR, TEMP_PREFIX
from lookalike.embed.openvino.installed import available, version
from lookalike.embed.openvino.ir import CONVERSION, IR_BIN, IR_XML, META
from lookalike.embed.openvino.runtime import CompiledModel, compile_model, load_cached

__all__ = [
    "ABANDONED_AFTER_S",
    "CONVERSION",
    "IR_BIN",
    "IR_XML",
    "META",
    "STALE_PREFIX",
    "SUBDIR",
    "TEMP_PREFIX",
    "CompiledModel",
    "available",
    "compile_model",
    "load_cached",
    "version",
]
