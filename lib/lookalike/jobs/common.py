"""What every job's ``main`` does: parse arguments, load and validate config, build the session,
call ``run``, turn user mistakes into one clear line and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable

from lookalike.config import Config, SparkConfig, load_config
from lookalike.errors import EXIT_BUG, EXIT_OK, EXIT_USER, LookalikeError

log = logging.getLogger("lookalike")


class _Redact(logging.Filter):
    """Last line of defence: no log line carries a credential, whatever a library put in it, nor
    a control character from a file name (an escape sequence, a newline that forges a line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from lookalike.io.redact import redact
        from lookalike.terminal import printable

        record.msg, record.args = printable(redact(record.getMessage())), ()
        if record.exc_info and not record.exc_text:
            # A traceback quotes exception messages (a server's echo of a signed request): format
            # it here, redacted; handlers print exc_text as it is.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redact())
    # Third-party chatter drowns the progress lines.
    for noisy in ("py4j", "botocore", "boto3", "urllib3", "s3transfer", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_args(argv: list[str], description: str, dry_run: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    if dry_run:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="list and plan, print the summary line with what a run would do, and stop: "
            "no image is fetched, no model loaded, nothing written",
        )
    parser.add_argument("--config", default=None, help="YAML config (default: conf/local.yaml if present)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, YAML-typed (repeatable), e.g. --set model.batch_size=16",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOOKALIKE_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def on_loopback(master: str) -> bool:
    """Whether a driver for ``master`` serves this machine only: local mode, or a standalone master
    on the loopback (``make cluster-up``). Its driver then binds to 127.0.0.1."""
    return master.startswith("local") or master.startswith(("spark://127.0.0.1:", "spark://localhost:"))


def build_session(cfg: Config, app_suffix: str = ""):
    """The one place a SparkSession is created: library code only ever receives one.

    The master: a driver started by spark-submit runs on the master spark-submit resolved (its
    --master, --conf spark.master, spark-defaults.conf, or its own default local[*]), as with any
    Spark application; spark.master from the config applies when the job starts Spark itself
    (``python jobs/embed.py``). ./spark-submit.sh passes the config's spark.master as --master
    when it is given none, so both ways of starting a job agree."""
    submitted = submitted_master()
    master = submitted or cfg.spark.master
    if on_loopback(master):
        # Nothing outside this machine needs the driver; a cluster's client-mode driver is
        # left on Spark's own choice, this host's address, which its executors can reach.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(cfg.spark.app_name + app_suffix)
    if submitted is None:
        builder = builder.master(cfg.spark.master)
    elif submitted != cfg.spark.master and cfg.spark.master != SparkConfig.model_fields["master"].default:
        log.warning(
            "spark.master=%s from the config is not used: spark-submit started this driver with "
            "master %s (pass --master %s to use the config's)",
            cfg.spark.master,
            submitted,
            cfg.spark.master,
        )
    defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1") if on_loopback(master) else None,
    }
    for key, value in {**defaults, **{k: str(v) for k, v in cfg.spark.conf.items()}}.items():
        if value is not None:
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info(
        "Spark master %s (%s)",
        spark.sparkContext.master,
        "from spark-submit" if submitted is not None else "spark.master in the config",
    )
    return spark


def submitted_master() -> str | None:
    """The master spark-submit gave this driver, or None when Python started Spark itself.

    spark-submit launches the Python driver with the JVM already running and tells it the
    gateway's port; the master it resolved is then in the JVM's system properties."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return None
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return SparkConf().get("spark.master", None)


def default_config_path(path: str | None) -> str | None:
    if path:
        return path
    return "conf/local.yaml" if os.path.exists("conf/local.yaml") else None


def job_main(
    argv: list[str] | None,
    run: Callable,
    description: str,
    require: tuple[str, ...] = (),
    dry_run: bool = False,
    spark=None,
) -> int:
    """Parse, validate, run and return the exit status. ``dry_run``: the job's run() takes
    dry_run=True, and main offers --dry-run.

    With ``spark`` given (an application or notebook that already runs Spark, the tests' shared
    session) the job runs in that session, leaves it running and leaves logging as the caller set
    it; without, main is the process's entry point: it sets up logging, builds the session from the
    config and stops it at the end."""
    args = parse_args(sys.argv[1:] if argv is None else argv, description, dry_run)
    owned = spark is None
    if owned:
        setup_logging(args.log_level)
    try:
        cfg = load_config(default_config_path(args.config), args.overrides, require=require)
        if owned:
            spark = build_session(cfg)
        summary = run(spark, cfg, dry_run=True) if getattr(args, "dry_run", False) else run(spark, cfg)
        # A summary that is not ok lists problems the user fixes (envcheck: rebuild the archive).
        return EXIT_OK if summary is None or summary.get("ok", True) else EXIT_USER
    except LookalikeError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted; tables published before the interruption stay, nothing else was")
        return 130
    except Exception:
        log.exception(
            "lookalike stopped on an unexpected error; this is a bug, please report it with this log. "
            "Tables published before it stay, nothing else was."
        )
        return EXIT_BUG
    finally:
        if owned and spark is not None:
            spark.stop()


def release(held: list) -> None:
    """Unpersist the DataFrames and destroy the broadcasts (the driver's copy too) a stage held."""
    for thing in held:
        if hasattr(thing, "unpersist") and not hasattr(thing, "destroy"):
            thing.unpersist()
        else:
            thing.destroy()


def skipped(job: str, run_id: str, done: dict, inputs: dict, started: float, why: str, output: str) -> dict:
    """The summary of a downstream job that found nothing changed since the run ``done`` and left
    its table as it is: logged, printed as the job's JSON line, and returned."""
    summary = {
        "job": job,
        "run_id": run_id,
        "ok": True,
        "skipped": True,
        "unchanged_since": done.get("run_id"),
        "inputs": inputs,
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("%s: nothing changed since run %s (%s); %s is left as it is", job, done.get("run_id"), why, output)
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary
