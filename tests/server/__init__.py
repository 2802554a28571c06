"""Conformance tests of the gnomon server (RFC 8915 rules, one test per rule)."""
