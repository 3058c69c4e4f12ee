"""spark-submit entry point for the neighbours job (logic: lookalike.jobs.neighbours)."""

import sys

from lookalike.jobs.neighbours import main

if __name__ == "__main__":
    sys.exit(main())
