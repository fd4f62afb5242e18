"""Consentry: consent and suppression engine."""
