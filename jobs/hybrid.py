"""spark-submit entry point for the hybrid job (logic: lookalike.jobs.hybrid)."""

import sys

from lookalike.jobs.hybrid import main

if __name__ == "__main__":
    sys.exit(main())
