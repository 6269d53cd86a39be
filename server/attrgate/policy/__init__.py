"""Policies: the pydantic model, the YAML loader, the compiler and the pure engine."""
