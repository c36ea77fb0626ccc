"""Inference from a work directory: loading a run onto this machine's
devices (`inference`), the samplers (`samplers`), sample files
(`sample_io`) and the exported one-step artifact (`export`).
"""
