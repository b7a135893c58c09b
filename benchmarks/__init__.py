"""The benchmark suite: ``space_jax`` and its torch bridge against ``spacelearn`` 0.1.0.

Run it with ``make bench`` (``python -m benchmarks.run``); ``python -m benchmarks.run --help``
lists the options. Everything is measured in one process, on the same inputs, after warm-up,
as medians of interleaved rounds (every implementation once per round, so a change of machine
load hits all of them alike), and every time is also reported as a ratio to a hardware bound
measured in the same rounds: the unavoidable products ``Zc.T @ Zc`` and one ``B x D x D``
product through NumPy's BLAS.

Modules:

* :mod:`benchmarks.harness`: timing, peak memory, the machine description;
* :mod:`benchmarks.problems`: the problem sizes and their synthetic inputs;
* :mod:`benchmarks.core`: the operations measured (losses, solvers, sizing, pooling, the bridge);
* :mod:`benchmarks.report`: the markdown table, the JSON file and the log-log plot;
* :mod:`benchmarks.run`: the command line.

``benchmarks.shared_space``, ``benchmarks.sweep`` and ``benchmarks.streaming`` measure the shared
latent space, the vmapped sweeps and the streaming moments; the suite calls them when present.
"""
