"""Bridges to other libraries (transformers)."""
