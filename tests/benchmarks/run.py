"""Run every benchmark module and print one table (``make bench``).

Usage: python tests/benchmarks/run.py [--repeats N] [NAME_SUBSTRING ...]
Example: python tests/benchmarks/run.py --repeats 3 ingest
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Row, render  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="samples per figure (median is shown)")
    parser.add_argument("only", nargs="*", help="run only benchmark modules whose name contains this")
    args = parser.parse_args()
    rows: list[Row] = []
    failed: list[str] = []
    for path in sorted(HERE.glob("bench_*.py")):
        if args.only and not any(s in path.stem for s in args.only):
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        for bench in module.BENCHMARKS:
            start = time.perf_counter()
            print(f"running {path.stem}.{bench.__name__} ...", file=sys.stderr, flush=True)
            try:
                rows.extend(bench(args.repeats))
            except Exception:  # one broken benchmark must not hide the others' figures
                traceback.print_exc()
                failed.append(f"{path.stem}.{bench.__name__}")
            print(f"  done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    print(render(rows))
    if failed:
        print(f"FAILED benchmarks (tracebacks above): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
