"""``cache_dir/openvino/<key>/``: one converted IR per model and host, safe for many Python workers
on one host starting together.

* the IR is built in a temporary directory inside ``cache_dir/openvino`` and renamed into place
  in one ``os.rename``: a reader sees no directory or a complete one, never half an IR;
* an advisory lock (``flock``, lock.py) makes the other workers wait for the first one's IR
  instead of all converting at once (each conversion holds a TensorFlow graph of the model in
  memory); if the lock cannot be had (a file system without ``flock``, a stuck holder) they
  convert too, and the rename decides: the loser deletes its own copy and uses the winner's;
* a cached IR that cannot be read, does not match the model (input or output shape) or was
  written by another version of the conversion (ir.CONVERSION) is moved aside and rebuilt;
  temporary directories left by killed workers are removed after an hour. The IR is float32
  whatever the precision: one copy serves float32 and bfloat16 workers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import time

from lookalike.embed.openvino import convert
from lookalike.embed.openvino.ir import CONVERSION, IR_XML, META, fsync_dir, one_line
from lookalike.embed.openvino.lock import ConversionLock

log = logging.getLogger(__name__)

SUBDIR = "openvino"
TEMP_PREFIX = ".tmp-"
STALE_PREFIX = ".stale-"
# A temporary directory older than this was left by a worker that died while converting.
ABANDONED_AFTER_S = 3600.0


def ir_dir(cache_dir: str, key: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), SUBDIR, key)


def cached_ir(ov, core, inference_model, name, cache_dir, key, input_shape, dim) -> tuple[str, bool, float]:
    """(IR directory, whether it was converted now, seconds converting)."""
    root = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), SUBDIR)
    target = os.path.join(root, key)
    if valid(core, target, input_shape, dim, quiet=True):
        return target, False, 0.0
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"OpenVINO cache for {name}: cannot create {root} ({one_line(exc)})") from exc
    with ConversionLock(os.path.join(root, f".{key}.lock")):
        # Another worker may have finished while this one waited.
        if valid(core, target, input_shape, dim):
            return target, False, 0.0
        _remove_abandoned(root)
        if os.path.exists(target):
            _set_aside(root, key, target, "it cannot be read or does not match the model")
        started = time.perf_counter()
        staging = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{key}-{os.getpid()}-", dir=root)
        try:
            os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the IR from other users' workers
            convert.to_ir(ov, core, inference_model, name, staging, input_shape, dim)
            seconds = time.perf_counter() - started
            try:
                os.rename(staging, target)  # atomic: readers see nothing or the whole IR
                fsync_dir(root)
                return target, True, seconds
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise RuntimeError(
                        f"OpenVINO cache for {name}: cannot move the IR into {target} ({one_line(exc)})"
                    ) from exc
            # Another worker renamed its IR into place first (it converted without the lock): use theirs.
            if valid(core, target, input_shape, dim):
                log.info("OpenVINO IR %s: another worker won the race; using its copy", target)
                return target, True, seconds
            raise RuntimeError(f"OpenVINO cache for {name}: {target} appeared while converting but cannot be read")
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def valid(core, ir_dir: str, input_shape: tuple, dim: int, quiet: bool = False) -> bool:
    """Whether ``ir_dir`` holds a readable IR of a model with this input and output, written by this
    version of the conversion. ``quiet``: no warning about what is wrong with it (it is checked
    again, with the lock held, before anything is done about it)."""
    warn = log.debug if quiet else log.warning
    xml = os.path.join(ir_dir, IR_XML)
    if not os.path.isdir(ir_dir):
        return False
    try:
        with open(os.path.join(ir_dir, META), encoding="utf-8") as handle:
            conversion = json.load(handle).get("conversion")
    except (OSError, ValueError, AttributeError):
        conversion = None
    if conversion != CONVERSION:
        warn(
            "OpenVINO IR %s was written by conversion %s, this is conversion %d; converting again",
            ir_dir,
            conversion,
            CONVERSION,
        )
        return False
    try:
        model = core.read_model(xml)
        got_in = model.inputs[0].get_partial_shape()
        got_out = model.outputs[0].get_partial_shape()
        ok = (
            len(model.inputs) == 1
            and len(model.outputs) == 1
            and got_in.rank.get_length() == 4
            and got_in[0].is_dynamic
            and tuple(got_in[i].get_length() for i in (1, 2, 3)) == input_shape
            and got_out.rank.get_length() == 2
            and got_out[1].get_length() == dim
        )
    except Exception as exc:
        warn("OpenVINO IR %s cannot be read (%s); converting again", ir_dir, one_line(exc))
        return False
    if not ok:
        warn(
            "OpenVINO IR %s does not match the model (input %s, output %s; expected (?, %s), (?, %d)); "
            "converting again",
            ir_dir,
            got_in,
            got_out,
            ", ".join(map(str, input_shape)),
            dim,
        )
    return ok


def _set_aside(root: str, key: str, target: str, why: str) -> None:
    stale = tempfile.mkdtemp(prefix=f"{STALE_PREFIX}{key}-", dir=root)
    try:
        os.rename(target, os.path.join(stale, key))
        log.warning("OpenVINO IR %s: %s; moved aside and converting again", target, why)
    except FileNotFoundError:
        pass  # another worker moved it first
    shutil.rmtree(stale, ignore_errors=True)


def _remove_abandoned(root: str) -> None:
    """Temporary and set-aside directories of workers that died while converting."""
    now = time.time()
    for entry in os.scandir(root):
        if entry.name.startswith((TEMP_PREFIX, STALE_PREFIX)) and entry.is_dir(follow_symlinks=False):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > ABANDONED_AFTER_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except FileNotFoundError:
                pass
