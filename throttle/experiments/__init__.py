"""Experiments that exercise the real throttle code on scripted pools (figures in docs/)."""
