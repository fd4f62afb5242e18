"""GDPR: export of a profile's data (Art. 15/20) and erasure (Art. 17) that keeps suppressions."""
