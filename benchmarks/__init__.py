"""The benchmark suite: ``space_jax`` and its torch bridge against ``spacelearn`` 0.1.0.

Run it with ``make bench`` (``python -m benchmarks.run``); ``python -m benchmarks.run --help``
lists the options. Each implementation is timed in steady-state blocks of consecutive calls
after a pause that lets the others' thread pools go idle, the blocks alternating by round, and
every ratio (speedup, ratio to the hardware bound) is the median of the per-round ratios; the
headline rows are confirmed with each implementation in its own process. The hardware bound is
the unavoidable products ``Zc.T @ Zc`` and one ``B x D x D`` product through the fastest of
NumPy, XLA and torch in each round.

Modules:

* :mod:`benchmarks.harness`: the timing protocol, peak memory, the machine description;
* :mod:`benchmarks.solo`: the headline rows with each implementation in its own process;
* :mod:`benchmarks.breakdown`: the combined loss's pieces (where its time goes);
* :mod:`benchmarks.problems`: the problem sizes and their synthetic inputs;
* :mod:`benchmarks.core`: the operations measured (losses, solvers, sizing, pooling, the bridge);
* :mod:`benchmarks.report`: the markdown table, the JSON file and the log-log plot;
* :mod:`benchmarks.run`: the command line.

``benchmarks.shared_space``, ``benchmarks.sweep`` and ``benchmarks.streaming`` measure the shared
latent space, the vmapped sweeps and the streaming moments; the suite calls them when present.
"""
