"""Backends that ship with fanout; each is registered like any third-party plugin."""
