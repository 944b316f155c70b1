"""Pydra tasks: thin wrappers over the plain functions of phys_bids (STYLE: thin orchestration)."""
