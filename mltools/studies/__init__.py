"""The studies' definitions: every experiment, preset and method name (:mod:`.experiments`) and the
per-method choices files (``*.json``) that presets read. Imports nothing else of mltools.
"""
