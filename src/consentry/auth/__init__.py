"""Operators, console sessions, API keys and the audit log."""
