"""Gaussian diffusion paths: noise schedules (`schedules`), prediction
conversions and the DDIM step (`predictions`).
"""
