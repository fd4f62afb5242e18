"""The web app: landing pages, provider webhooks, the console and the REST API (FastAPI)."""
