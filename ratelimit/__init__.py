"""Adaptive rate limiting: pure policies, the limiter mechanism, clocks."""
