"""The model card of a registered version (:mod:`cellops.model_card`): gathered from the registry, kept with the
version, printed by ``cellops card``.

    cellops card MODEL[@ALIAS|:VERSION] [--out DIR] [--html]

:func:`version_card` builds the card of any registered version, also one registered before cards existed;
:func:`record_card` keeps it with the version (``card/<name>-v<version>/model_card.md`` and ``.html`` in the artifacts
of its run, and the :data:`CARD_TAG` tag), as the training pipelines do after registration; :func:`load_card` reads
it back. The deployment copies ``card/`` into the BentoML model, whose service answers it at ``GET /card``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

from cellops.model_card import CardFacts, IntendedUse, ModelCard, build_card, builtin_data_origin, record_family

#: The sub-commands this module adds to ``cellops``.
COMMANDS = ("card",)
#: The artifact folder of the version's run that holds the cards, one sub-folder per version
#: (:func:`card_artifacts`); the BentoML model holds one card, in a folder of this name.
CARD_ARTIFACTS = "card"
#: The version tag that says the version has a recorded card: the path of its markdown in the run's artifacts.
CARD_TAG = "cellops.card"


def card_artifacts(name: str, version: str) -> str:
    """The folder of a version's card in its run's artifacts: one per version, since one run can hold the model of
    several registered versions (the same model registered under two names).

    >>> card_artifacts("cellops-unet", "3")
    'card/cellops-unet-v3'
    """
    return f"{CARD_ARTIFACTS}/{name}-v{version}"


def _client(tracking):
    from mlflow import MlflowClient

    return tracking if isinstance(tracking, MlflowClient) else MlflowClient(tracking)


def intended_use(name: str, family: str, repo_root: str | Path = ".") -> IntendedUse | None:
    """What the model is for: the ZenML model ``name`` of this ZenML store when it has the fields, else the
    ``model:`` block of ``configs/<family>.yaml`` in ``repo_root``; None when neither has them.

    Parameters
    ----------
    name : str
        The registered (and ZenML) model's name.
    family : str
        Its family (the training config's name).
    repo_root : str or Path
        The checkout whose ``configs/`` to read.

    Returns
    -------
    IntendedUse or None
        The fields and where they came from.
    """
    try:
        from zenml.client import Client

        model = Client().get_model(name)
        found = IntendedUse.from_block({key: getattr(model, key, None) for key in
                                        ("description", "audience", "use_cases", "limitations", "trade_offs")},
                                       f"the ZenML model {name} (Model Control Plane)")
        if found is not None:
            return found
    except Exception:  # no ZenML store here, or no such model: the training config still answers
        pass
    config = Path(repo_root) / "configs" / f"{family}.yaml"
    try:
        block = (yaml.safe_load(config.read_text()) or {}).get("model")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return IntendedUse.from_block(block if isinstance(block, dict) else None,
                                  f"configs/{family}.yaml (its model: block; the ZenML model {name} is not in this "
                                  "store)")


def card_facts(tracking, record: dict, repo_root: str | Path = ".") -> CardFacts:
    """Everything the card of the version ``record`` (:func:`tracking.registry.resolve_version`) says.

    Parameters
    ----------
    tracking : str or MlflowClient
        The MLflow store.
    record : dict
        The version's record.
    repo_root : str or Path
        The checkout (configs, params.yaml, DVC cache, git history).

    Returns
    -------
    CardFacts
        Intended use, data origin, robustness sweep, reproduce commands and what is missing for them.
    """
    from tracking.reproduce import missing_for_reproduction, reproduce_commands
    from tracking.robustness import load_robustness

    name, version = record["registered_model"], record["model_version"]
    family = record_family(record)
    notes = []
    try:
        robustness = load_robustness(tracking, name, version)
    except LookupError as error:
        robustness, notes = None, [f"robustness sweep unreadable: {error}"]
    return CardFacts(record=record, intended_use=intended_use(name, family, repo_root),
                     data=builtin_data_origin(repo_root, family, record.get("data_version"), record.get("git_commit")),
                     robustness=robustness, reproduce=list(reproduce_commands(record)),
                     missing=list(missing_for_reproduction(record)), notes=notes)


def version_card(tracking, name: str, version: str | None, *, repo_root: str | Path = ".") -> ModelCard:
    """The card of any registered version, generated now from the registry (also for a version registered before
    cards existed).

    Parameters
    ----------
    tracking : str or MlflowClient
        The MLflow store's tracking URI, or a client of it.
    name : str
        The registered model.
    version : str
        A version number, ``@alias``, ``latest``, or None for the champion
        (:func:`tracking.registry.resolve_version`).
    repo_root : str or Path
        The checkout (configs, params.yaml, DVC cache, git history).

    Returns
    -------
    ModelCard
        The card.

    Raises
    ------
    LookupError
        Naming what exists, for an unknown model, version or alias.
    """
    from tracking.registry import resolve_version

    client = _client(tracking)
    record = resolve_version(client, name, None if version is None else str(version))
    generated = datetime.now(timezone.utc).strftime("generated %Y-%m-%d %H:%M UTC")
    return build_card(card_facts(client, record, repo_root), generated)


def record_card(client, name: str, version: str, *, repo_root: str | Path = ".") -> ModelCard:
    """Generate the version's card and keep it with the version: ``card/<name>-v<version>/model_card.md`` and
    ``model_card.html`` in the artifacts of its run (:func:`card_artifacts`), and the :data:`CARD_TAG` tag
    (:func:`tracking.registry.keep_with_version`).

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.
    version : str
        The version.
    repo_root : str or Path
        The checkout.

    Returns
    -------
    ModelCard
        The card kept.

    Raises
    ------
    ValueError
        For a version registered from no run (nowhere to keep the card).
    """
    from cellops.model_card import MARKDOWN_FILE
    from tracking.registry import keep_with_version

    card = version_card(client, name, version, repo_root=repo_root)
    folder = card_artifacts(name, card.version)
    keep_with_version(client, name, card.version, folder, card.write, {CARD_TAG: f"{folder}/{MARKDOWN_FILE}"},
                      what="model card")
    return card


def load_card(tracking, name: str, version: str) -> ModelCard | None:
    """The card :func:`record_card` kept with a version, or None for a version without one.

    Raises
    ------
    LookupError
        When the version is tagged with a card its run's artifacts do not hold.
    """
    from tracking.registry import read_kept

    client = _client(tracking)
    return read_kept(client, name, version, CARD_TAG, card_artifacts(name, str(version)),
                     lambda folder: ModelCard.read(folder, name, str(version)), what="a model card")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add :data:`COMMANDS` to the ``cellops`` parser's sub-commands.

    Parameters
    ----------
    commands : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.
    """
    card = commands.add_parser(
        "card", help="the model card of a registered version (markdown, or markdown and HTML files)",
        description="The model card of one registered version, generated from the registry: intended use, the data "
                    "it was trained and tested on (synthetic or real, corrections), test metrics with their 95 % "
                    "intervals, the robustness sweep, runtime checks, out-of-distribution reference, known limits, "
                    "lineage and the commands that reproduce it.",
        epilog="exit codes: 0 printed or written; 2 unknown model, version or alias (the message lists what exists), "
               "or no store")
    card.add_argument("reference", help="MODEL, MODEL:VERSION or MODEL@ALIAS (e.g. cellops-unet@champion, "
                      "cellops-unet:latest); MODEL alone: its champion")
    card.add_argument("--out", type=Path, default=None, help="write model_card.md and model_card.html into this "
                      "folder instead of printing")
    card.add_argument("--html", action="store_true", help="print the HTML page instead of the markdown")
    card.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else this checkout's "
                      "mlruns/mlflow.db")


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser, tracking_uri: str) -> int:
    """Run ``cellops card``: print the card (markdown, or HTML with ``--html``) or write both files to ``--out``.

    Returns
    -------
    int
        0 printed or written; 2 no store, or an unknown model, version or alias (the message names what exists).
    """
    from tracking.registry import check_store_exists, parse_model_uri
    from tracking.review import model_uri

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder")
    try:
        check_store_exists(tracking_uri)
        name, ref = parse_model_uri(model_uri(args.reference))  # MODEL alone: its champion
        card = version_card(tracking_uri, name, ref)
    except LookupError as error:
        print(f"cellops card: {error}", file=sys.stderr)
        return 2
    if args.out is None:
        print(card.html if args.html else card.markdown)
        return 0
    for path in card.write(args.out):
        print(path)
    return 0
