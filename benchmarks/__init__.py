"""Performance harness: figures as ratios against a baseline in the same process."""
