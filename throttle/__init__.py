"""Throttle: compute-priced fair usage, reserve-and-settle admission, autoscale signals."""

if (
    __name__ != "infermeter.throttle"
):  # this folder is mapped into the namespace, never imported bare
    raise ImportError(f"import infermeter.throttle, not {__name__}")
