"""The Streamlit entry point (``streamlit run dashboards/app.py``; ``infermeter dashboard``
runs it): one page per view, sharing the sidebar drawn by :mod:`infermeter.dashboards.ui`.

Every page has its own URL (``/fleet``, ``/costs``, ...); ``/`` moves to ``/fleet``. There
must be no ``pages/`` folder beside this file: Streamlit would then run its first session as
a legacy multipage app, in which ``/costs`` is "Page not found" (``infermeter dashboard``
refuses to start with one).
"""

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
    pages = [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES]

    def home() -> None:
        st.switch_page(pages[0])

    # Streamlit serves its default page at / only; a hidden one that moves to Fleet gives
    # Fleet a URL of its own (/fleet) like every other page.
    root = st.Page(home, title="infermeter", url_path="home", default=True, visibility="hidden")
    st.navigation([root, *pages]).run()


main()
