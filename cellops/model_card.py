"""The model card of a registered version, generated from facts, never hand-written: intended use, the data it was
trained and tested on, test metrics with their 95 % intervals, the robustness sweep, the runtime checks, the
out-of-distribution reference, known limits, lineage and the commands that reproduce it.

The card is built as a list of sections of plain blocks (paragraphs, bullet lists, tables, code) and rendered twice:
markdown (``model_card.md``) and a self-contained HTML page (``model_card.html``: inline CSS, no external resource,
every value escaped). The registry side (``tracking.cards``) gathers the facts; this module only renders them.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import io
import json
import math
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The files :meth:`ModelCard.write` writes.
MARKDOWN_FILE = "model_card.md"
HTML_FILE = "model_card.html"
#: The intended-use fields of a ZenML ``model:`` block, in the card's order, with their labels.
INTENDED_USE_FIELDS = (("description", "description"), ("audience", "audience"), ("use_cases", "use cases"),
                       ("limitations", "limitations"), ("trade_offs", "trade-offs"))
#: Suffixes of a metric's recorded 95 % interval (``<metric>_ci_low``, ``<metric>_ci_high``).
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
#: A promotion metric's 95 % interval wider than this says the test set is small.
WIDE_INTERVAL = 0.1
#: The folders of ``data/`` each family trains on (what :func:`builtin_data_origin` compares with the generator).
FAMILY_DATA = {"unet": ("em",), "classifier": ("endothelial",), "maskrcnn": ("colonies", "nuclei")}
#: What :attr:`DataFacts.origin` can be.
ORIGINS = ("synthetic", "own", "unknown")


# ---------------------------------------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class Table:
    """A table: a header and rows of plain values (rendered escaped)."""

    header: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]


@dataclass(frozen=True)
class Code:
    """Lines shown verbatim (shell commands)."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Bullets:
    """A bullet list of plain sentences."""

    items: tuple[str, ...]


Block = str | Table | Code | Bullets  # a plain string is a paragraph


@dataclass(frozen=True)
class Section:
    """One heading and its blocks."""

    title: str
    blocks: tuple[Block, ...]


# ----------------------------------------------------------------------------------------------------------- facts
@dataclass(frozen=True)
class IntendedUse:
    """What the model is for, from a ZenML ``model:`` block (a training config's, or the ZenML model's).

    Attributes
    ----------
    fields : dict of str to str
        ``description``, ``audience``, ``use_cases``, ``limitations``, ``trade_offs`` (those given).
    source : str
        Where they came from, e.g. ``ZenML model cellops-unet`` or ``configs/unet.yaml (model: block)``.
    """

    fields: dict[str, str]
    source: str

    @classmethod
    def from_block(cls, block: Mapping[str, object] | None, source: str) -> IntendedUse | None:
        """The intended use of a ``model:`` block, or None when it has none of the fields.

        Examples
        --------
        >>> IntendedUse.from_block({"name": "m", "description": "Segments cells."}, "configs/x.yaml").fields
        {'description': 'Segments cells.'}
        >>> IntendedUse.from_block({"name": "m"}, "x") is None
        True
        """
        fields = {key: str(block[key]).strip() for key, _ in INTENDED_USE_FIELDS
                  if block and block.get(key) not in (None, "")}
        return cls(fields, source) if fields else None


@dataclass(frozen=True)
class DataFacts:
    """The data a version was trained and tested on.

    Attributes
    ----------
    origin : str
        ``synthetic`` (the built-in generator's images), ``own`` (a lab's data) or ``unknown`` (:data:`ORIGINS`).
    origin_reason : str
        How the origin was told.
    """

    origin: str = "unknown"
    origin_reason: str = "not checked"

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"data origin {self.origin!r}: one of {', '.join(ORIGINS)}")


@dataclass(frozen=True)
class CardFacts:
    """Everything a card says, gathered by the registry side.

    Attributes
    ----------
    record : dict
        The version's :func:`tracking.tags.version_record` (lineage, metrics with ``*_ci_low``/``*_ci_high``,
        inference settings, runtime, runtime checks, ood).
    intended_use : IntendedUse or None
        What it is for (None: recorded nowhere).
    data : DataFacts
        Synthetic or own data.
    robustness : list of dict or None
        The robustness sweep's rows (``condition``, ``strength``, ``metric``, ``value``, ``clean_value``,
        ``difference``); None when not measured for this version.
    reproduce : list of str
        The shell commands that reproduce it.
    missing : list of str
        The lineage missing to reproduce it (empty: reproducible).
    notes : list of str
        Anything else the gatherer must say (e.g. a section it could not read, and why).
    """

    record: dict
    intended_use: IntendedUse | None = None
    data: DataFacts = field(default_factory=DataFacts)
    robustness: list[dict] | None = None
    reproduce: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelCard:
    """A version's card, rendered.

    Attributes
    ----------
    name, version : str
        The registered model and version.
    markdown : str
        The card as markdown.
    html : str
        The card as one self-contained HTML page.
    """

    name: str
    version: str
    markdown: str
    html: str

    def write(self, folder: str | Path) -> list[Path]:
        """Write :data:`MARKDOWN_FILE` and :data:`HTML_FILE` into ``folder`` (created); returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / MARKDOWN_FILE, folder / HTML_FILE]
        paths[0].write_text(self.markdown, encoding="utf-8")
        paths[1].write_text(self.html, encoding="utf-8")
        return paths

    @classmethod
    def read(cls, folder: str | Path, name: str, version: str) -> ModelCard:
        """The card :meth:`write` wrote into ``folder``."""
        folder = Path(folder)
        return cls(name, str(version), (folder / MARKDOWN_FILE).read_text(encoding="utf-8"),
                   (folder / HTML_FILE).read_text(encoding="utf-8"))


# -------------------------------------------------------------------------------------------------------- sections
def record_family(record: Mapping[str, object]) -> str:
    """A version's family: the one its inference settings name, else its registered name without ``cellops-``.

    Examples
    --------
    >>> record_family({"inference_settings": {"family": "unet"}, "registered_model": "x"})
    'unet'
    >>> record_family({"inference_settings": None, "registered_model": "cellops-maskrcnn"})
    'maskrcnn'
    """
    settings = record.get("inference_settings") or {}
    return str(record.get("family") or settings.get("family")  # type: ignore[union-attr]
               or str(record.get("registered_model", "")).removeprefix("cellops-"))


def _number(value: object) -> str:
    """A metric or setting as a short string: floats to 4 significant digits, NaN as "n/a"."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def metric_rows(metrics: Mapping[str, float], promotion_metric: str | None = None) -> list[tuple[str, str, str]]:
    """One row per metric: name (``(promotion)`` marked), value, and its 95 % interval where both bounds are
    recorded (``<metric>_ci_low``, ``<metric>_ci_high``), else "no interval recorded".

    Examples
    --------
    >>> metric_rows({"dice": 0.9, "dice_ci_low": 0.85, "dice_ci_high": 0.93, "loss": 0.2}, "dice")
    [('dice (promotion)', '0.9', '[0.85, 0.93]'), ('loss', '0.2', 'no interval recorded')]
    """
    rows = []
    for key in sorted(metrics):
        if key.endswith((CI_LOW, CI_HIGH)):
            continue
        low, high = metrics.get(key + CI_LOW), metrics.get(key + CI_HIGH)
        interval = (f"[{_number(low)}, {_number(high)}]" if low is not None and high is not None
                    else "no interval recorded")
        rows.append((f"{key} (promotion)" if key == promotion_metric else key, _number(metrics[key]), interval))
    return rows


def known_limits(facts: CardFacts) -> list[str]:
    """The limits a card states, generated from the facts (never written by hand).

    Examples
    --------
    >>> known_limits(CardFacts({"metrics": {}, "ood": None}, data=DataFacts("synthetic", "generator")))[0][:50]
    'Trained and tested on synthetic images only (the b'
    """
    record = facts.record
    limits = []
    if facts.data.origin == "synthetic":
        limits.append("Trained and tested on synthetic images only (the built-in generator): no figure here says "
                      "how it does on real microscope images.")
    elif facts.data.origin == "unknown":
        limits.append(f"Whether its data is synthetic or real is not known ({facts.data.origin_reason}).")
    data_version = str(record.get("data_version") or "")
    if not data_version or data_version == "untracked":
        limits.append("No DVC data version recorded: the data it was trained on cannot be named or restored.")
    elif data_version.endswith("+modified"):
        limits.append("Trained on data that differed from the recorded DVC version (+modified): it is never "
                      "promoted, and its data cannot be restored from DVC.")
    if str(record.get("git_commit") or "").endswith("-dirty"):
        limits.append("Trained from uncommitted code (-dirty): the recorded commit is not exactly the code that "
                      "trained it.")
    metrics, promotion = record.get("metrics") or {}, record.get("promotion_metric")
    if promotion and promotion in metrics:
        low, high = metrics.get(promotion + CI_LOW), metrics.get(promotion + CI_HIGH)
        if low is None or high is None:
            limits.append(f"No 95 % interval recorded for {promotion}: its uncertainty on the test set is unknown.")
        elif not (math.isnan(low) or math.isnan(high)) and high - low > WIDE_INTERVAL:
            limits.append(f"Few test images: the 95 % interval of {promotion} is {high - low:.3g} wide "
                          f"([{low:.4g}, {high:.4g}]).")
    elif not metrics:
        limits.append("No test metrics recorded.")
    if record.get("ood") is None:
        limits.append("No out-of-distribution reference: images unlike its training images are not flagged.")
    if facts.robustness is None:
        limits.append("Robustness to noise, blur, contrast and gain not measured for this version.")
    if not record.get("runtime_checks"):
        limits.append("No runtime checks recorded: served with torch, other runtimes not compared.")
    if facts.missing:
        limits.append("Cannot be reproduced: " + "; ".join(facts.missing) + ".")
    if not facts.intended_use:
        limits.append("No intended use recorded.")
    return limits


def _intended_use(facts: CardFacts) -> Section:
    use = facts.intended_use
    if use is None:
        return Section("Intended use", ("Not recorded: neither the ZenML model nor the family's training config has "
                                        "a model: block with a description.",))
    rows = tuple((label, use.fields[key]) for key, label in INTENDED_USE_FIELDS if key in use.fields)
    return Section("Intended use", (Table(("", ""), rows), f"From {use.source}."))


def _data(facts: CardFacts) -> Section:
    record = facts.record
    rev = record.get("data_rev")
    revision = f"{rev} (commit {record.get('data_rev_commit', '-')})" if rev else "the working tree's data"
    origin = {"synthetic": "synthetic (the built-in generator's images)", "own": "own data (not the generator's)",
              "unknown": "unknown"}[facts.data.origin]
    rows = [("DVC data version", record.get("data_version") or "not recorded"),
            ("files in the data version", _number(record.get("data_files")) if record.get("data_files") not in
             (None, "", "-1") else "unknown"),
            ("data revision", revision),
            ("synthetic or real", f"{origin}: {facts.data.origin_reason}"),
            ("corrections", record.get("corrections") or "not recorded (trained before corrections were recorded)")]
    if record.get("corrections_use"):
        rows.append(("corrections use", f"{record['corrections_use']} (store {record.get('corrections_store', '-')})"))
    if record.get("test_set"):
        rows.append(("test set fingerprint", record["test_set"]))
    return Section("Data", (Table(("", ""), tuple(rows)),
                            "The test set is the held-out split of this data version; corrected images join "
                            "training or validation, never the test set."))


def _metrics(record: dict) -> Section:
    rows = metric_rows(record.get("metrics") or {}, record.get("promotion_metric"))
    if not rows:
        return Section("Test metrics", ("No test metrics recorded.",))
    blocks: list[Block] = [Table(("metric", "value", "95 % interval"), tuple(rows)),
                           "On the held-out test set at registration. Intervals: bootstrap 95 % confidence "
                           "intervals, resampling the test images (U-Net: the slices of its test volume); the "
                           "classifier's sensitivity: a 95 % Wilson score interval."]
    settings = record.get("inference_settings")
    if settings:
        blocks.append(Table(("measured with setting", "value"),
                            tuple((key, _number(value)) for key, value in sorted(settings.items()))))
    return Section("Test metrics", tuple(blocks))


def _robustness(rows: list[dict] | None) -> Section:
    if rows is None:
        return Section("Robustness", ("Not measured for this version.",))
    if not rows:
        return Section("Robustness", ("The sweep was recorded with no condition.",))
    # The condition names its strength ("gaussian_noise 0.25"): no column repeats it.
    table = Table(("condition", "metric", "value", "clean", "difference"),
                  tuple((r.get("condition"), r.get("metric"), _number(r.get("value")),
                         _number(r.get("clean_value")),
                         _number(r.get("difference", _difference(r)))) for r in rows))
    return Section("Robustness", (table, "The test images perturbed (each condition at its strength), scored as "
                                         "served; difference is value minus the clean value."))


def _difference(row: Mapping[str, object]) -> float | None:
    try:
        return float(row["value"]) - float(row["clean_value"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return None


def _runtime(record: dict) -> Section:
    checks = record.get("runtime_checks") or []
    runtime = record.get("runtime") or "torch"
    if not checks:
        return Section("Runtime checks", (f"Served with {runtime}; no runtime checks recorded.",))
    from cellops.host_runtime import registry_verdicts

    verdicts = registry_verdicts(checks)
    rows = tuple((c.get("runtime"), _number(c.get("speedup")) + ("x" if c.get("speedup") is not None else ""),
                  _number(c.get("change")), "accurate" if verdicts[str(c.get("runtime"))]["accurate"] else "not used",
                  c.get("note") or "")
                 for c in checks)
    return Section("Runtime checks", (f"Each runtime's test metric against torch fp32's: an accurate one may serve. "
                                      "The machine that runs the model times the accurate ones on its own CPU and "
                                      f"runs the fastest; the registering machine's choice was {runtime} (its "
                                      "speed-ups below).",
                                      Table(("runtime", "speed-up", "metric change", "verdict", "note"), rows)))


def _ood(record: dict) -> Section:
    ood = record.get("ood")
    if not ood:
        return Section("Out-of-distribution reference", ("None for this version: its predictions are not checked "
                                                         "for images unlike its training images.",))
    rate = ood.get("false_alarm_rate")
    rows = (("score", ood.get("score") or "-"), ("threshold", _number(ood.get("threshold"))),
            ("false-alarm rate", "-" if rate is None else f"{rate:.0%}"),
            ("features", ", ".join(map(str, ood.get("features") or [])) or "-"))
    return Section("Out-of-distribution reference", (Table(("", ""), rows), "An image scoring above the threshold is "
                                                     "flagged (or refused) as unlike the training images."))


def _lineage(record: dict) -> Section:
    rows = [("registered model", record.get("registered_model")), ("version", record.get("model_version")),
            ("aliases", ", ".join(record.get("aliases") or []) or "none"),
            ("MLflow run", record.get("mlflow_run_id")), ("ZenML run", record.get("zenml_run_id")),
            ("git commit", record.get("git_commit")), ("data version", record.get("data_version")),
            ("parent model", record.get("parent_model") or "none (trained from its configured init)"),
            ("family", record_family(record))]
    for key in ("model_name", "architecture", "init_used", "weights_sha256"):
        if record.get(key):
            rows.append((key.replace("_", " "), record[key]))
    return Section("Lineage", (Table(("", ""), tuple((k, "not recorded" if v in (None, "") else v)
                                                     for k, v in rows)),))


def _reproduce(facts: CardFacts) -> Section:
    blocks: list[Block] = []
    if facts.reproduce:
        blocks += ["These commands re-run its training config on its commit and data version:",
                   Code(tuple(facts.reproduce))]
    if facts.missing:
        blocks += ["It cannot be reproduced; missing:", Bullets(tuple(facts.missing))]
    return Section("Reproduce", tuple(blocks) or ("No reproduce commands recorded.",))


def card_sections(facts: CardFacts) -> list[Section]:
    """The card's sections in order: intended use, data, test metrics, robustness, runtime checks,
    out-of-distribution reference, known limits, lineage, reproduce (and notes, when any)."""
    limits = known_limits(facts)
    sections = [_intended_use(facts), _data(facts), _metrics(facts.record), _robustness(facts.robustness),
                _runtime(facts.record), _ood(facts.record),
                Section("Known limits", (Bullets(tuple(limits)),) if limits else ("None generated.",)),
                _lineage(facts.record), _reproduce(facts)]
    if facts.notes:
        sections.append(Section("Notes", (Bullets(tuple(facts.notes)),)))
    return sections


# ------------------------------------------------------------------------------------------------------- rendering
def _md_text(value: object) -> str:
    """Plain text for markdown: HTML specials as entities (a name holding ``<`` stays text), no line breaks."""
    return html.escape(str(value), quote=False).replace("\n", " ")


def _md_cell(value: object) -> str:
    return _md_text(value).replace("|", "\\|")


def render_markdown(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The sections as markdown (every value escaped: ``<``, ``>``, ``&`` as entities, ``|`` in tables).

    Examples
    --------
    >>> print(render_markdown("a<b", "x", [Section("S", ("p|q", Table(("k", "v"), (("a|b", 1),))))]))
    # a&lt;b
    <BLANKLINE>
    x
    <BLANKLINE>
    ## S
    <BLANKLINE>
    p|q
    <BLANKLINE>
    | k | v |
    |---|---|
    | a\\|b | 1 |
    <BLANKLINE>
    """
    out = [f"# {_md_text(title)}", "", _md_text(subtitle), ""]
    for section in sections:
        out += [f"## {_md_text(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            elif isinstance(block, Code):
                out += ["```bash", *[line.replace("```", "'''") for line in block.lines], "```"]
            elif isinstance(block, Bullets):
                out += [f"- {_md_text(item)}" for item in block.items]
            else:
                out.append(_md_text(block))
            out.append("")
    return "\n".join(out)


#: The HTML page's inline style (no external resource).
STYLE = ("body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}"
         "table{border-collapse:collapse;font-size:14px;margin:.5em 0}th,td{padding:3px 10px;text-align:left;"
         "border-bottom:1px solid #ddd;vertical-align:top}pre{background:#f4f4f4;padding:.6em;overflow-x:auto}"
         "h2{border-bottom:1px solid #ccc;padding-bottom:2px;margin-top:1.6em}.sub{color:#555}")


def render_html(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The sections as one self-contained HTML page: inline CSS, no script, no external resource, every value
    escaped.

    Examples
    --------
    >>> page = render_html("m<script>", "x", [Section("S", (Bullets(("<b>",)),))])
    >>> "<script>" in page, "m&lt;script&gt;" in page, "<li>&lt;b&gt;</li>" in page
    (False, True, True)
    """
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f'<p class="sub">{esc(subtitle)}</p>']
    for section in sections:
        body.append(f"<h2>{esc(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                header = "".join(f"<th>{esc(str(h))}</th>" for h in block.header) if any(block.header) else ""
                rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                body.append(f"<table>{f'<tr>{header}</tr>' if header else ''}{rows}</table>")
            elif isinstance(block, Code):
                body.append("<pre><code>" + esc("\n".join(block.lines)) + "</code></pre>")
            elif isinstance(block, Bullets):
                body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>")
            else:
                body.append(f"<p>{esc(block)}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def no_card_html(name: str, reason: str) -> str:
    """The short page shown instead of a card when a run registered no version of ``name``, saying why.

    Examples
    --------
    >>> page = no_card_html("m<", "a duplicate of v2")
    >>> "no version of m&lt;: a duplicate of v2." in page
    True
    """
    return render_html("No model card", f"This run registered no version of {name}: {reason}.", [])


def build_card(facts: CardFacts, generated: str = "") -> ModelCard:
    """The card of the version ``facts.record`` describes, as markdown and HTML.

    Parameters
    ----------
    facts : CardFacts
        What the card says.
    generated : str, optional
        When and by what it was generated (shown under the title), e.g. ``2026-12-02 by cellops card``.

    Returns
    -------
    ModelCard
        The card.

    Examples
    --------
    >>> card = build_card(CardFacts({"registered_model": "cellops-unet", "model_version": "3",
    ...                              "metrics": {"iou": 0.8, "iou_ci_low": 0.7, "iou_ci_high": 0.85}}))
    >>> "| iou | 0.8 | [0.7, 0.85] |" in card.markdown, card.html.startswith("<!DOCTYPE html>")
    (True, True)
    """
    record = facts.record
    name, version = str(record.get("registered_model")), str(record.get("model_version"))
    family = record_family(record)
    title = f"Model card: {name} version {version}"
    subtitle = (f"{family + ' model; ' if family else ''}generated from the registry by cellops, never written by "
                f"hand{'; ' + generated if generated else ''}.")
    sections = card_sections(facts)
    return ModelCard(name, version, render_markdown(title, subtitle, sections), render_html(title, subtitle, sections))


# ----------------------------------------------------------------------------------------------- synthetic or real
def _generated_listing(params: Mapping[str, object], folders: Sequence[str]) -> dict[str, str]:
    """md5 of every file the built-in generator writes for ``folders`` with ``params`` (relative to ``data/``)."""
    import yaml

    from cellops.cli import generate_data
    from cellops.data_version import hash_folder

    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump({k: params[k] for k in folders}))
        with contextlib.redirect_stdout(io.StringIO()):
            generate_data(params_file, Path(tmp) / "data")
        return hash_folder(Path(tmp) / "data")


def _params_at(repo_root: Path, git_commit: str | None) -> tuple[dict, str]:
    """``params.yaml`` at the version's commit (the working tree's when the commit is unknown), and which."""
    import yaml

    commit = (git_commit or "").removesuffix("-dirty")
    if commit and commit != "unknown":
        result = subprocess.run(["git", "show", f"{commit}:params.yaml"], cwd=repo_root, capture_output=True,
                                text=True)
        if result.returncode == 0:
            return yaml.safe_load(result.stdout) or {}, f"params.yaml at commit {commit[:12]}"
    return yaml.safe_load((repo_root / "params.yaml").read_text()) or {}, "the working tree's params.yaml"


def data_version_listing(repo_root: str | Path, data_version: str) -> dict[str, str] | None:
    """The md5 of every file of a DVC data version (``<md5>.dir``), from this checkout's DVC cache or the committed
    ``data.files.json`` when that lists it; None when neither holds it."""
    from cellops.data_version import dvc_dir_md5, read_manifest

    repo_root = Path(repo_root)
    if not data_version.endswith(".dir"):
        return None
    cached = repo_root / ".dvc" / "cache" / "files" / "md5" / data_version[:2] / data_version[2:]
    if cached.is_file():
        return read_manifest(cached)
    committed = repo_root / "data.files.json"
    if committed.is_file():
        listing = read_manifest(committed)
        if dvc_dir_md5(listing) == data_version:
            return listing
    return None


def builtin_data_origin(repo_root: str | Path, family: str | None, data_version: str | None,
                        git_commit: str | None = None) -> DataFacts:
    """Synthetic or own data: the family's folders of the version's data (:data:`FAMILY_DATA`) compared file by
    file with what the built-in generator (``cellops generate-data``, deterministic) writes for the
    ``params.yaml`` of the version's commit. Equal: synthetic; different: own data; not comparable (no data
    version, data marked ``+modified``, a listing not in this checkout): unknown, with the reason.

    Parameters
    ----------
    repo_root : str or Path
        The checkout (its ``.dvc`` cache, ``params.yaml`` and git history).
    family : str or None
        The version's family.
    data_version : str or None
        Its DVC data version (``<md5>.dir``).
    git_commit : str or None
        Its git commit.

    Returns
    -------
    DataFacts
        The origin and how it was told.
    """
    repo_root = Path(repo_root)
    folders = FAMILY_DATA.get(family or "")
    if not folders:
        return DataFacts("unknown", f"no built-in dataset for family {family!r}")
    if not data_version or data_version == "untracked":
        return DataFacts("unknown", "no DVC data version recorded")
    if data_version.endswith("+modified"):
        return DataFacts("unknown", "the data differed from its recorded DVC version (+modified)")
    listing = data_version_listing(repo_root, data_version)
    if listing is None:
        return DataFacts("unknown", f"the file listing of data version {data_version} is not in this checkout's "
                                    "DVC cache (dvc pull it)")
    try:
        params, where = _params_at(repo_root, git_commit)
    except OSError as error:
        return DataFacts("unknown", f"no params.yaml to regenerate the built-in data: {error}")
    present = [f for f in folders if any(path.startswith(f + "/") for path in listing)]
    if not present:
        return DataFacts("unknown", f"data version {data_version} has none of {', '.join(folders)}/")
    if any(f not in params for f in present):
        return DataFacts("own", f"{where} describes no built-in {', '.join(present)} dataset")
    generated = _generated_listing(params, present)
    used = {path: md5 for path, md5 in listing.items() if path.split("/", 1)[0] in present}
    if used == generated:
        return DataFacts("synthetic", f"data/{', data/'.join(present)} of data version {data_version} is, file by "
                                      f"file, what `cellops generate-data` writes for {where}")
    differ = sorted(set(used) ^ set(generated) | {p for p in used if generated.get(p) not in (None, used[p])})
    return DataFacts("own", f"{len(differ)} of the {len(used)} files of data/{', data/'.join(present)} are not what "
                            f"`cellops generate-data` writes for {where} (e.g. {differ[0]})")


def content_digest(card: ModelCard) -> str:
    """A short digest of the card's markdown (to tell two cards apart).

    Examples
    --------
    >>> len(content_digest(ModelCard("m", "1", "x", "<p>x</p>")))
    12
    """
    return hashlib.sha256(card.markdown.encode()).hexdigest()[:12]
