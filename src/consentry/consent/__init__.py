"""Opt-outs (global and per channel), services and subscriptions."""
