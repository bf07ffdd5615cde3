"""Resumable batch prediction over a folder: every input is identified by the hash of its content, and a manifest
in the output folder records, after each input, what was written for it and by which model. A rerun (after an
interruption, or with new files added) skips the inputs whose content and model are unchanged and whose outputs are
still there, and predicts the rest.

The prediction itself is a callable, so the same rails serve the U-Net (volumes), the classifier and Mask R-CNN.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

MANIFEST = "batch_manifest.json"
#: Inputs a batch picks up by default: images and TIFF stacks, and zarr arrays (folders).
DEFAULT_PATTERNS = ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.zarr")

#: ``predict(path, out_dir, stem) -> {"outputs": [file names written under out_dir], **results}``.
Predictor = Callable[[Path, Path, str], dict]


def content_hash(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (a zarr array): their relative paths and bytes, in order.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.tif").write_bytes(b"same")
    >>> _ = (folder / "b.tif").write_bytes(b"same")
    >>> content_hash(folder / "a.tif") == content_hash(folder / "b.tif")
    True
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(chunk_size):
                digest.update(chunk)
    return digest.hexdigest()


def list_inputs(folder: str | Path, patterns: Sequence[str] = DEFAULT_PATTERNS) -> dict[str, Path]:
    """The inputs of ``folder`` matching ``patterns`` (searched recursively), by their path relative to it; a clear
    error when the folder is missing or nothing in it matches."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    found = {}
    for pattern in patterns:
        for path in folder.rglob(pattern):
            inside_zarr = any(parent.suffix == ".zarr" for parent in path.relative_to(folder).parents)
            if not inside_zarr and not path.name.startswith("."):
                found[path.relative_to(folder).as_posix()] = path
    if not found:
        raise FileNotFoundError(f"no input in {folder} matches {', '.join(patterns)}")
    return dict(sorted(found.items()))


def output_stem(name: str) -> str:
    """Where a relative input name's outputs go: its folders kept, its suffix dropped (``A/x.tif`` -> ``A/x``)."""
    path = Path(name)
    return (path.parent / path.stem).as_posix() if path.parent != Path(".") else path.stem


def input_version(hashes: dict[str, str]) -> str:
    """One hash for a whole batch of inputs: what the run saw, for its lineage (names and contents)."""
    return hashlib.sha256("".join(f"{name}\0{digest}\n" for name, digest in sorted(hashes.items())).encode()).hexdigest()


@dataclass
class BatchResult:
    """What a batch did: per input a row (``status`` done, skipped or failed; the predictor's results), and the
    hash of all inputs."""

    rows: list[dict] = field(default_factory=list)
    input_version: str = ""

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


class Manifest:
    """``<out>/batch_manifest.json``: per input name, its content hash, the model key and the outputs written.
    Saved (atomically) after every input, so an interruption loses at most the input in progress."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / MANIFEST
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())["inputs"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{self.path} is not a batch manifest ({error}): move it away to start afresh") from None

    def finished(self, name: str, digest: str, model_key: str) -> dict | None:
        """The entry of an input already predicted from the same content by the same model, outputs in place."""
        entry = self.entries.get(name)
        if (entry and entry["sha256"] == digest and entry["model"] == model_key
                and all((self.path.parent / output).exists() for output in entry["outputs"])):
            return entry
        return None

    def record(self, name: str, entry: dict) -> None:
        self.entries[name] = entry
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(json.dumps({"inputs": self.entries}, indent=1, sort_keys=True))
        os.replace(partial, self.path)


def run_batch(inputs: dict[str, Path], out_dir: str | Path, predict: Predictor, model_key: str, *,
              progress: bool = True) -> BatchResult:
    """Predict every input not already done by ``model_key`` (see :class:`Manifest`), recording each as it ends.

    A failing input is recorded in the result with its reason and the batch goes on; it is retried next time.

    Examples
    --------
    >>> import tempfile
    >>> folder, out = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.txt").write_text("1")
    >>> def predict(path, out_dir, stem):
    ...     (out_dir / f"{stem}.out").write_text(path.read_text())
    ...     return {"outputs": [f"{stem}.out"]}
    >>> inputs = list_inputs(folder, ["*.txt"])
    >>> first = run_batch(inputs, out, predict, "m/1", progress=False)
    >>> again = run_batch(inputs, out, predict, "m/1", progress=False)
    >>> first.count("done"), again.count("done"), again.count("skipped")
    (1, 0, 1)
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir)
    result, hashes = BatchResult(), {}
    for name, path in tqdm(inputs.items(), desc="inputs", unit="input", disable=not progress):
        digest = hashes[name] = content_hash(path)
        row = {"input": name, "sha256": digest}
        entry = manifest.finished(name, digest, model_key)
        if entry is not None:
            result.rows.append({**row, "status": "skipped", **entry["results"], "outputs": entry["outputs"]})
            continue
        stem = output_stem(name)
        (out_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            produced = predict(path, out_dir, stem)
        except Exception as error:  # noqa: BLE001 - one odd input never costs the others their results
            why = str(error) if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {error}"
            result.rows.append({**row, "status": "failed", "error": why if name in why or str(path) in why
                                else f"{name}: {why}"})
            continue
        outputs = list(produced.pop("outputs"))
        manifest.record(name, {"sha256": digest, "model": model_key, "outputs": outputs, "results": produced,
                               "seconds": round(time.perf_counter() - started, 3)})
        result.rows.append({**row, "status": "done", **produced, "outputs": outputs})
    result.input_version = input_version(hashes)
    return result
