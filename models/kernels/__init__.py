"""Fused kernels, one folder per op: ``reference.py`` (plain torch, float32) beside ``triton.py``."""
