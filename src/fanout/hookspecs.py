"""Every hook a fanout plugin may implement.

Hooks are few and coarse: a plugin *registers* things once, at start-up. A plugin is a module
(or object) with functions marked ``@fanout.hookimpl``, listed in its distribution's entry-point
group ``fanout``::

    [project.entry-points.fanout]
    mybackend = "fanout_mybackend.plugin"

The ``register`` hooks are called once per plugin, so that what a plugin registers is credited
to its distribution (``fanout backends`` shows it): implement them as plain functions taking
``register``; pluggy's wrapper and ordering options do not apply to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from fanout.backend import Backend
    from fanout.signing import Signer

hookspec = pluggy.HookspecMarker("fanout")
hookimpl = pluggy.HookimplMarker("fanout")


@hookspec
def fanout_register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Register compute backends.

    :param register: call it with each ``fanout.backend.Backend`` subclass the plugin provides;
        the class's ``name`` is what users pass to ``--backend``.
    """


@hookspec
def fanout_register_signers(register: Callable[[type[Signer]], None]) -> None:
    """Register how storage protocols are opened and how nodes are given access to them.

    :param register: call it with each ``fanout.signing.Signer`` subclass the plugin provides;
        the class's ``protocols`` are the storage URL schemes it serves (``az``, ...).
    """


@hookspec
def fanout_register_commands(cli: click.Group) -> None:
    """Add commands to the ``fanout`` command line.

    :param cli: the top-level ``click.Group``; add commands with ``@cli.command()`` or
        ``cli.add_command(...)``.
    """
