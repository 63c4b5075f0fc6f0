"""Dashboards: Streamlit app over metering and throttle."""

if (
    __name__ != "infermeter.dashboards"
):  # this folder is mapped into the namespace, never imported bare
    raise ImportError(f"import infermeter.dashboards, not {__name__}")
