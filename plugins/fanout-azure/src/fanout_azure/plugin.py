"""The hooks through which fanout finds this plugin (entry-point group ``fanout``)."""

from __future__ import annotations

from collections.abc import Callable

import click

import fanout
from fanout.backend import Backend
from fanout.signing import Signer
from fanout_azure.batch_backend import AzureBatchBackend
from fanout_azure.blob_signer import AzureBlobSigner


@fanout.hookimpl
def fanout_register_backends(register: Callable[[type[Backend]], None]) -> None:
    register(AzureBatchBackend)


@fanout.hookimpl
def fanout_register_signers(register: Callable[[type[Signer]], None]) -> None:
    register(AzureBlobSigner)


@fanout.hookimpl
def fanout_register_commands(cli: click.Group) -> None:
    from fanout_azure.emulator.command import batch_emulator

    cli.add_command(batch_emulator)
