"""Platform-wide address state: quarantine, denylist, allowlist (domain/quarantine.py rules)."""
