"""Metering: usage records and GPU samples in DuckDB, true cost per inference, FOCUS export."""
