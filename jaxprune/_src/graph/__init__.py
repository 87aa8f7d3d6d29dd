"""Structural pruning on the program graph: dependency groups and compaction."""
