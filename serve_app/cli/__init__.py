"""The ``samgraph`` command line: commands (``main``), flag parsing (``flags``), the HTTP client that the
CLI, tests and benchmarks share (``client``), and pictures of answers (``render``)."""
