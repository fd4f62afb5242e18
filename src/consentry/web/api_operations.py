"""Placeholder router, filled in by its own module's work."""

from fastapi import APIRouter

router = APIRouter()
