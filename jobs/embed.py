"""spark-submit entry point for the embed job (logic: lookalike.jobs.embed)."""

import sys

from lookalike.jobs.embed import main

if __name__ == "__main__":
    sys.exit(main())
