"""Counting for the SMS guard: one interface, two backends (SQLite embedded, Redis for fleets)."""
