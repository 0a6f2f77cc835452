"""``ichtrain`` command line. Nothing is implemented yet; it says so instead of pretending."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print("usage: ichtrain {fit,evaluate,predict} ...\n\nNot implemented yet: training, evaluation and "
              "prediction are planned (see the README's roadmap). Build a store with 'ichprep build'.")
        return 0
    print("ichtrain: error: not implemented yet (fit, evaluate and predict are planned; see the README)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
