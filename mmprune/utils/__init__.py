"""Utilities: cost model, offline weight checks."""
