"""Metrics and leaderboards across runs."""
