"""Evaluation runs: every method, and the ``source`` baseline, on the identical stream (docs/algorithms.md §7).

The stream is read once per run: a segment (the batches between two resets: one per domain for
``reset_each_shift``, the whole stream for continual, mixed and gradual schedules) is read batch
by batch, each batch is moved to the device once and given to every method's own adapted copy
in turn, so every method sees exactly the stream it would see alone. Image-file domains are
decoded by worker processes ahead of the model (``data.workers``, see ``tta.data.loader``).
Results are kept per unit, (method, segment): when a segment ends, each method's unit is written
atomically to ``<output>/units/``. A rerun skips finished units and rebuilds identical final
files from them; a segment is read again only for the methods that lack it, so a methods list
that grows runs only the new methods. A config with ``seeds`` runs every unit once per seed,
under ``<output>/units/seed-<s>/`` (see ``tta.evaluation.results.over_seeds``). A unit's
``seconds`` is the time spent in its method (forward, adaptation, counting), not the shared
reading.

Before any work the run checks its config, model and data: the model must return logits of shape
(batch, classes) and every domain's labels must lie below the number of classes. Only then does it
claim its output folder (``config.json`` and the ``.tta-run`` marker with the fingerprints of its
inputs, see ``tta._runs``), holding ``.tta-lock`` while it writes there. A rerun resumes only when
the fingerprints match and the config is the same up to its methods list (a label kept must keep
its method and options; each unit records them) and ``data.workers``.

Unit folders are named after the method label and segment name: unchanged when the name is
plain (lower-case letters, digits, ``._+-``), else a readable slug plus ``~`` and a hash of the
exact name, so two distinct labels never share a folder (not even on a case-insensitive disk).

Samples whose logits are not all finite (NaN or inf) count as errors; how many there were is
reported per method and domain (``nonfinite`` in results.json, a warning in summary.md).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch

import tta
from tta import _runs
from tta._errors import TTAError, TTATypeError
from tta._io import folder_lock, json_text, read_json, remove_temp_files, write_json
from tta._runs import MARKER, Input
from tta.config import build_config
from tta.data import Domain, make_stream
from tta.data.arrays import input_channels, match_channels
from tta.data.loader import read_batches
from tta.evaluation.device import check_precision, resolve_device
from tta.evaluation.domains import SeedRun, check_given_domains, seed_domains, source_images
from tta.evaluation.results import SeedResult, run_result, seed_result
from tta.evaluation.scoring import check_model, run_segment, run_unit
from tta.evaluation.units import config_difference, read_unit, refuse_other_config, unit_path
from tta.methods.base import RunContext
from tta.run_config import ModelConfig, RunConfig


def _seed_result(out: Path, config: RunConfig, run: SeedRun, read_only: bool) -> SeedResult:
    """One seed's results, read from its finished units."""
    names = run.stream.domain_names
    units: dict[str, list[dict[str, Any]]] = {}
    for method in config.methods:
        units[method.label] = []
        for segment in run.stream.segments():
            path = unit_path(out, method.label, segment.name, run.unit_seed)
            if read_only and not path.is_file():
                where = "" if run.unit_seed is None else f" | seed {run.seed}"
                raise TTAError(
                    f"output folder {str(out)!r} is not writable and the run is not finished "
                    f"({method.label} | {segment.name}{where} is missing); make it writable "
                    "or set another output"
                )
            units[method.label].append(read_unit(path, method, segment.name, len(names)))
    return seed_result(config.methods, units, run.stream, run.unit_seed)


def _summarise_read_only(
    out: Path, config: RunConfig, inputs: dict[str, Input], force: bool, runs: list[SeedRun]
) -> dict[str, Any]:
    """A finished run in a folder this process cannot write: check it as a resume would and
    return its results, writing nothing (and taking no lock: no run can write there)."""
    before = _runs.saved_config(out)
    if force or not isinstance(before, Mapping) or config_difference(before, config):
        raise _runs.not_writable(out)
    _runs.check_inputs(out, inputs)
    per_seed = [_seed_result(out, config, run, read_only=True) for run in runs]
    results = run_result(config, per_seed).as_dict()
    saved = out / "results.json"
    if not saved.is_file() or read_json(saved) != json.loads(json_text(results)):
        raise TTAError(
            f"output folder {str(out)!r} is not writable and its results.json is missing or "
            "out of date; make it writable or set another output"
        )
    return results


def _run_pending(
    out: Path,
    model: torch.nn.Module,
    config: RunConfig,
    run: SeedRun,
    context: RunContext,
    device: torch.device,
) -> None:
    """Run every unfinished unit of one seed: segment after segment, one pass over the data
    each, feeding every method whose unit is missing; write each unit when its segment ends."""
    names = run.stream.domain_names
    todo = []
    for segment in run.stream.segments():
        missing = [
            m
            for m in config.methods
            if not unit_path(out, m.label, segment.name, run.unit_seed).exists()
        ]
        if missing:
            todo.append((segment, missing))
    if not todo:
        return
    where = "" if run.unit_seed is None else f" | seed {run.seed}"
    pin = device.type == "cuda"
    with read_batches([seg for seg, _ in todo], config.data.workers, pin) as batches:
        for segment, missing in todo:
            # The run context gives every method the seed and the stream's batch size (so
            # UnMix-TNS's λ does not change on a domain's last, shorter batch).
            adapted = {m.label: m.adapt(model, context).to(device) for m in missing}
            if len(missing) == 1:
                label = missing[0].label
                desc = f"{label} | {segment.name}{where}"
                results = {
                    label: run_unit(
                        adapted[label],
                        segment,
                        len(names),
                        device,
                        desc,
                        batches=batches,
                        precision=config.precision,
                        contexts=run.contexts,
                    )
                }
            else:
                desc = f"{len(missing)} methods | {segment.name}{where}"
                results = run_segment(
                    adapted,
                    segment,
                    len(names),
                    device,
                    desc,
                    batches,
                    config.precision,
                    run.contexts,
                )
            del adapted
            for m in missing:
                unit = {
                    "method": m.label,
                    "segment": segment.name,
                    "entry": m.record(),
                    **results[m.label],
                }
                write_json(unit_path(out, m.label, segment.name, run.unit_seed), unit)


def _load_model(m: ModelConfig, inputs: dict[str, Input]) -> torch.nn.Module:
    """The network ``model`` describes; records what to fingerprint in ``inputs``."""
    model = tta.load_model(
        m.spec,
        m.checkpoint,
        num_classes=m.num_classes,
        mean=m.mean,
        std=m.std,
        weights=m.weights,
        pretrained=m.pretrained,
        pretrained_tag=m.pretrained_tag,
        model_dir=m.model_dir,
        **m.kwargs,
    )
    if not m.checkpoint and not m.library_weights:
        warnings.warn(
            f"model {model.spec!r} has no checkpoint and no pretrained weights, so it runs "
            "with the weights its builder gives (random initialisation for the built-in, timm "
            "and torchvision specs); set model.checkpoint (or weights / pretrained)",
            stacklevel=3,
        )
    if m.checkpoint:
        inputs["checkpoint"] = ("file", m.checkpoint)
    if m.library_weights:  # weights a library keeps in its own cache: named by what was asked for
        library = {"spec": m.spec, "weights": m.weights, "pretrained": m.pretrained}
        inputs["library_weights"] = ("value", {**library, "pretrained_tag": m.pretrained_tag})
    return model


def evaluate(
    config: Union[Mapping[str, Any], RunConfig],
    force: bool = False,
    model: Optional[torch.nn.Module] = None,
    domains: Optional[Sequence[Domain]] = None,
) -> dict[str, Any]:
    """Run a config (a mapping in the YAML schema, or a ``RunConfig``); return the results and
    write the output folder.

    ``model``: use this network instead of building ``config["model"]`` (it must take [0, 1]
    images, as ``tta.load_model`` returns). Its fingerprint is the hash of its class and
    ``state_dict``, so a resume with other weights is refused (see ``tta._runs``).
    ``domains``: run on these ``Domain`` objects (e.g. ``tta.data.ArrayDomain`` of your own
    arrays) instead of the ones ``config["data"]`` describes; the data keys that say where
    domains come from (``source``, ``root``, ``clean``, ``corruptions``, ``severities``) must
    then be left out, while ``num_samples``, ``source_data`` and ``workers`` still apply. Each
    domain's ``fingerprint()`` is recorded, so a resume on other data is refused.
    ``force``: clear what tta wrote in the output folder and start over; a non-empty folder tta
    did not make is refused.

    Every segment of the stream is read once: each batch goes to every method in turn, and the
    units of that segment (one per method) are written when it ends. A rerun skips finished
    units, also when the methods list has grown since.

    With ``seeds``, every seed is a run of its own as ``seed: <s>`` would make it (data subset,
    corruption noise, stream order, methods' draws), kept in ``units/seed-<s>/``; the results
    hold each seed's numbers and their mean ± std (see ``tta.evaluation.results.over_seeds``).
    """
    from tta.report import write_reports

    given = check_given_domains(config, domains) if domains is not None else None
    config = build_config(config)
    out = Path(config.output)
    _runs.check_output_path(out)
    if force:
        _runs.check_can_force(out)
    else:
        refuse_other_config(out, config)  # before the (slow) model and data
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    inputs: dict[str, Input] = {"tta": ("value", {"version": tta.__version__})}
    if model is None:
        model = _load_model(config.model, inputs)
    else:
        if not isinstance(model, torch.nn.Module):
            raise TTATypeError(
                f"model must be a torch.nn.Module, got {type(model).__module__}."
                f"{type(model).__name__}"
            )
        inputs["model"] = ("value", _runs.model_fingerprint(model))
    s = config.stream
    runs: list[SeedRun] = []
    num_classes = None
    for i, (seed, domains, contexts, data_inputs) in enumerate(seed_domains(config, given)):
        if i == 0:  # the fingerprinted inputs (files, clean images) do not depend on the seed
            inputs.update(data_inputs)
            num_classes = check_model(model, domains)
        images = source_images(config.data, config.methods, seed)
        if images is not None:  # the clean split's channels, as the model reads them
            images = match_channels(images, input_channels(model))
        stream = make_stream(domains, s.order, s.delta, s.schedule, s.batch_size, seed)
        runs.append(SeedRun(seed, seed if config.multi_seed else None, stream, images, contexts))

    if not _runs.writable(out):
        return _summarise_read_only(out, config, inputs, force, runs)
    with folder_lock(out):
        remove_temp_files(out)
        if force:
            _runs.clear_run_folder(out)
        else:
            refuse_other_config(out, config)
        if (out / "config.json").is_file():
            kept = _runs.check_inputs(out, inputs)
        elif (out / "units").is_dir() and any((out / "units").iterdir()):
            raise TTAError(
                f"output folder {str(out)!r} holds finished units but no config.json saying "
                f"what they came from; {_runs.FORCE_HINT}"
            )
        else:
            kept = _runs.record(inputs)
        # Claim the folder: the marker first, so a config.json never lacks its fingerprints.
        _runs.write_if_changed(out / MARKER, _runs.marker_text(kept))
        _runs.write_if_changed(out / "config.json", json_text(config.as_dict()))
        per_seed = []
        for run in runs:
            context = RunContext(
                seed=run.seed,
                batch_size=s.batch_size,
                device=device,
                num_classes=num_classes,
                source_images=run.images,
            )
            _run_pending(out, model, config, run, context, device)
            per_seed.append(_seed_result(out, config, run, read_only=False))
        result = run_result(config, per_seed)
        write_reports(out, result)
    return result.as_dict()
