"""The model repository: every ``<models>/<name>/<version>/`` loaded, checked and ready to run.

A model is served only when its graph matches its manifest (names, dtypes, widths, a
dynamic batch, the sha256 of the file, a smoke run); otherwise the server refuses to start
and says what differs. Versions are ordered numerically when they are numbers, so
``latest`` of ``1, 2, 10`` is ``10``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnstream.manifest import MANIFEST_FILE, Manifest, ManifestError, sha256_file
from rnnstream.server.engine import Engine
from rnnstream.server.errors import NotFound
from rnnstream.server.graph import GraphMismatch, StepGraph, check_graph
from rnnstream.server.settings import Settings
from rnnstream.server.state_table import StateTable

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """One or more models could not be served; the message lists each with its reason."""


@dataclass
class LoadedModel:
    """One model version ready to serve: its manifest, graph, state table and engine."""

    manifest: Manifest
    path: Path
    sha256: str  # of model.onnx: which graph a saved state row belongs to
    graph: StepGraph
    table: StateTable
    engine: Engine

    @functools.cached_property
    def key(self) -> str:
        """``name/version``."""
        return f"{self.manifest.name}/{self.manifest.version}"

    @property
    def initial_state(self) -> np.ndarray:
        """The state a sequence starts from, ``[S]``."""
        return self.table.initial


def _version_order(version: str) -> tuple[int, int | str]:
    """Sort key: numeric versions by value, after them any others by name."""
    return (0, int(version)) if version.isdigit() else (1, version)


def load_model(directory: Path, settings: Settings) -> LoadedModel:
    """Load and check one ``<name>/<version>`` directory."""
    manifest = Manifest.load(directory)
    if (manifest.name, manifest.version) != (directory.parent.name, directory.name):
        raise ManifestError(
            f"{directory / MANIFEST_FILE} names {manifest.name}/{manifest.version}, but it lies "
            f"in {directory.parent.name}/{directory.name}: move it or fix name and version"
        )
    onnx_path = directory / manifest.onnx_file
    if not onnx_path.is_file():
        raise ManifestError(f"{onnx_path} does not exist (named by {directory / MANIFEST_FILE})")
    graph = StepGraph(onnx_path, manifest, settings.device, settings.intra_op_threads)
    sha256 = sha256_file(onnx_path)
    check_graph(graph, manifest, manifest.onnx_sha256, sha256)
    sequence = None
    if manifest.sequence_onnx_file:
        sequence_path = directory / manifest.sequence_onnx_file
        if not sequence_path.is_file():
            raise ManifestError(f"{sequence_path} does not exist (named by {MANIFEST_FILE})")
        sequence = StepGraph(
            sequence_path, manifest, settings.device, settings.intra_op_threads, chunked=True
        )
        check_graph(sequence, manifest, manifest.sequence_onnx_sha256, sha256_file(sequence_path))
    if isinstance(manifest.initial_state, list):
        initial = np.asarray(manifest.initial_state, dtype=np.float32)
    else:
        initial = np.zeros(manifest.state_size, dtype=np.float32)
    table = StateTable(settings.max_sessions, manifest.state_size, initial)
    engine = Engine(
        graph,
        table,
        settings.max_batch,
        f"{manifest.name}/{manifest.version}",
        sequence,
        settings.inline_max_steps,
    )
    log.info(
        "loaded %s/%s: %s x%d H=%d, F=%d O=%d S=%d on %s%s",
        manifest.name,
        manifest.version,
        manifest.cell,
        manifest.layers,
        manifest.hidden_size,
        manifest.n_features,
        manifest.n_outputs,
        manifest.state_size,
        graph.provider,
        " (+ sequence graph)" if sequence is not None else "",
    )
    return LoadedModel(manifest, directory, sha256, graph, table, engine)


class ModelRepository:
    """Every servable model version, looked up by name and version.

    Example::

        repo = ModelRepository.load(Settings.from_env())
        model = repo.get("seattle-temp")          # latest version
        model = repo.get("seattle-temp", "1")
    """

    def __init__(self, models: list[LoadedModel], default_model: str) -> None:
        self._by_name: dict[str, dict[str, LoadedModel]] = {}
        for model in models:
            self._by_name.setdefault(model.manifest.name, {})[model.manifest.version] = model
        names = sorted(self._by_name)
        self.default_name = default_model if default_model in self._by_name else names[0]

    @classmethod
    def load(cls, settings: Settings) -> ModelRepository:
        """Load every model under ``settings.models``; ModelLoadError lists every refusal."""
        root = settings.models
        if not root.is_dir():
            raise ModelLoadError(f"model repository {root} is not a directory (--models)")
        directories = sorted(p.parent for p in root.glob(f"*/*/{MANIFEST_FILE}"))
        if not directories:
            raise ModelLoadError(
                f"no models in {root}: expected {root}/<name>/<version>/{MANIFEST_FILE} "
                "(train one with `rnnstream train ... --out DIR`)"
            )
        loaded: list[LoadedModel] = []
        problems: list[str] = []
        for directory in directories:
            try:
                loaded.append(load_model(directory, settings))
            except (ManifestError, GraphMismatch, RuntimeError, OSError) as exc:
                problems.append(f"{directory}: {exc}")
        if problems:
            for model in loaded:
                model.engine.close()
            raise ModelLoadError("refused to serve:\n  " + "\n  ".join(problems))
        return cls(loaded, settings.default_model)

    def models(self) -> list[LoadedModel]:
        """Every loaded version, by name then version."""
        return [
            self._by_name[name][version]
            for name in sorted(self._by_name)
            for version in sorted(self._by_name[name], key=_version_order)
        ]

    def get(self, name: str = "", version: str = "") -> LoadedModel:
        """The model ``name`` (empty: default) at ``version`` (empty: latest); else NotFound."""
        name = name or self.default_name
        versions = self._by_name.get(name)
        if versions is None:
            raise NotFound(
                f"model {name!r} is not served here; models: {', '.join(sorted(self._by_name))} "
                "(ListModels shows them all)"
            )
        if not version:
            return versions[max(versions, key=_version_order)]
        model = versions.get(version)
        if model is None:
            raise NotFound(
                f"model {name!r} has no version {version!r}; versions: "
                f"{', '.join(sorted(versions, key=_version_order))} (empty version: latest)"
            )
        return model

    def close(self) -> None:
        """Stop every engine after it finishes what is queued."""
        for model in self.models():
            model.engine.close()
