"""The pure domain core: rules about addresses, consent, quarantine and the ledger.

Nothing in this package does I/O. Every other package calls these functions and
dataclasses, so a rule is stated once.
"""
