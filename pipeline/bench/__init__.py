"""Benchmarks behind `specstop bench`: each prints numbers (JSON), none is a timed test."""
