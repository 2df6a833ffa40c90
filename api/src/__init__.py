"""Pakaura task API."""
