"""The public import path of the training readers (``from lookalike.readers import ...``),
kept stable for users' code; the readers live in :mod:`lookalike.tools.readers`."""

from lookalike.tools.readers import (  # noqa: F401
    DEFAULT_COLUMNS,
    embeddings_dataset,
    iter_batches,
    petastorm_converter,
    petastorm_reader,
)
