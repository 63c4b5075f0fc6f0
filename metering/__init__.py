"""Metering: usage records and GPU samples in DuckDB, true cost per inference, FOCUS export."""

if (
    __name__ != "infermeter.metering"
):  # this folder is mapped into the namespace, never imported bare
    raise ImportError(f"import infermeter.metering, not {__name__}")
