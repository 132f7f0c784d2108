"""The 2019 code's text logs: parsing them (:mod:`.log_2019`), recovering metrics from logs
(:mod:`.retrieval`, behind log_retrieval.py) and the bottleneck report drawn from recovered logs
(:mod:`.bottleneck_recovered`, behind bottleneck_from_log.py).
"""
