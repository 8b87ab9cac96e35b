"""Throughput of both frameworks doing the same work (docs/benchmark.md): jobs and their fresh-process
runs (``jobs``, numpy only), the in-process measurement (``worker``), MFU's denominators (``peaks``),
derived figures and the same-work check (``results``), and where a step's time goes (``profiling``)."""
