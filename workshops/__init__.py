"""Workshops: admin-created, code-joined, time-limited groups of participants."""
