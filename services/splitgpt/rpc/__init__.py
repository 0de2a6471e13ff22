"""Stubs generated from protos/ (`make stubs`); protos/ is their single source.

The generated modules are not committed: set-up writes them next to this file.
"""
