"""Experiments with dfatools: data, the networks, the one training loop, run folders, sweeps
and reports, one package each (docs/layout.md draws the tree); the commands
(``python -m mltools.lr_grid``, ``.publish``, ``.rerun``, ``.stream``) and the scripts'
plumbing (:mod:`mltools.cli`, :mod:`mltools.errors`) sit at the top.

This file imports no torch, so reports and plots work where torch is absent.
"""
