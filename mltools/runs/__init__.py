"""What one run is and what it leaves on disk: its settings (:mod:`.config`, with the optimizer
recipe of :mod:`.recipes`), its folder (config.json, metrics.jsonl, log.txt: :mod:`.runlog`) and its
checkpoint (:mod:`.checkpoint`).
"""
