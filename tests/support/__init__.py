"""Helpers shared by the test tiers (unit, spark, e2e). Test modules import them from here;
nothing imports ``conftest``, which only holds fixtures."""
