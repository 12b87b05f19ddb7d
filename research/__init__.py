"""Research tools around the networks: evaluation of a weights root (`evaluate`), EF-guidance tuning
(`tune-guidance`), relabelling a synthetic dataset (`relabel-dataset`), and one-off probes (`probes/`).
Not installed with the library; run from the repository root:

    python -m research evaluate|tune-guidance|relabel-dataset ...
"""
