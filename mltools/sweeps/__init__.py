"""Running many runs: the sweep with its worker processes and resumption (:mod:`.sweep`), launching
it here, under torchrun or on SLURM (:mod:`.launch`, :mod:`.slurm`), the progress bar
(:mod:`.progress`) and clean stops on signals (:mod:`.stopping`).
"""
