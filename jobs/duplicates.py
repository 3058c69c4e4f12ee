"""spark-submit entry point for the duplicates job: near-duplicate groups (lookalike.jobs.duplicates)."""

import sys

from lookalike.jobs.duplicates import main

if __name__ == "__main__":
    sys.exit(main())
