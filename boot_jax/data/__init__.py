"""Data the teachers and references read: image datasets (`datasets`),
prompt files (`prompt_files`) and prompt indices and embedding caches
(`prompts`). BOOT itself reads no data.
"""
