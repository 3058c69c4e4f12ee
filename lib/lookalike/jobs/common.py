"""What every job's ``main`` does: parse arguments, load and validate config, build the session,
call ``run``, turn user mistakes into one clear line and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional

from lookalike.config import Config, load_config
from lookalike.errors import LookalikeError

log = logging.getLogger("lookalike")


class _Redact(logging.Filter):
    """Last line of defence: no log line carries a credential, whatever a library put in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from lookalike.io.storage import redact

        record.msg, record.args = redact(record.getMessage()), ()
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


def parse_args(argv: list[str], description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML config (default: conf/local.yaml if present)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, YAML-typed (repeatable), e.g. --set model.batch_size=16")
    parser.add_argument("--log-level", default=os.environ.get("LOOKALIKE_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def build_session(cfg: Config, app_suffix: str = ""):
    """The one place a SparkSession is created: library code only ever receives one."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(cfg.spark.app_name + app_suffix)
    # spark-submit's --master wins over the config file (it is already in the SparkConf).
    if not _submitted_master():
        builder = builder.master(cfg.spark.master)
    defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1") if cfg.spark.master.startswith("local") else None,
    }
    for key, value in {**defaults, **{k: str(v) for k, v in cfg.spark.conf.items()}}.items():
        if value is not None:
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _submitted_master() -> bool:
    """True when spark-submit was given --master (it sets spark.master before Python starts)."""
    return os.environ.get("LOOKALIKE_MASTER_FROM_SUBMIT") == "1"


def default_config_path(path: Optional[str]) -> Optional[str]:
    if path:
        return path
    return "conf/local.yaml" if os.path.exists("conf/local.yaml") else None


def job_main(argv: Optional[list[str]], run: Callable, description: str,
             require: tuple[str, ...] = ()) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, description)
    setup_logging(args.log_level)
    spark = None
    try:
        cfg = load_config(default_config_path(args.config), args.overrides, require=require)
        spark = build_session(cfg)
        summary = run(spark, cfg)
        return 0 if summary is None or summary.get("ok", True) else 1
    except LookalikeError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted; nothing was published")
        return 130
    finally:
        if spark is not None:
            spark.stop()
