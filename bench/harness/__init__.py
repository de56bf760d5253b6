"""The benchmark harness: every system on the same machine, the same load, interleaved.

Starts each system as its own process on 127.0.0.1 and a free port:

- ``echo``: ``bench.echo_server``, the transport floor (gRPC + protobuf + asyncio, no model);
- ``rnnstream``: ``python -m rnnstream.cli serve`` over the bench model, and
  ``rnnstream-wN`` the same with ``--workers N`` for each N of ``--workers 1,N``;
- ``diy``: ``bench.diy_server``, onnxruntime ``run()`` per step inside the handler;
- ``triton`` / ``torchserve``: when their peer environments exist (``bench/peers/*/setup.sh``);
- any ``--extra NAME=COMMAND`` (e.g. another build of rnnstream to compare against);

then runs the load generator (:mod:`rnnstream.loadgen`, in this process; with
``--clients K``, in K processes that measure the same window) against each, interleaved
(A B C A B C ...) over ``--reps`` repetitions so that drift in the machine's load hits
every system alike: lock-step, one time step per message, at each stream count; then
chunked runs (``--chunk-streams`` streams, ``--chunk-steps`` steps per message). It prints
a table of medians with ratios against the echo floor and the baselines measured in the
same run, checks rnnstream's throughput targets (:mod:`bench.harness.targets`), writes
JSON to ``bench/results/`` and a plot to ``docs/img/bench_throughput.png``.

    python -m bench.harness --quick             # < 1 minute
    python -m bench.harness                     # the full run of docs/benchmarks.md
    python -m bench.harness --systems echo,rnnstream --streams 1,16 --reps 5
    python -m bench.harness --systems rnnstream --workers 1,2 --clients 2   # worker scaling

The modules, one job each: :mod:`~bench.harness.systems` (what can be started),
:mod:`~bench.harness.processes` (starting and stopping them), :mod:`~bench.harness.plan`
(the settings, the interleaved order of runs, the clients' shares),
:mod:`~bench.harness.runner` (the runs), :mod:`~bench.harness.clients` (a run over several
load-generator processes), :mod:`~bench.harness.results` (a failed run's result, the
clients' combined), :mod:`~bench.harness.aggregate` (medians),
:mod:`~bench.harness.targets` (the target checks), :mod:`~bench.harness.report` (the
tables), :mod:`~bench.harness.plot` (the figure), :mod:`~bench.harness.machine` (what it
ran on), :mod:`~bench.harness.cli` (the command line).
"""
