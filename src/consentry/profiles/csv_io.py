"""Profiles in and out of CSV files: what `profiles import` and `profiles export` call.

The import (csv_import.py) upserts set-based in chunks and rejects bad rows with their line;
the export (csv_export.py) streams every profile with its consent columns in a form the import
reads back. Each module's docstring describes its side of the format.
"""

from __future__ import annotations

from consentry.profiles.csv_export import EXPORT_COLUMNS, export_profiles
from consentry.profiles.csv_import import ImportResult, ImportTuning, import_profiles, run_import

__all__ = ["EXPORT_COLUMNS", "ImportResult", "ImportTuning", "export_profiles",
           "import_profiles", "run_import"]
