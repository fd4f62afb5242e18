"""The consent ledger: appending chained events, reading a profile's history, verifying."""
