"""Run every benchmark: ``python -m benchmarks`` (or ``make bench``)."""

from benchmarks import overhead, vote

if __name__ == "__main__":
    vote.main()
    overhead.main()
