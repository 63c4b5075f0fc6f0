"""Dashboards: Streamlit app over metering and throttle."""
