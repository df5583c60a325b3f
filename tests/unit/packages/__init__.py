"""Tests for broker/packages."""
