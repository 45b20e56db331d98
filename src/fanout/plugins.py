"""The plugin manager: entry-point loading and the registry of backends plugins provide."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import pluggy

from fanout import hookspecs
from fanout.backend import Backend
from fanout.errors import PluginError
from fanout.signing import Signer

ENTRY_POINT_GROUP = "fanout"
_BACKEND_NAME = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend and the distribution that provides it."""

    cls: type[Backend]
    distribution: str
    version: str


@cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every installed plugin loaded."""
    manager = pluggy.PluginManager("fanout")
    manager.add_hookspecs(hookspecs)
    try:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken third-party plugin must not show as a traceback
        raise PluginError(f"cannot load a fanout plugin: {exc}") from exc
    manager.check_pending()
    return manager


def backends(manager: pluggy.PluginManager | None = None) -> dict[str, BackendEntry]:
    """Every registered backend by name."""
    manager = manager or get_plugin_manager()
    found: dict[str, BackendEntry] = {}
    # Each implementation is called on its own, so that a backend is credited to its plugin.
    for impl in manager.hook.fanout_register_backends.get_hookimpls():
        distribution, version = _distribution_of(manager, impl.plugin)

        def register(
            cls: type[Backend], distribution: str = distribution, version: str = version
        ) -> None:
            _check_backend_class(cls, distribution)
            if cls.name in found:
                raise PluginError(
                    f"backend '{cls.name}' is registered by both"
                    f" {found[cls.name].distribution} and {distribution}"
                )
            found[cls.name] = BackendEntry(cls, distribution, version)

        with _plugin_errors(distribution, "register its backends"):
            impl.function(register=register)
    return dict(sorted(found.items()))


def _check_backend_class(cls: object, distribution: str) -> None:
    """Refuse at registration what would otherwise fail in the middle of a run."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise PluginError(f"plugin {distribution} registered {cls!r}, not a Backend")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _BACKEND_NAME.fullmatch(name):
        raise PluginError(
            f"plugin {distribution} registered {cls.__qualname__} without a valid name"
            " (lower-case letters, digits and '-', starting with a letter)"
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise PluginError(
            f"plugin {distribution}: backend {cls.__qualname__} does not implement {missing}"
        )


@contextmanager
def _plugin_errors(plugin: str, doing: str) -> Iterator[None]:
    """A plugin that fails inside a hook is reported in one line, not as a traceback."""
    try:
        yield
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {plugin} failed to {doing}: {exc}") from exc


def get_backend(
    name: str,
    manager: pluggy.PluginManager | None = None,
    available: dict[str, BackendEntry] | None = None,
) -> type[Backend]:
    """The backend class called ``name`` (among ``available``, if the caller has them already);
    the error lists those available."""
    available = backends(manager) if available is None else available
    if name not in available:
        names = ", ".join(available) or "none"
        raise PluginError(
            f"backend '{name}' is not available (plugin may not be installed); available: {names}"
        )
    return available[name].cls


def signers(manager: pluggy.PluginManager | None = None) -> dict[str, type[Signer]]:
    """Every registered signer by the storage protocol it serves."""
    manager = manager or get_plugin_manager()
    found: dict[str, type[Signer]] = {}

    for impl in manager.hook.fanout_register_signers.get_hookimpls():
        distribution, _ = _distribution_of(manager, impl.plugin)

        def register(cls: type[Signer], distribution: str = distribution) -> None:
            if not (isinstance(cls, type) and issubclass(cls, Signer)):
                raise PluginError(f"plugin {distribution} registered {cls!r}, not a Signer")
            for protocol in cls.protocols:
                if protocol in found and found[protocol] is not cls:
                    raise PluginError(
                        f"storage protocol '{protocol}' is served by both"
                        f" {found[protocol].__qualname__} and {cls.__qualname__} ({distribution})"
                    )
                found[protocol] = cls

        with _plugin_errors(distribution, "register its signers"):
            impl.function(register=register)
    return found


def signer_for(url: str, manager: pluggy.PluginManager | None = None) -> type[Signer]:
    """The signer that serves ``url``; fsspec's defaults for a protocol no plugin claims."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return signers(manager).get(protocol, Signer)


def _distribution_of(manager: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    for candidate, dist in manager.list_plugin_distinfo():
        if candidate is plugin:
            metadata = dist.metadata
            return str(metadata["name"]), str(dist.version)
    name = manager.get_name(plugin) or repr(plugin)
    return f"{name} (not installed)", "-"
