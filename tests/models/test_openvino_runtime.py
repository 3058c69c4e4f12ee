"""OpenVINO as the CPU runtime: the same embeddings as Keras, and a conversion cache that many Python
workers on one host can share.

Tolerances (measured on 60 sample photos with OpenVINO 2026.4 on a Xeon with AMX-BF16; the margins
are ~100x for float32 and ~2-5x for bfloat16):

* float32, every backbone: cosine >= 0.99999 per row and max |difference| <= 1e-4 of the row's norm
  (measured: cosine > 0.9999999, difference <= 9e-7 of the norm).
* bfloat16 against Keras float32, random-init weights: cosine >= 0.9995 per row (measured min
  0.99994, efficientnetv2b0). With ImageNet weights (efficientnet_lite0, the meaningful case):
  cosine >= 0.995 per row and median >= 0.998 (measured min 0.9975, median 0.9990 on the 60 sample
  photos); Keras' own mixed_bfloat16 is as far from float32 (min 0.9973, median 0.9992). Each
  photo's nearest neighbour among the other 59 is the float32 one in >= 95% of rows (measured 100%;
  Keras bfloat16 98.3%), the top 5 overlap >= 95% (measured 98.7%; Keras bfloat16 97.7%).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time

import numpy as np
import pytest

from lookalike.config import ModelConfig
from lookalike.embed import backbones, images
from lookalike.embed import openvino as openvino_runtime
from lookalike.embed.openvino import convert, telemetry

pytestmark = pytest.mark.skipif(not openvino_runtime.available(), reason="openvino is not installed")

F32_MIN_COSINE = 0.99999
F32_MAX_RELATIVE = 1e-4
BF16_RANDOM_MIN_COSINE = 0.9995
BF16_IMAGENET_MIN_COSINE = 0.995
BF16_IMAGENET_MEDIAN_COSINE = 0.998
BF16_IMAGENET_SAME_TOP1 = 0.95
BF16_IMAGENET_TOP5_OVERLAP = 0.95


def config(name: str, **changes) -> ModelConfig:
    """Keras float32 whatever the defaults become: the reference the OpenVINO copy is held to."""
    values = dict(name=name, weights="none", seed=1, batch_size=8, precision="float32", runtime="keras")
    values.update(changes)
    return ModelConfig(**values)


def sample_photos(count: int | None = 8, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """``count`` photos spread over the kinds of garment (None: all 60), resized to ``size``."""
    from tests.support.paths import SAMPLE_DIR

    paths = sorted(SAMPLE_DIR.rglob("*.jpg"))
    if count is not None:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
    return np.stack([images.decode(p.read_bytes(), 0, size)[0] for p in paths])


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def relative_difference(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max(1) / np.linalg.norm(want, axis=1)


def listing(cache_dir) -> list[str]:
    return sorted(os.listdir(os.path.join(cache_dir, openvino_runtime.SUBDIR)))


def ir_dirs(cache_dir) -> list[str]:
    return [name for name in listing(cache_dir) if not name.startswith(".")]


def leftovers(cache_dir) -> list[str]:
    return [
        name
        for name in listing(cache_dir)
        if name.startswith((openvino_runtime.TEMP_PREFIX, openvino_runtime.STALE_PREFIX))
    ]


def file_ids(ir_dir) -> dict:
    return {
        name: (os.stat(os.path.join(ir_dir, name)).st_ino, os.stat(os.path.join(ir_dir, name)).st_mtime_ns)
        for name in (openvino_runtime.IR_XML, openvino_runtime.IR_BIN)
    }


@pytest.fixture(scope="module")
def photos():
    return sample_photos()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ov-cache"))


@pytest.fixture(scope="module")
def lite0_random(cache_dir, photos):
    """(embedder, Keras float32 output, OpenVINO float32 function, seconds the first compile took)."""
    from lookalike.embed import model

    embedder = model.Embedder(config("efficientnet_lite0"), threads=2)
    started = time.perf_counter()
    compiled = openvino_runtime.compile_model(
        embedder.inference_model,
        precision="float32",
        threads=2,
        cache_dir=cache_dir,
        key="lite0-random",
        batch_size=len(photos),
    )
    return embedder, embedder.embed(photos), compiled, time.perf_counter() - started


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_openvino_computes_the_keras_embeddings_for_every_backbone_random_init_weights(
    name, cache_dir, photos, lite0_random
):
    from lookalike.embed import model

    if name == "efficientnet_lite0":
        embedder, want, f32, _ = lite0_random
    else:
        embedder = model.Embedder(config(name), threads=2)
        if embedder.input_size != (224, 224):  # Lite1 and Lite2 take 240 and 260 px
            photos = sample_photos(size=embedder.input_size)
        want = embedder.embed(photos)
        f32 = openvino_runtime.compile_model(
            embedder.inference_model,
            precision="float32",
            threads=2,
            cache_dir=cache_dir,
            key=f"{name}-random",
            batch_size=len(photos),
        )
    assert f32.converted or name == "efficientnet_lite0"
    got = f32(photos)
    assert got.shape == want.shape == (len(photos), backbones.get(name).dim("avg")) and got.dtype == np.float32
    assert np.isfinite(got).all()
    assert cosines(got, want).min() >= F32_MIN_COSINE
    assert relative_difference(got, want).max() <= F32_MAX_RELATIVE
    assert f32.precision == "f32"

    bf16 = openvino_runtime.compile_model(
        embedder.inference_model,
        precision="bfloat16",
        threads=2,
        cache_dir=cache_dir,
        key=f32.ir_dir.rsplit(os.sep, 1)[-1],
        batch_size=len(photos),
    )
    assert not bf16.converted  # one IR serves both precisions
    low = bf16(photos)
    assert low.dtype == np.float32 and np.isfinite(low).all()
    assert cosines(low, want).min() >= BF16_RANDOM_MIN_COSINE
    if "amx_bf16" in open("/proc/cpuinfo").read() or "avx512_bf16" in open("/proc/cpuinfo").read():
        assert bf16.precision == "bf16" and not np.array_equal(low, got)


def test_float32_and_bfloat16_with_imagenet_weights_efficientnet_lite0(cache_dir):
    """The meaningful case: trained weights, whose activations random init does not reproduce. All
    60 sample photos, so that neighbours can be compared too."""
    from lookalike.embed import model

    photos = sample_photos(None)
    embedder = model.Embedder(config("efficientnet_lite0", weights="imagenet", batch_size=32), threads=2)
    want = embedder.embed(photos)
    f32 = openvino_runtime.compile_model(
        embedder.inference_model, precision="float32", threads=2, cache_dir=cache_dir, key="lite0-imagenet"
    )
    got = f32(photos)
    assert cosines(got, want).min() >= F32_MIN_COSINE
    assert relative_difference(got, want).max() <= F32_MAX_RELATIVE
    bf16 = openvino_runtime.compile_model(
        embedder.inference_model, precision="bfloat16", threads=2, cache_dir=cache_dir, key="lite0-imagenet"
    )
    low = bf16(photos)
    agreement = cosines(low, want)
    assert agreement.min() >= BF16_IMAGENET_MIN_COSINE, agreement
    assert np.median(agreement) >= BF16_IMAGENET_MEDIAN_COSINE, agreement
    # What the product is about: each photo's nearest neighbours among the others.
    ours, theirs = neighbours(low), neighbours(want)
    assert (ours[:, 0] == theirs[:, 0]).mean() >= BF16_IMAGENET_SAME_TOP1
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ours, theirs, strict=False)]) >= BF16_IMAGENET_TOP5_OVERLAP


def neighbours(x, k=5):
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1)[:, :k]


def test_any_batch_size_and_threads_from_one_ir(lite0_random, photos):
    embedder, want, f32, _ = lite0_random
    assert f32.batch_size == 8 and 8 in f32._requests  # compiled for 8 images exactly
    for n in (8, 1, 3):
        np.testing.assert_allclose(f32(photos[:n]), want[:n], rtol=0, atol=1e-4 * np.abs(want).max())
    assert None in f32._requests  # 1 and 3 ran on a dynamic-shape copy, compiled when first needed
    assert f32(photos[:0]).shape == (0, embedder.dim)
    one = openvino_runtime.compile_model(
        embedder.inference_model,
        precision="float32",
        threads=1,
        cache_dir=os.path.dirname(os.path.dirname(f32.ir_dir)),
        key="lite0-random",
    )
    assert one.threads == 1 and not one.converted
    assert not one.pinned and not f32.pinned  # several workers per host must not share core 0
    np.testing.assert_allclose(one(photos), want, rtol=0, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="uint8"):
        f32(photos.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        f32(photos[:, :100])


def test_the_second_compile_reuses_the_cached_ir(lite0_random, cache_dir, photos, monkeypatch):
    embedder, _, first, first_seconds = lite0_random
    assert first.converted and first.convert_seconds > 0
    before = file_ids(first.ir_dir)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(convert, "to_ir", no_conversion)
    started = time.perf_counter()
    again = openvino_runtime.compile_model(
        embedder.inference_model, precision="float32", threads=2, cache_dir=cache_dir, key="lite0-random"
    )
    seconds = time.perf_counter() - started
    assert not again.converted and again.convert_seconds == 0 and again.ir_dir == first.ir_dir
    assert file_ids(again.ir_dir) == before
    assert seconds < first_seconds / 3, (seconds, first_seconds)
    assert np.array_equal(again(photos), first(photos))
    with open(os.path.join(again.ir_dir, openvino_runtime.META)) as handle:
        assert json.load(handle)["model"] == "model 'efficientnet_lite0'"


def _race_worker(cache_dir, key, barrier, out_prefix):
    from lookalike.embed import model

    embedder = model.Embedder(config("efficientnet_lite0"), threads=1)
    barrier.wait(timeout=300)
    compiled = openvino_runtime.compile_model(
        embedder.inference_model, precision="float32", threads=1, cache_dir=cache_dir, key=key
    )
    np.save(out_prefix + ".npy", compiled(sample_photos(4)))
    with open(out_prefix + ".json", "w") as handle:
        json.dump({"converted": compiled.converted, "ir_dir": compiled.ir_dir}, handle)


def test_two_processes_converting_the_same_model_at_once_share_one_ir(tmp_path):
    cache_dir = str(tmp_path / "cache")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_race_worker, args=(cache_dir, "raced", barrier, str(tmp_path / f"w{i}")))
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    outputs = [np.load(tmp_path / f"w{i}.npy") for i in range(2)]
    reports = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert np.array_equal(outputs[0], outputs[1])
    assert reports[0]["ir_dir"] == reports[1]["ir_dir"] == os.path.join(cache_dir, "openvino", "raced")
    # One converted; the other waited for it on the lock, then read its IR.
    assert sorted(report["converted"] for report in reports) == [False, True]
    assert ir_dirs(cache_dir) == ["raced"] and leftovers(cache_dir) == []
    assert sorted(os.listdir(reports[0]["ir_dir"])) == sorted(
        [openvino_runtime.IR_XML, openvino_runtime.IR_BIN, openvino_runtime.META]
    )


def test_the_loser_of_a_rename_race_uses_the_winners_ir_and_deletes_its_own(
    lite0_random, tmp_path, photos, monkeypatch
):
    """What happens when another worker converted without waiting for the lock and renamed first."""
    embedder, _, winner, _ = lite0_random
    cache_dir = str(tmp_path / "cache")
    target = os.path.join(cache_dir, "openvino", "contested")
    real_convert = convert.to_ir

    def convert_then_lose(*args):
        real_convert(*args)
        shutil.copytree(winner.ir_dir, target)  # the other worker's rename lands first

    monkeypatch.setattr(convert, "to_ir", convert_then_lose)
    compiled = openvino_runtime.compile_model(
        embedder.inference_model, precision="float32", threads=2, cache_dir=cache_dir, key="contested"
    )
    assert compiled.ir_dir == target
    assert ir_dirs(cache_dir) == ["contested"] and leftovers(cache_dir) == []
    assert np.array_equal(compiled(photos), winner(photos))


def test_a_broken_cached_ir_and_abandoned_temporary_directories_are_replaced(lite0_random, tmp_path, photos):
    embedder, want, _, _ = lite0_random
    cache_dir = str(tmp_path / "cache")
    root = os.path.join(cache_dir, "openvino")
    os.makedirs(os.path.join(root, "broken"))
    with open(os.path.join(root, "broken", openvino_runtime.IR_XML), "w") as handle:
        handle.write("<net>half an IR")
    open(os.path.join(root, "broken", openvino_runtime.IR_BIN), "w").close()
    with open(os.path.join(root, "broken", openvino_runtime.META), "w") as handle:
        json.dump({"conversion": openvino_runtime.CONVERSION}, handle)
    abandoned = os.path.join(root, f"{openvino_runtime.TEMP_PREFIX}broken-999-x")
    recent = os.path.join(root, f"{openvino_runtime.TEMP_PREFIX}broken-998-y")
    os.makedirs(abandoned)
    os.makedirs(recent)  # perhaps another worker converting right now: left alone
    os.utime(abandoned, (time.time() - 2 * openvino_runtime.ABANDONED_AFTER_S,) * 2)
    compiled = openvino_runtime.compile_model(
        embedder.inference_model, precision="float32", threads=2, cache_dir=cache_dir, key="broken"
    )
    assert compiled.converted
    assert cosines(compiled(photos), want).min() >= F32_MIN_COSINE
    assert ir_dirs(cache_dir) == ["broken"] and leftovers(cache_dir) == [os.path.basename(recent)]


def test_an_ir_from_another_version_of_the_conversion_is_converted_again(tmp_path):
    model, cache_dir = tiny_model(), str(tmp_path / "cache")
    first = openvino_runtime.compile_model(model, precision="float32", threads=1, cache_dir=cache_dir, key="tiny")
    meta = os.path.join(first.ir_dir, openvino_runtime.META)
    with open(meta) as handle:
        written = json.load(handle)
    assert written["conversion"] == openvino_runtime.CONVERSION
    with open(meta, "w") as handle:
        json.dump(dict(written, conversion=openvino_runtime.CONVERSION - 1), handle)
    again = openvino_runtime.compile_model(model, precision="float32", threads=1, cache_dir=cache_dir, key="tiny")
    assert again.converted and ir_dirs(cache_dir) == ["tiny"] and leftovers(cache_dir) == []
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(again(pixels), np.asarray(model.predict_on_batch(pixels)), rtol=1e-5, atol=1e-6)


def tiny_model():
    import keras

    from lookalike.embed import preprocessing

    keras.utils.set_random_seed(3)
    pixels = keras.Input(shape=(32, 32, 3), dtype="uint8", name="rgb_uint8")
    x = preprocessing.layer("caffe")(pixels)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    trunk_out = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(pixels, trunk_out, name="tiny")


def test_a_failed_conversion_is_a_clear_runtime_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    def unsupported(*args):
        raise ValueError("op 'FancyOp' is not supported")

    monkeypatch.setattr(convert, "from_tf_function", unsupported)
    cache_dir = str(tmp_path / "cache")
    with pytest.raises(RuntimeError, match=r"OpenVINO .* cannot convert model 'tiny' \(ValueError: op 'FancyOp'"):
        openvino_runtime.compile_model(tiny_model(), precision="float32", threads=1, cache_dir=cache_dir, key="tiny")
    assert listing(cache_dir) in ([], [".tiny.lock"])


def test_a_conversion_that_computes_something_else_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("lookalike.embed.openvino.agreement.check", lambda *args: "cosine 0.5")
    cache_dir = str(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="differ from Keras' .*cosine 0.5.*model.runtime=keras"):
        openvino_runtime.compile_model(tiny_model(), precision="float32", threads=1, cache_dir=cache_dir, key="tiny")
    assert ir_dirs(cache_dir) == [] and leftovers(cache_dir) == []


def test_float16_and_other_bad_arguments_are_clear_errors(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="float16 is not supported by OpenVINO on CPU: use float32 or bfloat16"):
        openvino_runtime.compile_model(model, precision="float16", threads=0, cache_dir=str(tmp_path), key="k")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        openvino_runtime.compile_model(model, precision="int8", threads=0, cache_dir=str(tmp_path), key="k")
    for key in ("", "../escape", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="key must be a file name"):
            openvino_runtime.compile_model(model, precision="float32", threads=0, cache_dir=str(tmp_path), key=key)
    with pytest.raises(ValueError, match="threads"):
        openvino_runtime.compile_model(model, precision="float32", threads=-1, cache_dir=str(tmp_path), key="k")
    with pytest.raises(ValueError, match="batch_size"):
        openvino_runtime.compile_model(
            model, precision="float32", threads=1, cache_dir=str(tmp_path), key="k", batch_size=-1
        )
    assert not os.path.exists(os.path.join(tmp_path, "openvino"))


def test_nothing_process_wide_is_changed(tmp_path):
    import keras

    environ = dict(os.environ)
    policy = keras.config.dtype_policy().name
    compiled = openvino_runtime.compile_model(
        tiny_model(), precision="bfloat16", threads=1, cache_dir=str(tmp_path), key="tiny"
    )
    assert compiled(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 8)
    assert dict(os.environ) == environ and keras.config.dtype_policy().name == policy


def test_other_keras_backends_go_through_a_saved_model(tmp_path, monkeypatch):
    """JAX (or any backend but TensorFlow) cannot be traced by tf.function: Keras exports a
    SavedModel instead, converted from the staging directory and deleted with it."""
    monkeypatch.setattr(convert, "keras_backend", lambda: "jax")
    model, cache_dir = tiny_model(), str(tmp_path / "cache")
    compiled = openvino_runtime.compile_model(model, precision="float32", threads=1, cache_dir=cache_dir, key="tiny")
    assert sorted(os.listdir(compiled.ir_dir)) == sorted(
        [openvino_runtime.IR_XML, openvino_runtime.IR_BIN, openvino_runtime.META]
    )
    pixels = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(compiled(pixels), np.asarray(model.predict_on_batch(pixels)), rtol=1e-5, atol=1e-6)


def test_a_conversion_sends_no_usage_data_and_leaves_openvino_as_it_was(tmp_path, monkeypatch):
    # OpenVINO's converter reports usage over the network unless the host opted out (and unless
    # CI=true, which CI sets): take both away, and record whatever it tries to send.
    import importlib

    import openvino_telemetry

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no opt-out file from an earlier run
    sent = []
    monkeypatch.setattr(openvino_telemetry.Telemetry, "send_event", lambda self, *a, **k: sent.append(a), raising=False)
    monkeypatch.setattr(openvino_telemetry.Telemetry, "send_error", lambda self, *a, **k: sent.append(a), raising=False)
    users = [importlib.import_module(name) for name in telemetry.USERS]
    before = [module.tm for module in users]
    compiled = openvino_runtime.compile_model(
        tiny_model(), precision="float32", threads=1, cache_dir=str(tmp_path / "cache"), key="tiny"
    )
    assert compiled.converted and sent == []
    assert [module.tm for module in users] == before  # put back after the conversion
    assert not (tmp_path / "home" / "intel").exists()  # no client id written either


WORKER = r"""
import json, sys
import numpy as np
from lookalike.config import load_config
from lookalike.embed import model
cfg = load_config(None, ["model.weights=none", "model.seed=5", "model.name=" + sys.argv[1], "model.precision=float32",
                         "model.runtime=openvino", "model.batch_size=4", "model.cache_dir=" + sys.argv[2]]).model
embedder = model.Embedder(cfg, threads=1)
pixels = np.random.default_rng(0).integers(0, 256, (3, *embedder.input_size[::-1], 3), dtype=np.uint8)
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules, "dim": embedder.dim,
                  "weights": embedder.weights_tag, "vectors": embedder.embed(pixels).tolist()}))
"""


@pytest.mark.parametrize("name", ["vgg16", "efficientnet_lite0"])
def test_a_worker_that_finds_the_ir_cached_never_imports_keras_and_embeds_the_same_random_init_weights(name, tmp_path):
    """The first worker on a host builds the Keras model and converts it; the next ones start from
    the cached IR alone (no TensorFlow import, no network build: seconds per worker)."""
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cache = tmp_path / "cache"

    def worker() -> dict:
        done = subprocess.run(
            [sys.executable, str(script), name, str(cache)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = worker(), worker()
    assert first["tensorflow"] and first["keras"]
    assert not second["tensorflow"] and not second["keras"]
    assert (second["dim"], second["weights"]) == (first["dim"], first["weights"])
    np.testing.assert_array_equal(np.array(second["vectors"]), np.array(first["vectors"]))
    # An IR that does not match (here: another pooling's output length) is never used.
    (ir,) = [d for d in (cache / openvino_runtime.SUBDIR).iterdir() if not d.name.startswith(".")]
    assert (
        openvino_runtime.load_cached(
            name,
            input_shape=(224, 224, 3),
            dim=first["dim"] + 1,
            precision="float32",
            threads=1,
            cache_dir=str(cache),
            key=ir.name,
        )
        is None
    )
    assert (
        openvino_runtime.load_cached(
            name,
            input_shape=(224, 224, 3),
            dim=first["dim"],
            precision="float32",
            threads=1,
            cache_dir=str(cache),
            key="not-converted-yet",
        )
        is None
    )


def test_when_the_converters_modules_change_no_conversion_runs(monkeypatch):
    # Issue 24: the guard did nothing, silently, when the modules it patches were renamed.
    from lookalike.errors import ConfigError

    monkeypatch.setattr(telemetry, "USERS", ("json",))  # a release whose converter binds nothing as tm
    converted = []
    with pytest.raises(ConfigError, match="could not be kept from sending usage data"):
        with telemetry.without_telemetry():
            converted.append(True)
    assert converted == []
    monkeypatch.setattr(telemetry, "_telemetry_installed", lambda: False)  # nothing to send with
    with telemetry.without_telemetry():
        converted.append(True)
    assert converted == [True]
