"""Data, paper architectures, the training loop, run folders, reports and sweeps.

This file imports no torch, so reports and plots work where torch is absent.
"""
