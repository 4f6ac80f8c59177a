"""`python -m creditrl.preference.make_pairs DIR`: write DIR/data/{train,eval}_pairs.jsonl for the tiny task.

DIR is the output of `creditrl tiny init --out DIR`. Each pair is {"prompt", "chosen", "rejected", "answer"} with
chosen = the true sum and rejected = the no-carry answer (rows without a carry are skipped); see
`creditrl.preference.data.write_arithmetic_pairs`.
"""

from __future__ import annotations

import argparse
import logging

from creditrl.preference.data import write_arithmetic_pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task_dir", nargs="?", default="tiny", help="directory made by `creditrl tiny init`")
    parser.add_argument("--out", default=None, help="output directory (default: TASK_DIR/data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_arithmetic_pairs(args.task_dir, args.out)


if __name__ == "__main__":
    main()
