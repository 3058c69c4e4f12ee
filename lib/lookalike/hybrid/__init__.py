"""Behaviour blended with pictures (the hybrid job, docs/hybrid.md): interactions read and cleaned,
ALS factors, the ridge map from pictures to factors for cold items, the blend and its source, and
the held-out co-interaction figures of ``lookalike evaluate --interactions``."""
