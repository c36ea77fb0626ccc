"""Stable Diffusion 3 and 3.5: flow-matching MMDiT teachers
(`loading` reads a diffusers folder onto our own networks)."""
