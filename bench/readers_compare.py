"""CSV readers Omniwise could have used instead of its parsed-candle cache, for bench_backtest.py.

Run with a Python that has pyarrow and polars (a scratch venv; neither is a dependency):
    python bench/readers_compare.py CANDLES.csv
Prints one JSON line: import and read seconds (best of 3) of each, reading the six columns as float64.
"""

from __future__ import annotations

import json
import sys
import time


def best_of(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(path: str) -> None:
    names = [f"c{i}" for i in range(6)]
    start = time.perf_counter()
    import pyarrow.csv as arrow_csv
    arrow_import_s = time.perf_counter() - start
    start = time.perf_counter()
    import polars as pl
    polars_import_s = time.perf_counter() - start

    def with_arrow():
        table = arrow_csv.read_csv(path, read_options=arrow_csv.ReadOptions(column_names=names, skip_rows=1),
                                   convert_options=arrow_csv.ConvertOptions(column_types=dict.fromkeys(names, "float64")))
        return [table.column(n).to_numpy() for n in names]

    def with_polars():
        frame = pl.read_csv(path, has_header=False, skip_rows=1, schema=dict.fromkeys(names, pl.Float64))
        return [frame[n].to_numpy() for n in names]

    print(json.dumps({"pyarrow_import_s": arrow_import_s, "pyarrow_read_s": best_of(with_arrow),
                      "polars_import_s": polars_import_s, "polars_read_s": best_of(with_polars)}))


if __name__ == "__main__":
    main(sys.argv[1])
