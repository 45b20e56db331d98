"""The plugin manager: entry-point loading and the registry of backends plugins provide."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
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
DEFAULT_PLUGINS = {"local": "fanout.backends.local"}
"""The core's own plugins, by plugin name: always loaded, from a source tree too, where no
entry point is installed. Their entry points are skipped."""
PLUGINS_VARIABLE = "FANOUT_PLUGINS"
"""Which installed plugins to load: distribution names, separated by commas (empty: none);
unset, all of them."""
_BACKEND_NAME = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend and the distribution that provides it."""

    cls: type[Backend]
    distribution: str
    version: str


@dataclass(frozen=True)
class BrokenPlugin:
    """An installed plugin that could not be loaded; every command works without it."""

    distribution: str
    version: str
    error: str


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, knowing the distribution of each plugin and the plugins that broke."""

    def __init__(self) -> None:
        super().__init__("fanout")
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str, str]] = {}
        """(distribution, version) by plugin name."""
        self.broken: list[BrokenPlugin] = []

    def add(self, plugin: object, name: str, distribution: str, version: str) -> None:
        """Register ``plugin``; a plugin implementing a hook fanout does not specify is
        refused (pluggy's ``check_pending``)."""
        self.register(plugin, name=name)
        try:
            self.check_pending()
        except pluggy.PluginValidationError:
            self.unregister(name=name)
            raise
        self.distributions[name] = (distribution, version)


@cache
def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager: the core's plugins, then each installed plugin that
    ``FANOUT_PLUGINS`` selects, each on its own: one that fails to load is set aside
    (``PluginManager.broken``) and the others still work."""
    manager = PluginManager()
    for name, module in DEFAULT_PLUGINS.items():
        manager.add(importlib.import_module(module), name, "fanout", _version("fanout"))
    selected = os.environ.get(PLUGINS_VARIABLE)
    wanted = None if selected is None else {_normal(n) for n in selected.split(",") if n.strip()}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.value in DEFAULT_PLUGINS.values():
            continue
        dist = entry_point.dist
        distribution = dist.name if dist is not None else entry_point.name
        version = dist.version if dist is not None else "-"
        if wanted is not None and _normal(distribution) not in wanted:
            continue
        try:
            manager.add(entry_point.load(), entry_point.name, distribution, version)
        except Exception as exc:  # a broken third-party plugin must not stop fanout
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            manager.broken.append(BrokenPlugin(distribution, version, reason))
    return manager


def _normal(distribution: str) -> str:
    """A distribution name as packaging compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", distribution.strip()).lower()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # a source tree, not installed
        return "-"


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
    name = manager.get_name(plugin) or repr(plugin)
    if isinstance(manager, PluginManager) and name in manager.distributions:
        return manager.distributions[name]
    return f"{name} (not installed)", "-"
