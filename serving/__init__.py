"""Serving tier: the engines (vLLM launcher, vLLM-compatible simulator) and the gateway."""

if (
    __name__ != "infermeter.serving"
):  # this folder is mapped into the namespace, never imported bare
    raise ImportError(f"import infermeter.serving, not {__name__}")
