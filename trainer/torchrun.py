"""`torchrun --standalone` for this project's ranks: `python -m trainer.torchrun NPROC RUN/train_config.json`.

torchrun itself exits 1 whatever its ranks' exit codes were, and raises its own `ChildFailedError` traceback. A rank
that refuses its input (damaged or swapped data, a damaged checkpoint, a full disk) must end the launch as a
one-process run ends: one `error:` line naming what was refused, and exit code 2. Every rank may refuse the same
thing at once, so ranks leave their message in a folder (`report_refusal`) and the launcher prints the lowest rank's
once. Any other failure exits 1 with one line naming the first failed rank (its own output is above it).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REFUSED = 2  # a rank's exit code for a refusal (cli.py's input-error code)
REFUSALS_ENV = "MIDTRAIN_REFUSALS_DIR"  # set by this launcher for its ranks


def report_refusal(message: str) -> None:
    """A rank's refusal: left for this launcher when it started the rank, else printed as one `error:` line."""
    folder = os.environ.get(REFUSALS_ENV)
    if not folder:
        print(f"error: {message}", file=sys.stderr, flush=True)
        return
    path = Path(folder) / f"rank{int(os.environ.get('RANK', 0)):06d}.txt"
    path.with_suffix(".tmp").write_text(message)
    os.replace(path.with_suffix(".tmp"), path)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    nproc, config = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="midtrain-refusals-") as folder:
        os.environ[REFUSALS_ENV] = folder  # the ranks inherit it
        try:
            run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "trainer.train", config]))
        except ChildFailedError as e:
            rank, first = e.get_first_failure()
            refusals = sorted(Path(folder).glob("rank*.txt"))
            if refusals or any(f.exitcode == REFUSED for f in e.failures.values()):
                message = refusals[0].read_text() if refusals else f"training rank {rank} refused its input"
                print(f"error: {message}", file=sys.stderr, flush=True)
                return REFUSED
            print(f"error: training rank {rank} failed with exit code {first.exitcode} (its output is above)",
                  file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
