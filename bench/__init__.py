"""Benchmarks of the EchoFlow networks against peer implementations (a source checkout only; never installed).

    python -m bench [--quick] [--threads 1] [--json out.json]
"""
