"""``python -m tests.fuzz --messages 2000000 --seed N``: a long fuzz run; prints its counts."""

from __future__ import annotations

import argparse
import sys

from .run import Report, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--messages", type=int, default=2_000_000, help="messages in all (default 2,000,000)")
    parser.add_argument("--seed", type=int, default=0, help="the run is reproduced from its seed")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    def progress(report: Report) -> None:
        print(f"... {report.messages:,} messages, {report.seconds:.0f} s, "
              f"{len(report.crashes)} crash(es)", file=sys.stderr, flush=True)

    report = run(args.messages, args.seed, None if args.quiet else progress)
    print(report.format())
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
