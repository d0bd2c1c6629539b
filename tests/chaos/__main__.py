"""`python -m tests.chaos --duration 1h`: a chaos run on a private libvirtd (as root).

Prints the summary tables at the end and exits 0 when every promise held, 1 when one broke, 2 on
bad arguments. It also writes the checks, every fault and the summary as JSON (`--result`).
The work directory keeps the exporter's, libvirtd's and the hammer's output for a post-mortem.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
import tempfile
from pathlib import Path

from tests.chaos import private_libvirtd
from tests.chaos.harness import Run
from tests.chaos.report import checks, summary

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 150, 150s, 5m or 1h")
    return float(match.group(1)) * UNITS[match.group(2)]


def hold(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        return float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range of seconds such as 3-12") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=duration, default=duration("150s"), help="time of faults")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one)")
    parser.add_argument("--hold", type=hold, default=(3.0, 12.0), help="seconds a VM stays frozen, MIN-MAX")
    parser.add_argument("--workdir", type=Path, default=None, help="where logs and VM disks go")
    parser.add_argument(
        "--result", type=Path, default=None, help="JSON of checks, faults, summary (default: in workdir)"
    )
    parser.add_argument(
        "--every-kind", action="store_true", help="fail unless every kind of fault was injected"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not private_libvirtd.in_namespace():
        private_libvirtd.reexec_in_namespace("tests.chaos", argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lvexp-chaos-"))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"chaos: work directory {workdir}, seed {seed}", flush=True)
    libvirtd = private_libvirtd.start(workdir)
    result = Run(workdir, libvirtd, args.duration, seed, args.hold).execute()
    found = checks(result, args.every_kind)
    text = summary(result, found)
    print(text, flush=True)
    (args.result or workdir / "result.json").write_text(
        json.dumps(
            {
                "checks": [dataclasses.asdict(c) for c in found],
                "faults": [dataclasses.asdict(r) for r in result.records],
                "summary": text,
            },
            indent=1,
        )
    )
    return 0 if all(c.passed for c in found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
