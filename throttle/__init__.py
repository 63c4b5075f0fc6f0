"""Throttle: compute-priced fair usage, reserve-and-settle admission, autoscale signals."""
