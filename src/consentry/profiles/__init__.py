"""Profiles: people with their addresses, names, locale and custom attributes."""
