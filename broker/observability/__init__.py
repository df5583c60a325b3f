"""What operators watch: Prometheus metrics, OpenTelemetry traces, and the call's stages.

The bottom layer beside logging: any package may record into it, it imports no other broker
package. See ``metrics`` for the series, ``stages`` for the per-stage timing of a call (which
also opens a trace span per stage when tracing is on) and ``tracing`` for spans.
"""
