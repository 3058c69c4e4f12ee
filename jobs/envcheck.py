"""spark-submit entry point for the envcheck job (logic: lookalike.jobs.envcheck)."""

import sys

from lookalike.jobs.envcheck import main

if __name__ == "__main__":
    sys.exit(main())
