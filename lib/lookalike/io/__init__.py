"""Storage: where bytes live (local, s3://, hdfs://) and the Parquet files the jobs write and read.

Every module reads and writes through this package; nothing outside it talks to boto3 or builds
a file system client.

    uris.py       telling local paths, file://, s3:// and hdfs:// URIs apart
    base.py       the one Storage interface every backend implements, Entry, StorageError
    storage.py    storage_for(uri, s3): the backend for a URI (why these backends)
    s3.py         S3 through boto3: retries shared across botocore and body cuts, conditional locks
    s3client.py   the one boto3 client configuration (from S3Config) and per-thread request counts
    local.py      local files: temp + rename, O_EXCL
    hadoop.py     HDFS and other Hadoop file systems through pyarrow.fs
    redact.py     keeping credentials out of every message
    arrowfs.py    the pyarrow file system that reads tables, built from the same S3Config
    partfiles.py  Parquet part files written by Spark tasks with row groups cut at item boundaries
    current.py    which version of a published table readers read (publish/ writes them)
    tables.py     reading the jobs' tables with pyarrow, without Spark, for the tools
"""
