"""Helpers for the benchmarks in bench/: servers, data, DICOM clients, reports.

Benchmarks are scripts, not tests; nothing here is imported by samarkiv.
"""
