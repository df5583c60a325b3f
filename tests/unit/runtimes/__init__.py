"""Tests for broker/runtimes."""
