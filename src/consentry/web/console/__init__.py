"""The operator console: server-rendered pages behind a login."""
