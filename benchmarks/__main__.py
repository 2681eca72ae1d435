"""Run every benchmark: ``python -m benchmarks`` (or ``make bench``)."""

from benchmarks import dp_step, overhead, vote

if __name__ == "__main__":
    vote.main()
    overhead.main()
    dp_step.main()
