"""`python -m bench`: each measure runs both sides in one process, one run, and states the ratio.

Measures live in `bench/measures/`, one module each, and register themselves with `@measure`;
`python -m bench --only NAME` runs a few. The report (`BENCHMARKS.md`) records the machine.
"""
