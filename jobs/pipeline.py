"""spark-submit entry point for the pipeline job: embed then neighbours (lookalike.jobs.pipeline)."""

import sys

from lookalike.jobs.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
