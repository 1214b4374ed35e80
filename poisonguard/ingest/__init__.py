"""Ingest: read a batch file (CSV, Parquet, JSON Lines) once, into rows with stable ids, whole or in chunks;
and the inbox folder that hands each arriving file to exactly one run."""
