"""The DeepFloyd IF teacher family (stage I): folder loading (`loading`)
and the teacher (`if_teacher`).
"""
