"""Prefect flows: thin orchestration over poisonguard's plain functions."""
