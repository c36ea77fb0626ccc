"""Configuration: the declared defaults of every section (`defaults`), their
validation, and the ready-made configs configs/*.py start from (`recipes`).
Imports nothing else of boot_jax: it is the ground floor.
"""
