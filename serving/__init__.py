"""Serving tier: vLLM launcher, vLLM-compatible simulator, gateway, CLI and configuration."""
