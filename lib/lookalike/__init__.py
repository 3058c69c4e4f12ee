"""lookalike: "you may also like" recommendations from pictures alone, as Spark batch jobs."""

__version__ = "0.1.0"
