"""Inbound SMS (mobile originated): keywords applied to quarantine, every message kept."""
