"""The Streamlit entry point (``streamlit run dashboards/app.py``; ``infermeter dashboard``
runs it): one page per view, sharing the sidebar drawn by :mod:`dashboards.ui`."""

from __future__ import annotations

import streamlit as st

PAGES = (
    ("views/fleet.py", "Fleet", ":material/monitoring:"),
    ("views/costs.py", "Costs", ":material/payments:"),
    ("views/tenants.py", "Tenants", ":material/group:"),
    ("views/capacity.py", "Capacity", ":material/dns:"),
    ("views/lookup.py", "Request lookup", ":material/search:"),
)


def main() -> None:
    st.set_page_config(page_title="infermeter", page_icon=":material/bolt:", layout="wide")
    pages = [
        st.Page(path, title=title, icon=icon, default=i == 0)
        for i, (path, title, icon) in enumerate(PAGES)
    ]
    st.navigation(pages).run()


main()
