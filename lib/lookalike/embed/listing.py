"""Which images the embed job reads: the files under input.uri whose names match input.pattern,
each with an item id (the key without its extension, or what input.id_regex captures).

Local and Hadoop directories and small S3 prefixes are listed on the driver: the storage layer
pages through S3 or walks the directory. A larger s3:// input is listed by Spark tasks instead
(:func:`list_items`): the driver finds prefixes with delimiter listings, a few levels deep, and
each task lists some of them, so the listing scales with the cluster instead of taking hours page
by page on the driver.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice

from lookalike.config import InputConfig, S3Config
from lookalike.errors import DuplicateItemIdError, InputError, InputUnavailableError
from lookalike.io.storage import Entry, StorageError, storage_for
from lookalike.io.uris import is_s3, local_path, normalise_uri, split_s3

log = logging.getLogger(__name__)

# An s3:// input of at most this many keys is listed on the driver, in at most ten requests: faster
# than starting Spark tasks, and few enough rows to hold there. A larger one is listed by tasks.
SMALL_INPUT_KEYS = 10_000
# Parallel listing: the driver finds prefixes breadth first, one delimiter request per 1,000
# entries of a level; each prefix found is then listed by a Spark task. A few hundred prefixes keep
# every core of a large cluster listing while the driver's own requests stay a few seconds' worth;
# three levels cover the usual shop/category/sub-category layouts and keep discovery from
# wandering down a deep, narrow tree.
DISCOVERY_DEPTH = 3
ENOUGH_PREFIXES = 256
# A prefix holding more objects than this directly is not expanded but listed whole by one task:
# paging through its objects on the driver would be the very listing the tasks are for.
EXPAND_OBJECTS = 10_000
# More tasks than this would only add scheduling overhead: each then lists several prefixes.
MAX_LISTING_TASKS = 1024
# Rows per frame a listing task hands to Spark: bounds a task's memory, not its prefix's size.
ROWS_PER_FRAME = 10_000


def name_matches(name: str, pattern: str) -> bool:
    """``name`` matches one of the '|'-separated globs of ``pattern``, ignoring case."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p.strip().lower()) for p in pattern.split("|") if p.strip())


def item_id_for(key: str, id_regex: re.Pattern | None) -> str | None:
    """The item id of ``key`` (relative to input.uri); None when ``id_regex`` does not match."""
    if id_regex is None:
        stem, _ = os.path.splitext(key)
        return stem
    match = id_regex.search(key)
    if match is None:
        return None
    if "id" in match.groupdict():
        return match.group("id")
    return match.group(1) if match.groups() else match.group(0)


def assign_ids(listed: list[Entry], id_regex: str | None) -> list[tuple[str, Entry]]:
    """(item_id, file) pairs in id order; duplicate ids are an error naming both keys."""
    pattern = re.compile(id_regex) if id_regex else None
    seen: dict[str, Entry] = {}
    clashes: dict[str, tuple[str, str]] = {}
    skipped = 0
    for obj in listed:
        item_id = item_id_for(obj.key, pattern)
        if not item_id:
            skipped += 1
            continue
        if item_id in seen:
            clashes.setdefault(item_id, (seen[item_id].key, obj.key))
            continue
        seen[item_id] = obj
    if clashes:  # all of them at once: one run to learn of each would take as many runs
        first = sorted(clashes)[:CLASHES_SHOWN]
        raise duplicate_ids_error([(i, *clashes[i]) for i in first], len(clashes))
    _warn_skipped(skipped)
    return sorted(seen.items())


# Clashing item ids a duplicate-id error names (it counts all of them).
CLASHES_SHOWN = 20


def duplicate_id_error(item_id: str, first: str, second: str) -> DuplicateItemIdError:
    return DuplicateItemIdError(
        f"item id {item_id!r} comes from two keys: {first!r} and {second!r}. "
        f"Remove one, or set input.id_regex so that ids are unique."
    )


def duplicate_ids_error(clashes: list[tuple[str, str, str]], total: int) -> DuplicateItemIdError:
    """Every clashing id counted, the first CLASHES_SHOWN named with two of their keys."""
    if total == 1:
        return duplicate_id_error(*clashes[0])
    shown = "; ".join(f"{i!r} from {a!r} and {b!r}" for i, a, b in clashes)
    more = f" and {total - len(clashes)} more" if total > len(clashes) else ""
    return DuplicateItemIdError(
        f"{total} item ids come from two or more keys: {shown}{more}. "
        f"Remove the extra keys, or set input.id_regex so that ids are unique."
    )


def _warn_skipped(skipped: int) -> None:
    if skipped:
        log.warning("%d keys did not match input.id_regex and were skipped", skipped)


def input_uri(cfg: InputConfig) -> str:
    """``input.uri``; InputError when it is not set (the jobs require it, a caller in code may not)."""
    if cfg.uri is None:
        raise InputError("input.uri is not set: where the images are, e.g. s3://bucket/prefix/")
    return cfg.uri


# Marks a listing task's problem row whose storage failure may go away on a later run.
_TRANSIENT_MARK = "(transient) "


def _cannot_list(cfg: InputConfig, message: str, transient: bool = False) -> InputError:
    if message.startswith(_TRANSIENT_MARK):
        message, transient = message[len(_TRANSIENT_MARK) :], True
    error = InputUnavailableError if transient else InputError
    return error(f"cannot list {cfg.uri}: {message}. Nothing was written.")


def list_images(cfg: InputConfig, s3: S3Config, most: int | None = None) -> list[tuple[str, Entry]] | None:
    """List the image files under ``input.uri`` on the driver: (item_id, file) in id order. With
    ``most``: None as soon as there are more than ``most`` files, without listing the rest."""
    uri = normalise_uri(input_uri(cfg))
    storage = storage_for(uri, s3)
    try:
        found = list(islice(storage.list(uri), most + 1 if most is not None else None))
        if most is not None and len(found) > most:
            return None
        # S3 has no directories: an empty prefix is simply no images. Elsewhere a missing
        # directory is a typo worth naming.
        if not found and not is_s3(uri) and not storage.exists(uri):
            raise InputError(f"input.uri {cfg.uri!r}: no such directory ({local_path(uri)})")
    except StorageError as exc:
        raise _cannot_list(cfg, exc.message, exc.transient) from None
    listed = [o for o in found if name_matches(o.key.rsplit("/", 1)[-1], cfg.pattern)]
    return assign_ids(listed, cfg.id_regex)


def check_unique_ids(rows, problem_error: Callable[[str], Exception], key=None, problem=None) -> tuple[int, int]:
    """One Spark pass over ``rows`` (an item_id column; ``key`` and ``problem`` are columns too, by
    default those of that name), nothing per item collected. Raises ``problem_error(problem)`` for a
    row with a problem (a file or prefix that could not be read), DuplicateItemIdError naming both
    keys when two different keys give one item id. Returns (item ids, rows of the most-repeated
    id): more than 1 means some key came twice."""
    from pyspark.sql import functions as F

    key = F.col("key") if key is None else key
    problem = F.col("problem") if problem is None else problem
    found = F.col("problem").isNull()
    per_id = rows.groupBy("item_id").agg(
        F.count(F.lit(1)).alias("rows"),
        F.min(key).alias("first"),
        F.max(key).alias("second"),
        F.min(problem).alias("problem"),
    )
    clash = F.col("first") != F.col("second")
    check = per_id.agg(
        F.count(F.when(found, 1)).alias("items"),
        F.max(F.when(found, F.col("rows"))).alias("most"),
        F.count(F.when(clash, 1)).alias("clashes"),
        F.min("problem").alias("problem"),
    ).collect()[0]
    if check["problem"]:
        raise problem_error(check["problem"])
    if check["clashes"]:
        first = per_id.filter(clash).orderBy("item_id").limit(CLASHES_SHOWN).collect()
        raise duplicate_ids_error([(r["item_id"], r["first"], r["second"]) for r in first], check["clashes"])
    return check["items"] or 0, check["most"] or 0


def list_items(spark, cfg: InputConfig, s3: S3Config):
    """The images under input.uri as a DataFrame with exactly the columns of ``stage.ITEMS``, with
    input.pattern and input.id_regex applied; possibly empty. Raises InputError when input.uri
    cannot be listed or (local, Hadoop) does not exist, and DuplicateItemIdError naming both keys
    when two keys give one item id.

    An s3:// input of more than SMALL_INPUT_KEYS keys is listed by Spark tasks; that frame is
    persisted, because every action on it would list the bucket again: call its unpersist() once
    done with it (a no-op for the other inputs, listed on the driver by :func:`list_images`)."""
    uri = normalise_uri(input_uri(cfg))
    listed = list_images(cfg, s3, most=SMALL_INPUT_KEYS if is_s3(uri) else None)
    if listed is not None:
        return _items_on_driver(spark, listed)
    bucket, key = split_s3(uri)
    root = f"s3://{bucket}/{key.rstrip('/')}/" if key.rstrip("/") else f"s3://{bucket}/"
    try:
        tasks = _listing_tasks(storage_for(root, s3), root)
    except StorageError as exc:
        raise _cannot_list(cfg, exc.message, exc.transient) from None
    return _list_in_parallel(spark, cfg, s3, root, tasks)


def _items_on_driver(spark, listed: list[tuple[str, Entry]]):
    from lookalike import schemas
    from lookalike.embed.stage import ITEMS, items_frame

    return spark.createDataFrame(items_frame(listed), schema=schemas.spark_schema(ITEMS))


def _listing_tasks(storage, root: str) -> list[tuple[str, bool]]:
    """(prefix relative to ``root``, recursive) pairs that together list every key under ``root``
    exactly once: a recursive task for each prefix discovery did not expand, a one-level task for
    each expanded prefix that holds objects itself."""
    pending, tasks, leaves, expanded = deque([("", 0)]), [], 0, 0
    while pending and len(pending) + leaves < ENOUGH_PREFIXES:
        rel, depth = pending.popleft()
        level = _level(storage, root + rel) if depth < DISCOVERY_DEPTH else None
        if level is None:
            tasks.append((rel, True))
            leaves += 1
            continue
        subs, holds_objects = level
        expanded += 1
        if holds_objects:
            tasks.append((rel, False))
        pending.extend((rel + sub, depth + 1) for sub in subs)
    tasks += [(rel, True) for rel, _ in pending]
    log.info(
        "listing %s in parallel: %d prefixes (%d of them one level only), found by delimiter listings of %d",
        root,
        len(tasks),
        sum(1 for _, recursive in tasks if not recursive),
        expanded,
    )
    return tasks


def _level(storage, uri: str) -> tuple[list[str], bool] | None:
    """The sub-prefixes of ``uri`` and whether objects sit directly in it (not kept: a task lists
    them again rather than the driver holding them); None when more than EXPAND_OBJECTS do."""
    subs, objects = [], 0
    for found in storage.list_level(uri):
        if isinstance(found, str):
            subs.append(found)
        else:
            objects += 1
            if objects > EXPAND_OBJECTS:
                return None
    return subs, objects > 0


def _list_in_parallel(spark, cfg: InputConfig, s3: S3Config, root: str, tasks: list[tuple[str, bool]]):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from lookalike import schemas
    from lookalike.embed.stage import ITEMS

    sc = spark.sparkContext
    skipped = sc.accumulator(0)

    def list_tasks(frames):
        for frame in frames:
            for rel, recursive in zip(frame["prefix"], frame["recursive"], strict=True):
                yield from _task_rows(root, rel, bool(recursive), cfg, s3, skipped)

    rows = (
        spark.createDataFrame(
            sc.parallelize(tasks, min(len(tasks), MAX_LISTING_TASKS)), "prefix string, recursive boolean"
        )
        .mapInPandas(list_tasks, schema=schemas.spark_schema(ITEMS))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    failed = F.col("item_id") == ""
    try:
        items, _ = check_unique_ids(
            rows,
            lambda problem: _cannot_list(cfg, problem),
            key=F.when(~failed, F.expr(f"substring(uri, {len(root) + 1})")),
            problem=F.when(failed, F.col("uri")),
        )
    except BaseException:
        rows.unpersist()
        raise
    _warn_skipped(skipped.value)
    log.info("listed %d images under %s with %d prefixes listed in parallel", items, cfg.uri, len(tasks))
    # No row of a failed prefix is left (the check raised), so the persisted frame itself is the
    # answer: the caller's unpersist() frees it.
    return rows


def _task_rows(root: str, rel: str, recursive: bool, cfg: InputConfig, s3: S3Config, skipped) -> Iterator:
    """The ITEMS rows of one listing task (on an executor), ROWS_PER_FRAME at a time. A prefix that
    cannot be listed becomes one row with item_id '' and what went wrong in uri, for the driver."""
    regex = re.compile(cfg.id_regex) if cfg.id_regex else None
    storage = storage_for(root, s3)  # S3 clients are cached per worker thread and settings
    names = ("item_id", "uri", "source_version", "source_bytes")
    out: dict[str, list] = {name: [] for name in names}
    no_id = 0
    try:
        for entry in _task_entries(storage, root + rel, recursive):
            key = rel + entry.key
            if not name_matches(key.rsplit("/", 1)[-1], cfg.pattern):
                continue
            item_id = item_id_for(key, regex)
            if not item_id:
                no_id += 1
                continue
            for name, value in zip(names, (item_id, entry.uri, entry.version, entry.size), strict=True):
                out[name].append(value)
            if len(out["uri"]) >= ROWS_PER_FRAME:
                yield rows_frame(out)
                out = {name: [] for name in names}
    except StorageError as exc:
        out = {
            name: [value]
            for name, value in zip(
                names,
                ("", f"{_TRANSIENT_MARK if exc.transient else ''}{root + rel}: {exc.message}", None, None),
                strict=True,
            )
        }
    skipped.add(no_id)
    yield rows_frame(out)


def _task_entries(storage, uri: str, recursive: bool) -> Iterator[Entry]:
    if recursive:
        return storage.list_prefix(uri)
    return (found for found in storage.list_level(uri) if isinstance(found, Entry))


def rows_frame(columns: dict[str, list]):
    """Listed or manifest rows as a frame for Spark: strings as objects even when there are none (an
    empty column would be float64, which Spark's Arrow conversion cannot make strings of), sizes as
    nullable integers."""
    import pandas as pd

    return pd.DataFrame(
        {
            name: pd.array(values, dtype="Int64") if name == "source_bytes" else pd.Series(values, dtype=object)
            for name, values in columns.items()
        }
    )
