"""Marketplace metering: a usage record per call, quotas and rate limits, usage reports.

``tables`` holds the rows; ``records`` builds a call's usage row (written in the audit outcome's
transaction); ``limits`` enforces calls per second and monthly budgets from the database, so
they hold across processes and replicas; ``reports`` sums a month for a buyer or a vendor.
"""
