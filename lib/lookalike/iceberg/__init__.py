"""Apache Iceberg tables through pyiceberg: the layer the jobs' outputs move onto (issue 23).

    catalogs.py   a pyiceberg catalog from settings: a SQLite file (embedded), AWS Glue, REST;
                  its failures as the transient error of the exit-code contract
    locations.py  a table location is used only when it is empty or holds this table alone
    commit.py     files that Spark tasks wrote, committed as one snapshot per table per run, with
                  the run's properties; an optimistic commit that lost a race is retried only
                  while what the run read is unchanged
    retention.py  snapshots older than keep_days expire; only files that no kept snapshot
                  references are deleted, and only files of this table

Works with pyiceberg 0.8.1 (the Spark 3.5 environment, pyarrow 14) and 0.12: it uses only what
both offer, and says where it must choose (retention.py).
"""
