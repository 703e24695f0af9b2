"""Command line: `python -m lightrl.run [options]` (no options: the embedded CPU demo). See --help."""
import sys

from lightrl.config import parse_args
from lightrl.errors import RunStopped, UserError


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 a configuration or input error, 1 a run that stopped on purpose."""
    try:
        cfg, text = parse_args(argv)
        if text is not None:
            print(text)
            return 0
        from lightrl.preflight import preflight
        start = preflight(cfg)  # every check before the heavy imports, model loading and the run directory
    except ValueError as e:
        return _fail(e, 2)
    from lightrl.train import train
    try:
        train(cfg, start)
    except UserError as e:
        return _fail(e, 2)
    except RunStopped as e:
        return _fail(e, 1)
    return 0


def _fail(error: Exception, status: int) -> int:
    print(f"lightrl: error: {' '.join(str(error).split())}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
