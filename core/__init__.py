"""Omniwise's domain logic, shared by the web app and the worker. Never imports Flask."""

from core.lean_imports import without_dataframes

# sqlite-utils imports pandas when it is installed (for DataFrames we never pass): 0.3-1 s of every start.
without_dataframes("sqlite_utils")
