"""Command line: `python -m lightrl.run [options]` (no options: the embedded CPU demo). See --help."""
import sys

from lightrl.config import parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, text = parse_args(argv)
        if text is not None:
            print(text)
            return 0
        from lightrl.config import validate
        validate(cfg)  # errors before the heavy imports and any model loading
    except ValueError as e:
        print(f"lightrl: error: {e}", file=sys.stderr)
        return 2
    from lightrl.train import train
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
