"""infermeter: observability and FinOps for self-hosted LLM inference.

The components live in the repository's top-level folders (collector/, metering/, throttle/,
serving/, dashboards/) and are mapped into this namespace by the symlinks beside this file;
kernel/, capacity/ and stack/ are homes of their own. See docs/architecture.md.
"""
