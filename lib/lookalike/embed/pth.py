"""Read PyTorch ``.pth`` state dicts into NumPy without PyTorch.

Why: the EfficientNet-Lite0 weights ship as a PyTorch checkpoint, and the jobs must not depend on
PyTorch (a large install on every executor) just to read 4.7M floats. A ``.pth`` file is a pickle,
and unpickling runs whatever the file names, so this reader uses a restricted unpickler that only
resolves the few globals a state dict needs and refuses everything else with a ``ValueError``.
Nothing named by the file is ever imported or called: the torch names map to local stand-ins.

Formats:
  legacy (``torch.save(..., _use_new_zipfile_serialization=False)``, PyTorch < 1.6 default):
      pickle(magic number), pickle(protocol version), pickle(sys_info), pickle(the object, whose
      storages are persistent ids ``('storage', type, key, location, numel[, view_metadata])``),
      pickle(list of storage keys), then per key in that order: int64 LE element count, raw bytes.
  zip (the default since PyTorch 1.6): ``<name>/data.pkl`` with the same persistent ids and one
      ``<name>/data/<key>`` member of raw bytes per storage.

Tensors are rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``;
here that becomes ``numpy.lib.stride_tricks.as_strided`` on the storage plus a copy, after a bounds
check (so a crafted size/stride cannot read outside the storage). Views sharing one storage,
storage offsets, non-contiguous strides and 0-d tensors all come out as independent C-contiguous
arrays. bfloat16 (which NumPy lacks) is widened to float32 exactly.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 24

# torch.<Name>Storage -> the little-endian dtype of its bytes. BFloat16 is read as uint16 and
# widened to float32 (bfloat16 is the top half of a float32).
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<Name>Storage`` class named by the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


@dataclass(eq=False)
class _Storage:
    """One storage (a flat typed buffer); ``data`` is filled once its bytes have been read."""

    type: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None
    # Old PyTorch (< 0.4) storage views: (root storage, element offset).
    root: _Storage | None = None
    root_offset: int = 0

    def array(self) -> np.ndarray:
        if self.root is not None:
            return self.root.array()[self.root_offset : self.root_offset + self.numel]
        assert self.data is not None
        return self.data


@dataclass(eq=False)
class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: a tensor to materialise once storages are read."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED``; storages through ``storage_for``."""

    def __init__(self, file, name: str, storage_for=None):
        super().__init__(file)
        self._name = name
        self._storage_for = storage_for

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)  # a fresh object: a BUILD opcode cannot alter a shared one
        try:
            found = _ALLOWED[(module, name)]
        except KeyError:
            raise ValueError(
                f"{self._name}: refusing to unpickle the global {module}.{name}: only a "
                f"PyTorch state dict of plain tensors can be read"
            ) from None
        if found is collections.OrderedDict:
            return found
        return lambda *args: found(*args)  # fresh, so that a BUILD opcode cannot alter ours

    def persistent_load(self, pid):
        if self._storage_for is None:
            raise ValueError(f"{self._name}: unexpected persistent id {pid!r} outside the state dict")
        return self._storage_for(pid)


def _describe(path_or_fileobj) -> str:
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        return os.fspath(path_or_fileobj)
    return getattr(path_or_fileobj, "name", None) or repr(path_or_fileobj)


def read_state_dict(path_or_fileobj: str | os.PathLike | BinaryIO) -> collections.OrderedDict[str, np.ndarray]:
    """The tensors of a PyTorch state dict file, as NumPy arrays, keys in file order.

    Raises ``ValueError`` (naming the file) for anything that is not a state dict of tensors:
    a forbidden global in the pickle, a truncated or inconsistent file, a non-dict top level.
    """
    name = _describe(path_or_fileobj)
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        with open(path_or_fileobj, "rb") as f:
            return _read(f, name)
    fileobj = path_or_fileobj
    if not (hasattr(fileobj, "seekable") and fileobj.seekable()):
        fileobj = io.BytesIO(fileobj.read())
    return _read(fileobj, name)


def _read(f: BinaryIO, name: str):
    start = f.tell()
    head = f.read(4)
    f.seek(start)
    try:
        if head == _ZIP_MAGIC:
            with zipfile.ZipFile(f) as archive:
                obj = _read_zip(archive, name)
        else:
            obj = _read_legacy(f, name)
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        UnicodeDecodeError,
    ) as exc:
        raise ValueError(f"{name}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    return _state_dict(obj, name)


def _storage_factory(name: str, storages: dict, on_new=None):
    """A ``persistent_load`` that validates storage ids and returns one ``_Storage`` per key."""

    def storage_for(pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"{name}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if (
            not isinstance(storage_type, _StorageType)
            or not isinstance(key, str)
            or not isinstance(numel, int)
            or numel < 0
        ):
            raise ValueError(f"{name}: malformed storage id {pid!r}")
        storage = storages.get(key)
        if storage is None:
            storage = storages[key] = _Storage(storage_type, key, numel)
            if on_new is not None:
                on_new(storage)
        elif storage.type != storage_type or storage.numel != numel:
            raise ValueError(f"{name}: storage {key} is referenced with different types or sizes")
        if view is None:
            return storage
        view_key, offset, view_size = view
        if not (isinstance(offset, int) and isinstance(view_size, int) and 0 <= offset and offset + view_size <= numel):
            raise ValueError(f"{name}: storage view {view!r} lies outside storage {key}")
        return _Storage(storage_type, f"{key}/{view_key}", view_size, root=storage, root_offset=offset)

    return storage_for


def _read_legacy(f: BinaryIO, name: str):
    magic = _Unpickler(f, name).load()
    if magic != MAGIC_NUMBER:
        raise ValueError(f"{name}: not a PyTorch checkpoint (no legacy magic number, no zip header)")
    protocol = _Unpickler(f, name).load()
    if protocol != PROTOCOL_VERSION:
        raise ValueError(f"{name}: unsupported PyTorch legacy protocol version {protocol!r}")
    sys_info = _Unpickler(f, name).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{name}: a big-endian checkpoint; only little-endian ones are supported")
    storages: dict = {}
    obj = _Unpickler(f, name, _storage_factory(name, storages)).load()
    keys = _Unpickler(f, name).load()
    if not isinstance(keys, list) or sorted(keys) != sorted(storages) or len(set(keys)) != len(keys):
        raise ValueError(f"{name}: the storage list does not match the storages the tensors reference")
    for key in keys:
        storage = storages[key]
        count = int.from_bytes(_read_exact(f, 8, name, key), "little", signed=True)
        if count != storage.numel:
            raise ValueError(f"{name}: storage {key} holds {count} elements, its tensors say {storage.numel}")
        raw = _read_exact(f, count * storage.type.dtype.itemsize, name, key)
        storage.data = _decode(raw, storage.type)
    return obj


def _read_zip(archive: zipfile.ZipFile, name: str):
    pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ValueError(f"{name}: a zip file without exactly one data.pkl: not a PyTorch checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "byteorder" in archive.namelist():
        order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if order != "little":
            raise ValueError(f"{name}: a {order}-endian checkpoint; only little-endian ones are supported")

    def load(storage: _Storage):
        member = f"{prefix}data/{storage.key}"
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise ValueError(f"{name}: storage {storage.key} is missing ({member})") from None
        expected = storage.numel * storage.type.dtype.itemsize
        if info.file_size != expected:
            raise ValueError(f"{name}: {member} holds {info.file_size} bytes, its tensors say {expected}")
        storage.data = _decode(archive.read(member), storage.type)

    with archive.open(pickles[0]) as f:
        return _Unpickler(f, name, _storage_factory(name, {}, on_new=load)).load()


def _read_exact(f: BinaryIO, n: int, name: str, key: str) -> bytes:
    """n bytes, in chunks (a crafted count must not allocate before the file proves that long)."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            raise ValueError(f"{name}: truncated: storage {key} ends {left} bytes early")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _decode(raw: bytes, storage_type: _StorageType) -> np.ndarray:
    data = np.frombuffer(raw, dtype=storage_type.dtype)
    if storage_type.name == "BFloat16Storage":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(storage_type.dtype.newbyteorder("="), copy=False)


def _materialise(ref: _TensorRef, key: str, name: str) -> np.ndarray:
    data = ref.storage.array()
    size, stride, offset = ref.size, ref.stride, ref.offset
    if not (
        isinstance(offset, int)
        and len(size) == len(stride)
        and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
    ):
        raise ValueError(f"{name}: tensor {key} has a malformed size {size}, stride {stride} or offset {offset}")
    if 0 in size:
        return np.zeros(size, dtype=data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.shape[0]:
        raise ValueError(
            f"{name}: tensor {key} (size {size}, stride {stride}, offset {offset}) reaches "
            f"past the end of its storage of {data.shape[0]} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=tuple(s * data.itemsize for s in stride), writeable=False
    )
    return np.array(view, order="C")


def _state_dict(obj, name: str) -> collections.OrderedDict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"{name}: holds a {type(obj).__name__}, not a state dict")
    result = collections.OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"{name}: state dict key {key!r} is not a string")
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{name}: {key} is a {type(value).__name__}, not a tensor")
        result[key] = _materialise(value, key, name)
    return result
