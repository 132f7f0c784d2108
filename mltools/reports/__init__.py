"""Reading finished runs into tables and figures: shared readers and formats (:mod:`.tables`),
effects with their intervals (:mod:`.effects`) and the flags of unconverged or unsteady runs
(:mod:`.flags`), one report per study (:mod:`.best_practices`, :mod:`.bottleneck`,
:mod:`.language_model`) and the TensorBoard export (:mod:`.board`).
"""
