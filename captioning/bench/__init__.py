"""Benchmarks (not tests): each subcommand measures alternatives side by side in one run."""
