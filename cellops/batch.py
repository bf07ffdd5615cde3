"""The batch engine of cellops: ``cellops analyze``, ``cellops predict`` and the batch inference pipeline run their
files through :func:`run_batch`.

One file at a time, by a callable (:data:`Processor`): the classical analyses, the U-Net (volumes), the classifier
and Mask R-CNN. A file that cannot be used is recorded with its problem and the batch goes on.

Outputs are named after each file; files that share a name get the folders that tell them apart, mirrored under
the output folder (:func:`input_names`).

Resumable: every file is identified by the hash of its content, and the manifest (``batch_manifest.json``) in the
output folder records, after each file, what was written for it and with which key (a model version, or an
analysis and its settings). A rerun skips the files whose content and key are unchanged and whose outputs are still
there, and processes the rest.

One summary per batch, ``batch_summary.csv`` (:data:`SUMMARY_COLUMNS`): one row per file, with its status
(``done``, ``skipped``: unchanged since a previous run, or ``failed``), its problem, its outputs and its results.

One exit code contract (:func:`batch_exit_code`): 0 every file done, 1 some failed, 2 nothing could be done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from tqdm.auto import tqdm

MANIFEST = "batch_manifest.json"
SUMMARY = "batch_summary.csv"
#: The first columns of :data:`SUMMARY`; each processor's results follow, then the file's ``sha256``.
SUMMARY_COLUMNS = ("input", "file", "status", "problem", "outputs")
#: Inputs a folder batch picks up by default: images and TIFF stacks, and zarr arrays (folders).
DEFAULT_PATTERNS = ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.zarr")

#: Exit codes of the batch commands (``analyze``, ``predict``).
EXIT_ALL_DONE, EXIT_SOME_FAILED, EXIT_NOT_RUN = 0, 1, 2

BATCH_EXIT_CODES = ("exit codes: 0 every file done; 1 some files failed (each is named on stderr with its "
                    "problem, the rest are done and summarised); 2 nothing could be done (bad arguments, config "
                    "or model, or no input file could be used)")

#: ``process(path, out_dir, stem) -> {"outputs": [file names written under out_dir], **results}``: one file's
#: analysis or prediction, its outputs named ``<stem>...`` (``stem`` may hold folders, created beforehand).
Processor = Callable[[Path, Path, str], dict]


def batch_exit_code(n_files: int, n_failed: int) -> int:
    """The exit code of a batch of ``n_files`` of which ``n_failed`` failed: 0 none, 1 some, 2 all (or no file).

    Parameters
    ----------
    n_files : int
        Files in the batch (skipped ones included: they are done).
    n_failed : int
        Files that could not be used.

    Returns
    -------
    int
        :data:`EXIT_ALL_DONE`, :data:`EXIT_SOME_FAILED` or :data:`EXIT_NOT_RUN`.

    Examples
    --------
    >>> batch_exit_code(3, 0), batch_exit_code(3, 1), batch_exit_code(3, 3)
    (0, 1, 2)
    """
    if n_files == 0 or n_failed >= n_files:
        return EXIT_NOT_RUN
    return EXIT_SOME_FAILED if n_failed else EXIT_ALL_DONE


class InputName(NamedTuple):
    """How a batch names one input: ``label`` in the tables and the summary (``n0.tif``, or ``Control/n0.tif`` when
    another input is also called ``n0``) and ``stem``, the start of its output files' names (``n0``, or
    ``Control/n0``: a sub-folder of the output folder).

    Attributes
    ----------
    label : str
        Name of the input in the tables and the summary.
    stem : str
        Start of its output files' names, relative to the output folder.
    """

    label: str
    stem: str


def input_names(files: Sequence[Path]) -> dict[Path, InputName]:
    """Distinct table labels and output names for the files of one batch, stable whatever their order.

    A file keeps its own name (``n0.tif`` -> ``n0_nuclei.csv``) unless another file of the batch has the same
    stem (compared without case: some file systems ignore it). Files that share a stem get the folders that tell
    them apart, mirrored under the output folder (``Control/n0.tif``, ``Film/n0.tif`` -> ``Control/n0_nuclei.csv``,
    ``Film/n0_nuclei.csv``); two of them in one folder (``x.png``, ``x.tif``) keep their extension in the output
    name (``x.png_nuclei.csv``). A name still shared after that gets 8 hex digits of a hash of the file's path.
    The same path given twice is one file: give each path once (see :func:`distinct_files`).

    Parameters
    ----------
    files : sequence of Path
        The batch's files (or folders, for zarr arrays), each once.

    Returns
    -------
    dict of Path to InputName
        Each file's label and stem, in the order of ``files``.

    Examples
    --------
    >>> names = input_names([Path("a/Control/n0.tif"), Path("a/Film/n0.tif"), Path("a/Film/n1.tif")])
    >>> [(n.label, n.stem) for n in names.values()]
    [('Control/n0.tif', 'Control/n0'), ('Film/n0.tif', 'Film/n0'), ('n1.tif', 'n1')]
    >>> input_names([Path("plate/a1.ome.tif")])[Path("plate/a1.ome.tif")].stem
    'a1'
    """
    folders = {f: Path(os.path.abspath(f)).parent.parts[1:] for f in files}  # without the root: names are relative
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        by_stem[f.name.removesuffix(_suffix(f)).casefold()].append(f)
    names: dict[Path, InputName] = {}
    for same in by_stem.values():
        distinct = {tuple(part.casefold() for part in folders[f]) for f in same}
        depth = 0
        while len({parts[max(0, len(parts) - depth):] if depth else () for parts in distinct}) < len(distinct):
            depth += 1
        for f in same:
            prefix = "/".join(folders[f][max(0, len(folders[f]) - depth):]) if depth else ""
            label = f"{prefix}/{f.name}" if prefix else f.name
            in_one_folder = sum(folders[g] == folders[f] for g in same) > 1
            names[f] = InputName(label, label if in_one_folder else label.removesuffix(_suffix(f)))
    stems = Counter(name.stem.casefold() for name in names.values())
    for f, name in names.items():
        if stems[name.stem.casefold()] > 1:  # e.g. x.tif and x.TIF in one folder of a case-sensitive file system
            digest = hashlib.sha1(os.path.abspath(f).encode()).hexdigest()[:8]
            names[f] = InputName(name.label, f"{name.stem}_{digest}")
    return {f: names[f] for f in files}


def _suffix(path: Path) -> str:
    """The file type's suffix, ``.ome.tif`` and ``.ome.zarr`` whole: ``a.ome.tif`` names its outputs ``a_...``."""
    if path.stem.lower().endswith(".ome"):
        return path.name[len(path.stem) - 4:]
    return path.suffix


def distinct_files(files: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """``files`` without repeats (the same file given twice, or through a link, is processed once), and each
    repeat with the path it repeats.

    Parameters
    ----------
    files : sequence of Path
        Files as a user gave them.

    Returns
    -------
    distinct : list of Path
        The first path of each file, in order.
    repeats : list of (Path, Path)
        Each later path of a file, with the first one.

    Examples
    --------
    >>> distinct_files([Path("a.tif"), Path("b.tif"), Path("./a.tif")])
    ([PosixPath('a.tif'), PosixPath('b.tif')], [(PosixPath('a.tif'), PosixPath('a.tif'))])
    """
    first: dict[str, Path] = {}
    repeats = []
    for f in files:
        key = os.path.realpath(f)
        if key in first:
            repeats.append((f, first[key]))
        else:
            first[key] = f
    return list(first.values()), repeats


def repeat_note(repeat: Path, first: Path) -> str:
    """What to tell about ``repeat``, a repeat of ``first`` (:func:`distinct_files`).

    Parameters
    ----------
    repeat, first : Path
        The later path and the first path of one file.

    Returns
    -------
    str
        ``"<repeat>: given more than once"``, or which file it is the same as.

    Examples
    --------
    >>> repeat_note(Path("a.tif"), Path("a.tif")), repeat_note(Path("link.tif"), Path("a.tif"))
    ('a.tif: given more than once', 'link.tif: the same file as a.tif')
    """
    return f"{repeat}: " + ("given more than once" if str(repeat) == str(first) else f"the same file as {first}")


def content_hash(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (a zarr array): their relative paths and bytes, in order.

    Parameters
    ----------
    path : str or Path
        A file or a folder.
    chunk_size : int
        Bytes read at a time.

    Returns
    -------
    str
        64 hex digits.

    Examples
    --------
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


def settings_key(name: str, settings: Mapping[str, object]) -> str:
    """A batch key (:func:`run_batch`) for ``name`` run with ``settings``: equal settings, equal key.

    Parameters
    ----------
    name : str
        What runs (e.g. an analysis).
    settings : mapping
        Its settings (JSON-serialisable values).

    Returns
    -------
    str
        ``name/`` and 16 hex digits of a hash of the settings.

    Examples
    --------
    >>> settings_key("nuclei", {"a": 1, "b": 2}) == settings_key("nuclei", {"b": 2, "a": 1})
    True
    >>> settings_key("nuclei", {"a": 1}) == settings_key("nuclei", {"a": 2})
    False
    """
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return f"{name}/{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def list_inputs(folder: str | Path, patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[Path]:
    """The inputs of ``folder`` matching ``patterns`` (searched recursively; a zarr array's files are not inputs of
    their own, hidden files are left out), sorted by their path in ``folder``.

    Parameters
    ----------
    folder : str or Path
        The folder to search.
    patterns : sequence of str
        Glob patterns of the file (or zarr folder) names.

    Returns
    -------
    list of Path
        The inputs, each once.

    Raises
    ------
    FileNotFoundError
        When the folder is missing or nothing in it matches.
    """
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
    return [found[name] for name in sorted(found)]


def input_version(hashes: Mapping[str, str]) -> str:
    """One hash for a whole batch of inputs: what the run saw, for its lineage (names and contents).

    Parameters
    ----------
    hashes : mapping of str to str
        Each input's label and :func:`content_hash`.

    Returns
    -------
    str
        64 hex digits, whatever the order of ``hashes``.
    """
    text = "".join(f"{name}\0{digest}\n" for name, digest in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class BatchResult:
    """What a batch did: one row per file, in order (``input``, ``file``, ``status`` done, skipped or failed,
    ``problem``, ``outputs``, the processor's results, ``sha256``), and the hash of all inputs
    (:func:`input_version`; empty when the batch was not recorded).

    Attributes
    ----------
    rows : list of dict
        One row per file, in order.
    input_version : str
        Hash of all inputs; empty when the batch was not recorded.

    Examples
    --------
    >>> result = BatchResult([{"file": "a.tif", "status": "done"}, {"file": "b.tif", "status": "failed",
    ...                                                               "problem": "b.tif: empty"}])
    >>> result.count("done"), result.failures
    (1, {'b.tif': 'b.tif: empty'})
    """

    rows: list[dict] = field(default_factory=list)
    input_version: str = ""

    def count(self, status: str) -> int:
        """The number of files of ``status`` (``done``, ``skipped`` or ``failed``).

        Parameters
        ----------
        status : str
            ``done``, ``skipped`` or ``failed``.

        Returns
        -------
        int
            How many rows have that status.
        """
        return sum(row["status"] == status for row in self.rows)

    @property
    def failures(self) -> dict[str, str]:
        """Each failed file (as given) with its problem."""
        return {row["file"]: row["problem"] for row in self.rows if row["status"] == "failed"}

    @property
    def table(self) -> pd.DataFrame:
        """The rows as :data:`SUMMARY` holds them: outputs joined by ``;``, a result a file lacks left empty (and
        whole numbers kept whole).

        Returns
        -------
        pd.DataFrame
            The summary columns, the processor's results, then ``sha256``.
        """
        table = pd.DataFrame(self.rows, columns=_columns(self.rows))
        table["outputs"] = table["outputs"].map(lambda files: ";".join(files) if isinstance(files, list) else "")
        return table.fillna({"problem": ""}).convert_dtypes()


def _columns(rows: list[dict]) -> list[str]:
    results = dict.fromkeys(key for row in rows for key in row if key not in (*SUMMARY_COLUMNS, "sha256"))
    return [*SUMMARY_COLUMNS, *results, "sha256"]


def write_summary(result: BatchResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/batch_summary.csv`` (:attr:`BatchResult.table`); returns its path.

    Parameters
    ----------
    result : BatchResult
        What :func:`run_batch` returned.
    out_dir : str or Path
        The batch's output folder.

    Returns
    -------
    Path
        The summary file.
    """
    path = Path(out_dir) / SUMMARY
    result.table.to_csv(path, index=False)
    return path


class Manifest:
    """``<out>/batch_manifest.json``: per input label, its content hash, the batch key and the outputs written.
    Saved (atomically) after every input, so an interruption loses at most the input in progress.

    Parameters
    ----------
    out_dir : Path
        The batch's output folder; a manifest already there is read.

    Raises
    ------
    ValueError
        When the file there is not a batch manifest.
    """

    def __init__(self, out_dir: Path):
        self.path = out_dir / MANIFEST
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())["inputs"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{self.path} is not a batch manifest ({error}): move it away to start "
                                 "afresh") from None

    def finished(self, label: str, digest: str, key: str) -> dict | None:
        """The entry of an input already processed from the same content with the same key, outputs in place.

        Parameters
        ----------
        label : str
            The input's label (:class:`InputName`).
        digest : str
            SHA-256 of its content.
        key : str
            What else must match (model version, settings).

        Returns
        -------
        dict or None
            The recorded entry, None when the input must be processed (again).
        """
        entry = self.entries.get(label)
        if (entry and entry.get("sha256") == digest and entry.get("key") == key
                and all((self.path.parent / output).exists() for output in entry.get("outputs", []))):
            return entry
        return None

    def record(self, label: str, entry: dict) -> None:
        """Record ``entry`` for ``label`` and save the manifest.

        Parameters
        ----------
        label : str
            The input's label.
        entry : dict
            Its ``sha256``, ``key``, ``outputs`` and the processor's ``results``.
        """
        self.entries[label] = entry
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(json.dumps({"inputs": self.entries}, indent=1, sort_keys=True))
        os.replace(partial, self.path)


def _problem(error: Exception, path: Path) -> str:
    """What went wrong with ``path``, starting with it: the message of an input error (ValueError, OSError), or the
    type of an unforeseen one, so that one odd file never costs the others their results."""
    if isinstance(error, MemoryError):
        why = "not enough memory to process it"
    elif isinstance(error, (ValueError, OSError)):
        why = str(error)
    else:
        why = f"failed ({type(error).__name__}: {error})"
    return why if why.startswith(str(path)) else f"{path}: {why}"


def run_batch(files: Sequence[Path], out_dir: str | Path, process: Processor, key: str | Callable[[Path], str], *,
              names: Mapping[Path, InputName] | None = None, record: bool = True,
              progress: bool | None = True) -> BatchResult:
    """Process every file not already done with ``key`` (see :class:`Manifest`), recording each as it ends.

    A failing file is recorded in the result with its problem and the batch goes on; it is retried next time.

    Parameters
    ----------
    files : sequence of Path
        The files (or zarr folders), each once (:func:`distinct_files`).
    out_dir : str or Path
        The output folder (created if missing).
    process : Processor
        One file's analysis or prediction.
    key : str or callable
        What the outputs depend on besides the file's content (a model version, an analysis and its settings), or
        a function of the file giving it (settings that differ from file to file).
    names : mapping of Path to InputName, optional
        Each file's label and output stem; by default :func:`input_names`.
    record : bool
        Keep the manifest and the summary (:data:`SUMMARY`) in ``out_dir`` and skip the files recorded there as
        done; without, every file is processed and nothing but the processor's outputs is written.
    progress : bool or None
        Show a progress bar over the files (None: only on a terminal).

    Returns
    -------
    BatchResult
        One row per file, in order.

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
    >>> sorted(p.name for p in out.iterdir())
    ['a.out', 'batch_manifest.json', 'batch_summary.csv']
    """
    files = list(files)
    if len({os.path.realpath(f) for f in files}) < len(files):
        raise ValueError("a file is given more than once: give each once (cellops.batch.distinct_files)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = input_names(files) if names is None else names
    manifest = Manifest(out_dir) if record else None
    result, hashes = BatchResult(), {}
    bar = tqdm(files, desc="files", unit="file", disable=None if progress is None else not progress)
    for path in bar:
        label, stem = names[path]
        row = {"input": label, "file": str(path)}
        digest, file_key = "", ""
        if manifest is not None:
            # Only files and zarr arrays are hashed: any other folder (given by mistake, perhaps a whole disk) is
            # left to the processor to refuse, as is what cannot be read (processed then, never recorded).
            try:
                if path.is_file() or path.suffix == ".zarr" and path.is_dir():
                    digest = hashes[label] = content_hash(path)
                    file_key = key(path) if callable(key) else key
            except OSError:
                digest = ""
        entry = manifest.finished(label, digest, file_key) if digest else None
        if entry is not None:
            result.rows.append({**row, "status": "skipped", "problem": "", "outputs": list(entry["outputs"]),
                                **entry["results"], "sha256": digest})
            continue
        (out_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            produced = dict(process(path, out_dir, stem))
        except Exception as error:  # noqa: BLE001 - one odd file never costs the others their results
            result.rows.append({**row, "status": "failed", "problem": _problem(error, path), "outputs": [],
                                "sha256": digest})
            continue
        outputs = list(produced.pop("outputs"))
        if manifest is not None and digest:
            manifest.record(label, {"sha256": digest, "key": file_key, "outputs": outputs, "results": produced,
                                    "seconds": round(time.perf_counter() - started, 3)})
        result.rows.append({**row, "status": "done", "problem": "", "outputs": outputs, **produced, "sha256": digest})
    if manifest is not None:
        result.input_version = input_version(hashes)
        write_summary(result, out_dir)
    return result
