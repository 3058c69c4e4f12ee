"""Storage: where bytes live (local, s3://, hdfs://) and the Parquet files the jobs write and read.

Every module reads and writes through this package; nothing outside it talks to boto3 or builds
a file system client.
"""
