"""The domains of a run: built from a config's ``data`` section or given by the caller, with
their held-out contexts and the inputs to fingerprint (see ``tta._runs``)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from tta import _runs
from tta._errors import TTAError, TTATypeError
from tta._io import json_text
from tta._runs import Input
from tta.config import SCHEMA
from tta.data import CIFARC, ArrayDomain, Domain, ImageNetC
from tta.data.subset import SubsetDomain, subset_rows
from tta.run_config import DataConfig, MethodSpec, RunConfig


def corrupted_domains(
    images: np.ndarray, labels: np.ndarray, names: list[str], severities: list[int], seed: int
) -> list[Domain]:
    """Corrupt a clean uint8 NHWC set once per (corruption, severity), each with its own seeded
    generator (the same images ``tta corrupt --seed`` writes), and wrap them as in-memory domains."""
    import corruptions

    domains = []
    for name in names:
        for severity in severities:
            gen = torch.Generator().manual_seed(corruptions.seed_for(seed, name, severity))
            out = corruptions.corrupt(images, name, severity, generator=gen)
            domains.append(ArrayDomain(out, labels, f"{name}-{severity}", name, severity))
    return domains


def released_domains(data: DataConfig) -> tuple[list[Domain], dict[str, Input]]:
    """The domains of a CIFAR-C or ImageNet-C folder that ``data`` names (the corruptions in the
    order given, the standard order when none are named, each at every listed severity), whole,
    and the data inputs to fingerprint (see ``tta._runs``). They do not depend on the seed."""
    source = data.source
    if not data.root:
        raise TTAError(
            f"data.source {source!r} needs data.root (the dataset folder); set data.root, "
            "or data.source: corrupt with data.clean"
        )
    reader = CIFARC if source == "cifar-c" else ImageNetC
    domains = reader(data.root, corruptions=data.corruptions, severities=list(data.severities))
    return domains, _data_inputs(source, data.root, domains)


def corrupted_clean_domains(data: DataConfig, seed: int) -> tuple[list[Domain], dict[str, Input]]:
    """``data.source: corrupt``: ``data.clean``'s held-out images (a seeded subset of
    ``num_samples`` of them, drawn before corrupting), corrupted with the seed's noise, and the
    data inputs to fingerprint."""
    names, sev, n = data.corruptions, list(data.severities), data.num_samples
    inputs: dict[str, Input] = {}
    if not data.clean:
        raise TTAError(
            "data.source 'corrupt' needs data.clean: 'mnist5k', 'cifar10:<folder>', "
            "'cifar100:<folder>' or an .npz file"
        )
    import corruptions
    from tta.models.data import load_test_split

    images, labels = load_test_split(data.clean)
    inputs["data:clean"] = ("value", {"sha256": _runs.sha256_arrays(images, labels)})
    names = names or corruptions.names("benchmark")
    if n and n > len(labels):
        short = [f"{name}-{s}" for name in names for s in sev]
        _warn(short, len(labels), n, f" (the held-out images of data.clean {data.clean!r})")
    if n:
        rows = subset_rows(len(labels), n, seed)
        images, labels = images[rows], labels[rows]
    return corrupted_domains(images, labels, names, sev, seed), inputs


def _warn(names: list[str], size: int, n: int, where: str) -> None:
    shown = ", ".join(repr(x) for x in names[:5]) + (", ..." if len(names) > 5 else "")
    warnings.warn(
        f"data.num_samples={n} is larger than domain {shown} ({size} samples{where}); the whole "
        "domain is used",
        stacklevel=3,
    )


def _warn_short(domains: list[Domain], n: Optional[int]) -> None:
    if not n:
        return
    by_size: dict[int, list[str]] = {}
    for d in domains:
        if len(d) < n:
            by_size.setdefault(len(d), []).append(d.name)
    for size, names in by_size.items():
        _warn(names, size, n, "")


def _data_inputs(source: str, root: str, domains: list[Domain]) -> dict[str, Input]:
    """Fingerprinted data: the files of a CIFAR-C folder; the image file names of each
    ImageNet-C domain (anything else: its labels)."""
    inputs: dict[str, Input] = {}
    if source == "cifar-c":
        from tta.data.cifarc import labels_file

        inputs["data:labels.npy"] = ("file", labels_file(root)[0])
    for d in domains:
        path, files = getattr(d, "path", None), getattr(d, "files", None)
        if isinstance(path, str):
            inputs[f"data:{os.path.basename(path)}"] = ("file", path)
        elif files is not None:
            rel = [os.path.relpath(f, root) for f in files]
            inputs[f"data:{d.name}"] = (
                "value",
                {"images": len(rel), "names_sha256": _runs.sha256_names(rel)},
            )
        else:
            inputs[f"data:{d.name}"] = ("value", {"labels_sha256": _runs.sha256_arrays(d.labels)})
    return inputs


#: The data keys that say where domains come from; ``evaluate(..., domains=)`` replaces them.
DOMAIN_KEYS = ("source", "root", "clean", "corruptions", "severities")


def check_given_domains(config: Union[Mapping[str, Any], RunConfig], domains: Any) -> list[Domain]:
    """Check the domains given to ``evaluate`` and that the config does not also name data (in
    a ``RunConfig``, whose defaults are filled in, a key names data when it is not its default)."""
    from tta.data.stream import _check_domains

    if isinstance(domains, (str, bytes)) or not isinstance(domains, (Sequence, Domain)):
        raise TTATypeError(
            f"domains must be a list of tta.data.Domain objects (e.g. ArrayDomain), got "
            f"{type(domains).__module__}.{type(domains).__name__}"
        )
    checked = _check_domains(domains)
    if isinstance(config, RunConfig):
        defaults = SCHEMA["data"]
        data = {k: v for k, v in config.values["data"].items() if v != defaults[k].default}
    else:
        data = config.get("data") if isinstance(config, Mapping) else None
    if isinstance(data, Mapping):
        named = [k for k in DOMAIN_KEYS if data.get(k) is not None]
        if named:
            raise TTAError(
                f"config key{'s' if len(named) > 1 else ''} "
                f"{', '.join(f'data.{k}' for k in named)} name domains, but domains= were "
                "given; remove them (with domains=, data takes only num_samples, source_data "
                "and workers)"
            )
    return checked


def subset_domains(domains: list[Domain], n: Optional[int], seed: int) -> list[Domain]:
    """``data.num_samples`` applied to given domains: the same seeded subset rule as for
    domains the config describes."""
    if not n:
        return list(domains)
    _warn_short(domains, n)
    return [SubsetDomain(d, subset_rows(len(d), n, seed)) for d in domains]


def hold_out_context(domains: list[Domain], n: int) -> tuple[list[Domain], list[Domain]]:
    """Split every domain into its first ``n`` samples (its context) and the rest (streamed)."""
    streamed, contexts = [], []
    for d in domains:
        if len(d) <= n:
            raise TTAError(
                f"domain {d.name!r} has {len(d)} samples and data.context_per_domain is {n}: "
                "holding out the context leaves nothing to stream; lower data.context_per_domain"
            )
        contexts.append(SubsetDomain(d, np.arange(n)))
        streamed.append(SubsetDomain(d, np.arange(n, len(d))))
    return streamed, contexts


def given_domain_inputs(domains: list[Domain]) -> dict[str, Input]:
    """Fingerprinted inputs of given domains: each one's ``fingerprint()``, and the file it maps
    when it has one (CIFAR-C), checked like a checkpoint."""
    inputs: dict[str, Input] = {}
    for d in domains:
        try:
            record = json.loads(json_text(d.fingerprint()))
        except (TypeError, ValueError) as err:
            raise TTAError(
                f"domain {d.name!r}: fingerprint() must return a JSON-able mapping ({err})"
            ) from err
        inputs[f"data:{d.name}"] = ("value", record)
        path = getattr(d, "path", None)
        if isinstance(path, str) and os.path.isfile(path):
            inputs[f"data:{d.name}:file"] = ("file", path)
    return inputs


def source_images(
    data: DataConfig, methods: Sequence[MethodSpec], seed: int
) -> Optional[torch.Tensor]:
    """Clean source images for the methods that ask for them (EATA's Fisher), or None.

    A seeded subset of the training split of ``data.source_data`` (``data.clean`` by default for
    ``data.source: corrupt``), as many as the most demanding method wants.
    """
    from tta.models.data import load_dataset

    wanted = {m.label: m.source_images_wanted() for m in methods if m.source_images_wanted()}
    if not wanted:
        return None
    name = data.source_data or (data.clean if data.source == "corrupt" else None)
    if name is None:
        raise TTAError(
            f"method {', '.join(map(repr, wanted))} needs clean source images: set "
            "data.source_data ('cifar10:<folder>', 'cifar100:<folder>', 'mnist5k' or an .npz "
            "file; its training split is used)"
        )
    train_x, train_y, _, _ = load_dataset(name)
    if len(train_x) == 0:
        raise TTAError(
            f"data.source_data {name!r} has no training split to take source images from"
        )
    rows = subset_rows(len(train_x), max(wanted.values()), seed)
    source = ArrayDomain(train_x[rows], train_y[rows], "source")
    return source.get(np.arange(len(rows)))[0]


@dataclass
class SeedRun:
    """What one seed of a run streams: its seed (None in the unit paths of a ``seed`` run), the
    stream, the clean source images for the methods that want them, and each stream domain's
    held-out context samples (``data.context_per_domain``)."""

    seed: int
    unit_seed: Optional[int]
    stream: Any
    images: Optional[torch.Tensor]
    contexts: Optional[list[Domain]] = None


def seed_domains(
    config: RunConfig, given: Optional[list[Domain]]
) -> Iterator[tuple[int, list[Domain], Optional[list[Domain]], dict[str, Input]]]:
    """Per seed of a resolved config: the seed, the domains to stream, their held-out contexts
    (``data.context_per_domain``, else None) and the data inputs to fingerprint (those of the
    first seed only: files and clean images do not depend on the seed). ``given``: the domains
    passed to ``evaluate``, else they are built from ``config.data``."""
    data, held = config.data, config.data.context_per_domain
    if held and config.stream.schedule == "mixed":
        raise TTAError(
            f"data.context_per_domain ({held}) gives each domain's context to the model before "
            "the stream enters that domain, but schedule 'mixed' mixes the domains inside every "
            "batch; use reset_each_shift, continual or gradual, or drop data.context_per_domain"
        )
    corrupt = given is None and data.source == "corrupt"  # domains made anew for each seed
    if given is not None:
        whole, inputs = given, given_domain_inputs(given)
    elif not corrupt:
        whole, inputs = released_domains(data)
    for i, seed in enumerate(config.seeds):
        contexts = None
        if corrupt:
            # With context, the subset (num_samples) is drawn after the context is held out.
            whole, inputs = corrupted_clean_domains(
                dataclasses.replace(data, num_samples=None) if held else data, seed
            )
        domains = whole
        if held:
            domains, contexts = hold_out_context(domains, held)
        if held or not corrupt:
            domains = subset_domains(domains, data.num_samples, seed)
        yield seed, domains, contexts, inputs if i == 0 else {}
