"""Training programs' library: the generic loop (`loop`), a BOOT run
(`trainer` assembles it, `boot_run` runs it in a work directory), teacher
training (`teacher_run`), the optimizer (`optim`) and log writers
(`logs`).
"""
