"""Deliveries: analysis with exclusion causes, sending with a re-check per batch, reports."""
