"""intclip: the training side of the project, over the offline stages in `pipeline`.

Subpackages, each importing only those listed before it (and `pipeline`); a test holds this:
`runtime` (devices, processes, precision), `data` and `metrics`, `model` and `acquisition`,
`training`, `evaluation`, `cli`.
"""
