"""The handlers behind ``run_with_cache`` and ``run_with_hooks``.

A :class:`_Recorder` notes every hook reached (for name checks, the cache's order, and
warnings about names reached twice or skipped inside inner transforms); :class:`_Capture`
keeps the values asked for; :class:`_Intervene` applies interventions and remembers, per
intervention, where it could have applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from jaxinterp.errors import HookNameError
from jaxinterp.hooks._core import Handler, Site
from jaxinterp.hooks.cache import Cache
from jaxinterp.hooks.interventions import Intervention, layer_in_name
from jaxinterp.hooks.patterns import matches

Matcher = Callable[[str], bool]


class _Recorder(Handler):
    """Tracks which hook names were reached, for validation and ordering.

    Each name gets an order key: its arrival count, except that the names of one scanned
    site (``blocks.{l}.hook_x``, all layers at once) sort by (scan start, layer, arrival),
    so a scan's cache reads ``blocks.0.*`` then ``blocks.1.*`` like the unrolled model.
    """

    def __init__(self):
        self.seen: dict[str, tuple[int, int, int]] = {}
        self.repeated: dict[str, int] = {}  # static names reached more than once
        self.skipped: dict[str, str] = {}  # wanted names skipped inside inner transforms
        self._scans: dict[str, int] = {}
        self._count = 0

    def reached(self, site: Site, nested: str | None = None) -> None:
        self._count += 1
        if nested:
            for n in site.names():
                self.skipped.setdefault(n, nested)
        if not site.dynamic:
            name = site.name()
            if name in self.seen and nested is None:  # (inner transforms may trace twice)
                self.repeated[name] = self.repeated.get(name, 1) + 1
            self.seen.setdefault(name, (self._count, -1, 0))
            return
        start = self._scans.setdefault(site.prefix, self._count)
        for i, n in enumerate(site.names()):
            self.seen.setdefault(n, (start, site.first + i, self._count))


class _Capture(_Recorder):
    """Keeps the values of the hooks ``match`` selects. ``everything`` (``names=None``)
    keeps what it can and skips hooks inside inner transforms instead of raising."""

    def __init__(self, match: Matcher, everything: bool = False):
        super().__init__()
        self.match, self.everything = match, everything
        self.store: dict[str, jax.Array] = {}  # storage key -> array (stacked for layers)
        self.index: dict[str, tuple[str, int | None, int]] = {}  # name -> Cache entry

    def wants(self, name: str) -> bool:
        return bool(self.match(name))

    def insists(self, name: str) -> bool:
        return not self.everything and self.wants(name)

    def handle(self, site, x, frames_above):
        if not site.dynamic:
            if frames_above:  # inside a remat: the value leaves as one of its outputs
                frames_above[-1].emit(self, site, None, x)
            else:
                self.receive(site, x)
            return x
        layers = [i for i, n in enumerate(site.names()) if self.match(n)]
        if not frames_above:
            raise HookNameError(
                f"cannot capture {site.shown!r}: the capturing transform was started "
                "inside the scanned layer itself; start it outside ji.scan_layers"
            )
        frames_above[-1].emit(self, site, layers, x)
        return x

    def receive(self, site, x):
        self.store[site.name()] = x
        self.index[site.name()] = (site.name(), None, x.ndim)

    def receive_stacked(self, site, layers, stacked):
        """One array for all captured layers of a scanned site (a gather if not all)."""
        key = site.name("*")
        if len(layers) < stacked.shape[0]:
            stacked = stacked[jax.numpy.asarray(layers)]
        self.store[key] = stacked
        names = site.names()
        for pos, layer in enumerate(layers):
            self.index[names[layer]] = (key, pos, stacked.ndim - 1)

    def cache(self) -> Cache:
        """The captured values as a Cache, names in the order the recorder gave them."""
        last = (len(self.seen) + 1, 0, 0)
        names = sorted(self.index, key=lambda n: self.seen.get(n, last))
        return Cache(self.store, {n: self.index[n] for n in names})


class _Intervene(_Recorder):
    """Applies interventions in order; ``applied[i]`` says whether intervention ``i`` met a
    hook where it can apply, ``layers[i]`` the layers of the hooks it matched."""

    def __init__(self, interventions: Sequence[Intervention]):
        super().__init__()
        self.interventions = list(interventions)
        self.applied = [False] * len(self.interventions)
        self.layers: list[set[int]] = [set() for _ in self.interventions]

    def wants(self, name: str) -> bool:
        return any(matches(name, iv.name) for iv in self.interventions)

    def handle(self, site, x, frames_above):
        for i, iv in enumerate(self.interventions):
            names = [n for n in site.names() if matches(n, iv.name)]
            if not names:
                continue
            if site.dynamic:
                self.layers[i].update(site.first + k for k, n in enumerate(site.names()) if n in names)
            elif layer_in_name(site.name()) is not None:
                self.layers[i].add(layer_in_name(site.name()))
            x, hit = iv.apply(site, x)
            self.applied[i] |= hit
        return x
