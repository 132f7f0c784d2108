"""Training one run: the loop, the data and network it builds, what it records each epoch
(:mod:`.train`), the device (:mod:`.device`) and data-parallel processes (:mod:`.distributed`).
"""
