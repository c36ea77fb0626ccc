"""Evaluation protocols and metrics: the default report (`evaluator`), the
mixture, pixel and text protocols, Frechet distances, KID and
precision/recall, the FID Inception, CLIP score, reference statistics.
"""
