"""Classification: every leaf of a payload, its path, its type and its labels.

``paths`` (JSON Pointers and shape paths), ``walk`` (iterative leaf walk), ``detectors``
(entities inside strings, as spans), ``classifier`` (labels: the union of schema, buyer and
detected) and ``metrics`` (precision/recall on a labelled corpus). Import from the submodules.
"""
