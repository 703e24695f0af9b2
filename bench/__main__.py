"""python -m bench NAME [options]: runs bench/bench_NAME.py (found by file name, imported alone)."""
import argparse
import importlib
import pkgutil
import sys

import bench


def main() -> None:
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    top = argparse.ArgumentParser(prog="python -m bench", description="lightrl benchmarks; "
                                  "`python -m bench NAME --help` lists a benchmark's options.")
    top.add_argument("name", choices=names)
    args, rest = top.parse_known_args(sys.argv[1:2])
    # Only the chosen benchmark is imported, so one benchmark's imports cannot break another.
    module = importlib.import_module(f"bench.bench_{args.name}")
    parser = argparse.ArgumentParser(prog=f"python -m bench {args.name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    module.main(parser.parse_args(sys.argv[2:]))


if __name__ == "__main__":
    main()
