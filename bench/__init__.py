"""Kernel microbenchmarks and step benchmarks: `python -m bench NAME --help`.

Each bench/bench_NAME.py is one subcommand; it exposes add_arguments(parser)
and main(args). bench/common.py holds what they share (options, timing, peak
memory, table, JSON). Measured results go to bench/results/ as JSON.
"""
