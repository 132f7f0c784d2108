"""The networks: the architecture registry with each architecture's options, torch-free
(:mod:`.architectures`), the builders and the paper's networks (:mod:`.networks`), and the
residual-stream measurement of Transformers (:mod:`.stream_norm`).
"""
