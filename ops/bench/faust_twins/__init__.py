"""Bench-only Faust versions of the batch processors, measured beside them by `opsloop bench`."""
