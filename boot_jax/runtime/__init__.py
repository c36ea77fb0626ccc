"""What every program runs on: the path layer (local and `gs://`), orbax
checkpoints, the work-directory contract and its lock, the guards that
keep a command from replacing what it did not write, device meshes and
sharding rules, and the command-line plumbing.
"""
