"""Shared stages (bench.stages): one file per stage, registered on import."""
