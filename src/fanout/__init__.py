"""fanout: fan a batch of tasks out over many machines and gather the results.

Plugins import ``hookimpl`` from here and subclass ``fanout.backend.Backend``.
"""

from fanout.hookspecs import hookimpl

__all__ = ["hookimpl"]
