"""Stand-in for the trainer in tests/slurm/flaky.smk: waits for SLURM's warning signal with the trainer's handler.

Prints the signal's name and exits 0 when it comes; exits 1 after --timeout seconds without it.
"""

import argparse
import time

from vqinsight.training import SIGNALS, SignalFlag


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=100.0)
    a = ap.parse_args()
    flag = SignalFlag(SIGNALS)
    flag.install()
    t0 = time.monotonic()
    while not flag.is_set() and time.monotonic() - t0 < a.timeout:
        time.sleep(0.2)
    if not flag.is_set():
        print(f"no signal after {a.timeout:.0f} s", flush=True)
        return 1
    print(f"received {flag.received.name} after {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
