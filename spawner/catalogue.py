"""The environments a user can pick: what each is, which image it runs, what it needs.

The catalogue is plain data, built from specs of the site YAML's shape. They come from the
labels of the images on the nodes (:mod:`.image_labels`) laid under the site YAML's
``environments`` (:func:`merge_environments`), so the spawner does not care where an
environment was described.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from deskhub.hub_config.site import merge

from .units import format_cpu, format_memory, parse_memory

GPU_MODES = ("none", "shared", "exclusive")


@dataclass(frozen=True)
class Needs:
    """What a session of an environment reserves on its node, and where it may run.

    ``gpu`` is ``none``; ``shared`` (one VirtualGL desktop slot on a GPU that several
    desktops share); or ``exclusive`` (``gpus`` whole GPUs, for compute). ``gpu_memory`` is
    the least memory each of those GPUs must have; ``node_labels`` must all match the node's.
    """

    cpu: float = 1.0
    memory: int = 2 * 1024**3
    gpu: str = "none"
    gpus: int = 0
    gpu_memory: int = 0
    node_labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.gpu not in GPU_MODES:
            raise ValueError(f"unknown GPU mode {self.gpu!r}; use one of {', '.join(GPU_MODES)}")
        count = {"none": 0, "shared": 1}.get(self.gpu, max(self.gpus, 1))
        object.__setattr__(self, "gpus", count)

    def describe(self) -> str:
        text = f"{format_cpu(self.cpu)}, {format_memory(self.memory)} memory"
        at_least = f" with at least {format_memory(self.gpu_memory)}" if self.gpu_memory else ""
        if self.gpu == "shared":
            text += f", a shared GPU{at_least} for 3D graphics"
        elif self.gpu == "exclusive":
            text += f", {self.gpus} whole GPU{'s' if self.gpus > 1 else ''}{at_least}"
        if self.node_labels:
            text += ", on nodes with " + ", ".join(f"{k}={v}" for k, v in self.node_labels)
        return text


def needs_from_spec(spec: Mapping[str, Any]) -> Needs:
    """Needs from the site YAML's ``needs`` mapping (already schema-checked).

    ``gpu`` is ``none``, ``shared`` or ``{exclusive: N}``.
    """
    gpu = spec.get("gpu", "none")
    mode, count = ("exclusive", int(gpu["exclusive"])) if isinstance(gpu, Mapping) else (gpu, 0)
    labels = spec.get("node_labels") or {}
    return Needs(
        cpu=float(spec.get("cpu", Needs.cpu)),
        memory=parse_memory(spec.get("memory", Needs.memory)),
        gpu=mode,
        gpus=count,
        gpu_memory=parse_memory(spec.get("gpu_memory", 0)),
        node_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
    )


@dataclass(frozen=True)
class App:
    """An application the environment offers (a launcher on its desktop)."""

    name: str
    exec: str
    gpu: bool = False  # started through VirtualGL when the session has a GPU


@dataclass(frozen=True)
class Environment:
    name: str
    title: str
    description: str
    image: str
    needs: Needs = Needs()
    default: bool = False
    icon: str = ""  # a data:image/... URI or an https:// URL
    apps: tuple[App, ...] = ()
    virtualgl: bool | None = None  # whether the image has VirtualGL; None: not said


class Catalogue:
    """An ordered, read-only set of environments, looked up by name."""

    def __init__(self, environments: Iterable[Environment]) -> None:
        self._by_name: dict[str, Environment] = {}
        for env in environments:
            if env.name in self._by_name:
                raise ValueError(f"environment {env.name!r} is defined twice")
            self._by_name[env.name] = env

    @classmethod
    def from_site(cls, environments: Mapping[str, Mapping[str, Any]]) -> Catalogue:
        """Build from the site config's validated ``environments`` mapping."""
        entries = []
        for name, spec in environments.items():
            if spec.get("hidden", False):
                continue
            entries.append(
                Environment(
                    name=name,
                    title=spec.get("title", name),
                    description=spec.get("description", ""),
                    image=spec["image"],
                    needs=needs_from_spec(spec.get("needs", {})),
                    default=bool(spec.get("default", False)),
                    icon=spec.get("icon", ""),
                    apps=tuple(
                        App(a["name"], a["exec"], bool(a.get("gpu", False)))
                        for a in spec.get("apps", ())
                    ),
                    virtualgl=spec.get("virtualgl"),
                )
            )
        return cls(entries)

    def __iter__(self) -> Iterator[Environment]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Environment | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def default(self) -> Environment | None:
        """The environment used when a spawn names none: the marked default, else the only one."""
        marked = [env for env in self if env.default]
        if marked:
            return marked[0]
        return next(iter(self)) if len(self) == 1 else None


@dataclass(frozen=True)
class MergedEnvironments:
    """The environment specs users may get (hidden ones included, flagged), by name."""

    environments: dict[str, dict[str, Any]]
    sources: dict[str, str]  # name -> "image", "site" or "image+site"
    warnings: list[str]


def merge_environments(
    site: Mapping[str, Mapping[str, Any]], from_images: Mapping[str, Mapping[str, Any]]
) -> MergedEnvironments:
    """Image-described environments laid under the site YAML's ``environments``.

    A site entry overrides the image's spec key by key (``needs`` too); ``hidden: true``
    hides it. A site entry with an ``image`` of its own counts whether or not an image
    describes it. Site entries come first, in their order, then the others by name. An
    entry left without an image, or that needs a shared GPU while its image says it has
    no VirtualGL, is not offered and gives a warning.
    """
    out: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    warnings: list[str] = []
    for name in [*site, *sorted(n for n in from_images if n not in site)]:
        labelled, local = from_images.get(name), site.get(name)
        if labelled is not None and local is not None:
            spec, source = merge(labelled, local), "image+site"
        else:
            spec, source = dict(labelled or local or {}), "image" if labelled else "site"
        hidden = bool(spec.get("hidden", False))
        if "image" not in spec:
            if not hidden:
                warnings.append(
                    f"environment '{name}' in the site config has no image, and no image on"
                    f" a reachable node is labelled deskhub.environment.name={name};"
                    " it is not offered"
                )
            continue
        gpu = (spec.get("needs") or {}).get("gpu")
        if not hidden and gpu == "shared" and spec.get("virtualgl") is False:
            warnings.append(
                f"environment '{name}' needs a shared GPU, but its image {spec['image']}"
                " has no VirtualGL (label deskhub.virtualgl=yes); it is not offered"
            )
            continue
        out[name], sources[name] = spec, source
    return MergedEnvironments(out, sources, warnings)
