"""Datasets as tensors: the image sets (digits, Fashion-MNIST, MNIST, CIFAR-10) from their own file
formats (:mod:`.datasets`) and text as character windows (:mod:`.text`). Imports nothing else of
mltools.
"""
