"""`cellops export bioimageio` and `cellops import bioimageio`: registered versions as BioImage Model Zoo packages
and back (the registry side of :mod:`cellops.bioimageio`).

    cellops export bioimageio MODEL[@ALIAS|:VERSION] --out DIR [--config CONFIG]
    cellops import bioimageio PACKAGE [--config configs/<family>.yaml]

Export writes ``DIR/<model>-v<version>.bioimageio.zip``: the version's network, a test tile of the family's test
data (this checkout's data, read as the training config reads it) with the project's prediction of it, the served
settings, the model card (:func:`tracking.cards.version_card`) and the lineage. Import reads a package, scores its
network on this checkout's test set with the family's own score function and registers it as a new version of
``cellops-<family>`` through the same promotion gate as a trained candidate (metric, alias, improvement and
tie-breakers of the family's training config). Every refusal exits with code 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from cellops.bioimageio import PackageError

#: The sub-commands this module adds to ``cellops``.
COMMANDS = ("export", "import")
#: The formats they know.
FORMATS = ("bioimageio",)
#: Exit code of every refusal.
EXIT_REFUSED = 2
#: Tags naming the imported package on the version it becomes.
PACKAGE_NAME = "bioimageio.name"
PACKAGE_SHA256 = "bioimageio.sha256"
PACKAGE_SOURCE = "bioimageio.source"  # the registered version it was exported from, for a cellops package
PACKAGE_SOURCE_COMMIT = "bioimageio.source_git_commit"
PACKAGE_SOURCE_DATA = "bioimageio.source_data_version"
#: The training step whose parameters are a family's registration gate, and the loading step naming its data.
REGISTER_STEPS = {"unet": "register_unet", "classifier": "register_classifiers"}
DATA_STEPS = {"unet": "load_em_dataset", "classifier": "index_class_folders"}


def _config(family: str, path: str | Path | None, repo_root: Path) -> dict:
    """The family's training config (``configs/<family>.yaml`` by default) as a mapping."""
    import yaml

    path = Path(path) if path is not None else repo_root / "configs" / f"{family}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config {path}: give --config, the family's training config")
    return yaml.safe_load(path.read_text())


def _step_parameters(config: dict, step: str) -> dict:
    return dict(((config.get("steps") or {}).get(step) or {}).get("parameters") or {})


def _data_dir(family: str, config: dict, record: dict, repo_root: Path) -> Path:
    """The family's data folder as the config names it, in the version's data revision where it names one."""
    from cellops.lineage import data_dir_for

    folder = Path(_step_parameters(config, DATA_STEPS[family])["data_dir"])
    return data_dir_for(folder if folder.is_absolute() else repo_root / folder, record,
                        repo_root / "data.dvc", repo_root)


# ----------------------------------------------------------------------------------------------------- export


def _em_pixel_size_um(data_dir: Path, repo_root: Path) -> tuple[float | None, str]:
    """The EM data's pixel size in µm and where it came from: the test stack's metadata, else the voxel size the
    default data is generated with (``params.yaml`` ``em.voxel_nm``), else none."""
    import yaml

    from cellops.microscopy import physical_pixel_sizes

    stated = physical_pixel_sizes(data_dir / "testing.tif")
    if stated.get("X"):
        return float(stated["X"]), f"{data_dir / 'testing.tif'} metadata"
    params = repo_root / "params.yaml"
    voxel_nm = ((yaml.safe_load(params.read_text()) or {}).get("em") or {}).get("voxel_nm") if params.is_file() else None
    if voxel_nm:
        return float(voxel_nm) / 1000.0, "params.yaml em.voxel_nm (the generated default data)"
    return None, "unknown"


def _documentation(tracking_uri: str, name: str, version: str, record: dict, repo_root: Path) -> tuple[str, str | None]:
    """The version's model card (markdown, HTML); a short generated page where the card cannot be built."""
    try:
        from tracking.cards import version_card

        card = version_card(tracking_uri, name, version, repo_root=repo_root)
        return card.markdown, card.html
    except Exception as error:  # noqa: BLE001 - the package still documents its version, saying why no card
        metrics = "\n".join(f"- {k}: {v:.4g}" for k, v in sorted(record.get("metrics", {}).items()))
        return (f"# {name} v{version}\n\nNo model card could be generated ({error}).\n\n## Test metrics\n\n{metrics}\n\n"
                f"## Lineage\n\n```json\n{json.dumps(record, indent=2, sort_keys=True, default=str)}\n```\n", None)


def export_version(tracking_uri: str, reference: str, out: str | Path, *, config: str | Path | None = None,
                   repo_root: str | Path = ".") -> Path:
    """Write a registered version as a bioimage.io package in ``out``; returns the package.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    reference : str
        ``MODEL``, ``MODEL@ALIAS`` or ``MODEL:VERSION`` (``MODEL`` alone: its champion).
    out : str or Path
        The folder the package is written to.
    config : str or Path or None, optional
        The family's training config naming its data (default ``configs/<family>.yaml``).
    repo_root : str or Path, optional
        The checkout whose test data the test tensors come from.

    Returns
    -------
    Path
        ``out/<model>-v<version>.bioimageio.zip``.

    Raises
    ------
    LookupError
        An unknown model, version or alias.
    PackageError
        A family that is not exported (Mask R-CNN, with the reason).
    """
    from mlflow import MlflowClient

    from cellops import bioimageio
    from cellops.families import read_serving, record_family
    from tracking import tags as names
    from tracking.registry import check_store_exists, load_registered, parse_model_uri, resolve_version
    from tracking.review import model_uri

    repo_root = Path(repo_root)
    check_store_exists(tracking_uri)
    name, ref = parse_model_uri(model_uri(reference))
    record = resolve_version(MlflowClient(tracking_uri), name, ref)
    version = record["model_version"]
    if not record.get(names.INFERENCE_SETTINGS):
        raise PackageError(f"{name}:{version} records no inference settings: the package's processing cannot be said")
    family = record_family(record[names.INFERENCE_SETTINGS])
    bioimageio.refuse_family(family)
    settings = read_serving(record[names.INFERENCE_SETTINGS])
    family_config = _config(family, config, repo_root)
    data_dir = _data_dir(family, family_config, record, repo_root)
    model = load_registered(tracking_uri, name, record)
    markdown, html = _documentation(tracking_uri, name, version, record, repo_root)
    lineage = {key: record.get(key) for key in ("registered_model", "model_version", "data_version", "data_files",
                                                "git_commit", "data_rev", "data_rev_commit", "mlflow_run_id",
                                                "zenml_run_id", "metrics", "promotion_metric", "aliases")}
    attachments = {bioimageio.LINEAGE_FILE: bioimageio.lineage_json(lineage)}
    if html:
        attachments["model_card.html"] = html
    text = bioimageio.PackageText(
        name=f"{name} v{version}", description=_description(family, record), documentation=markdown,
        license=str(family_config.get("model", {}).get("license", "Apache-2.0")),
        tags=tuple(family_config.get("tags") or (family,)), attachments=attachments,
        config={"lineage": lineage, "registered_model": name, "model_version": version})
    target = Path(out) / f"{name}-v{version}.bioimageio.zip"
    if family == "unet":
        from cellops.unet.data import load_lucchi
        from cellops.unet.specs import unet_shape

        test_image = load_lucchi(data_dir).test_image
        pixel_size_um, source = _em_pixel_size_um(data_dir, repo_root)
        text = replace(text, config={**text.config, "pixel_size_um": pixel_size_um, "pixel_size_source": source})
        image = test_image[len(test_image) // 2] if test_image.ndim == 3 else test_image
        return bioimageio.unet_package(model, image, settings, unet_shape(model.state_dict()), text, target,
                                       pixel_size_um=pixel_size_um)
    files, _ = _classifier_test_set(family_config, data_dir)
    from cellops.io import read_image_file

    architecture = record.get("architecture") or _architecture_tag(tracking_uri, name, version)
    return bioimageio.classifier_package(model, read_image_file(files[0]), settings, architecture,
                                         bioimageio.classifier_options(model), text, target)


def _architecture_tag(tracking_uri: str, name: str, version: str) -> str:
    """The version's ``architecture`` tag (not among the version record's keys)."""
    from mlflow import MlflowClient

    from tracking import tags as names

    found = MlflowClient(tracking_uri).get_model_version(name, version).tags.get(names.ARCHITECTURE)
    if not found:
        raise PackageError(f"{name}:{version} records no architecture: its state dict cannot name its source")
    return found


def _description(family: str, record: dict) -> str:
    what = {"unet": "2-D U-Net: mitochondria foreground in EM slices",
            "classifier": "image classifier: class probabilities of one micrograph"}[family]
    return (f"cellops {what}; registered as {record['registered_model']} v{record['model_version']}, trained on data "
            f"version {record.get('data_version', 'unknown')} at commit {record.get('git_commit', 'unknown')}")


# ----------------------------------------------------------------------------------------------------- import


def _classifier_test_set(config: dict, data_dir: Path) -> tuple[list[Path], dict]:
    """The classifier's test files (in index order) and the folder index (:func:`index_class_folder`)."""
    from cellops.classifier.data import SplitSettings, index_class_folder

    index = index_class_folder(data_dir, SplitSettings.from_dict(_step_parameters(config, "index_class_folders")["split"]))
    files = [Path(f) for f, split in zip(index["files"], index["splits"]) if split == "test"]
    if not files:
        raise PackageError(f"{data_dir}: the classifier data has no test images")
    return files, index


def _unet_scorer(config: dict, data_dir: Path):
    """``score(model, settings) -> metrics`` of a U-Net on the test volume, and what the data needs of a package."""
    from cellops.unet.data import load_lucchi
    from cellops.unet.predict import load_for_inference, score_with_interval
    from cellops.unet.specs import UNetServing

    base = UNetServing.from_dict(config["parameters"]["inference"])
    data = load_lucchi(data_dir)

    def scores(model, settings) -> dict[str, float]:
        # With the bootstrap 95 % interval over test slices, as the training pipeline's evaluation records it.
        return score_with_interval(load_for_inference(model), data.test_image, data.test_mask, settings)[0]

    fits = {"channels": int(config["parameters"]["architecture"]["in_channels"]), "tile_size": base.tile_size}
    return scores, base, fits, {}


def _classifier_scorer(config: dict, data_dir: Path):
    """``score(model, settings) -> metrics`` of a classifier on the test split, and what the data needs."""
    from cellops.classifier.data import classification_test_fingerprint, load_class_images
    from cellops.classifier.metrics import classification_scores
    from cellops.classifier.specs import ClassifierServing
    from cellops.classifier.train import predict_probabilities
    from cellops.metrics import sensitivity_interval
    from tracking import tags as names

    files, index = _classifier_test_set(config, data_dir)
    labels = np.asarray(index["labels"])[np.asarray(index["splits"]) == "test"]
    positive = config["parameters"]["positive_class"]
    base = ClassifierServing.from_dict({**config["parameters"]["input"], "classes": index["classes"],
                                        "positive_class": positive})

    def scores(model, settings) -> dict[str, float]:
        images, failures = load_class_images(files, channels=settings.channels, size=settings.size,
                                             normalization=settings.normalization)
        if failures:
            raise ValueError(f"unreadable test images: {failures}")
        probabilities = predict_probabilities(model.eval(), images, settings.batch_size)
        found = classification_scores(probabilities, labels, settings.positive, threshold=settings.decision_threshold)
        return {**found.as_dict(),
                **sensitivity_interval(settings.predicted_classes(probabilities), labels, settings.positive)}

    fits = {"channels": base.channels, "size": base.size, "classes": list(index["classes"])}
    test_set = classification_test_fingerprint(index["md5"], [index["classes"][i] for i in index["labels"]],
                                                index["splits"], positive)
    return scores, base, fits, {names.TEST_SET: test_set}


def import_package(tracking_uri: str, package: str | Path, *, config: str | Path | None = None,
                   repo_root: str | Path = ".") -> dict:
    """Register a bioimage.io package as a new version of ``cellops-<family>``, scored on this checkout's test
    set and judged by the family's promotion gate.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    package : str or Path
        The package (zip or folder).
    config : str or Path or None, optional
        The family's training config (default ``configs/<family>.yaml``): its data, served settings and
        registration gate.
    repo_root : str or Path, optional
        The checkout (its data, lineage and configs).

    Returns
    -------
    dict
        The registration decision (:func:`tracking.registry.register_and_maybe_promote`) with the test
        ``metrics`` and the ``family``.

    Raises
    ------
    PackageError
        An invalid package (the validator's messages), one of another kind, or one that does not fit the data.
    """
    import mlflow
    from mlflow import MlflowClient

    from cellops import bioimageio
    from cellops.distributed import weights_digest
    from cellops.intensity import Normalization
    from cellops.lineage import collect_lineage
    from tracking import tags as names
    from tracking.registry import register_and_maybe_promote
    from tracking.runs import log_pytorch_model

    repo_root = Path(repo_root)
    imported = bioimageio.read_package(package)
    family = imported.family
    family_config = _config(family, config, repo_root)
    lineage = collect_lineage(repo_root / "data.dvc", repo_root).as_dict()
    data_dir = _data_dir(family, family_config, lineage, repo_root)
    scorer = _unet_scorer if family == "unet" else _classifier_scorer
    scores, base, fits, test_tags = scorer(family_config, data_dir)
    bioimageio.check_fits(family, imported, fits)
    overrides = {key: value for key, value in imported.record.items() if key not in ("normalization", "classes")}
    settings = replace(base, normalization=Normalization.from_dict(imported.record["normalization"]), **overrides)
    metrics = scores(imported.network, settings)
    gate = _step_parameters(family_config, REGISTER_STEPS[family])
    registered_name = gate["registered_model_name"]

    def rescore(champion) -> dict[str, float]:
        # The champion as it is served (its own settings), on the same test data.
        from cellops.families import read_serving

        old = mlflow.pytorch.load_model(f"models:/{registered_name}/{champion.version}", map_location="cpu")
        return scores(old, read_serving(names.inference_from_tags(champion.tags)))

    source = imported.cellops
    package_tags = {PACKAGE_NAME: imported.name, PACKAGE_SHA256: bioimageio.sha256(_package_file(package))}
    if source.get("registered_model"):
        origin = source.get("lineage") or {}
        package_tags.update({PACKAGE_SOURCE: f"{source['registered_model']}:{source.get('model_version')}",
                             PACKAGE_SOURCE_COMMIT: str(origin.get("git_commit")),
                             PACKAGE_SOURCE_DATA: str(origin.get("data_version"))})
    architecture = (source.get("architecture") or {}).get("architecture", "bioimageio") if family == "classifier" \
        else "unet"
    mlflow.set_tracking_uri(tracking_uri)
    _experiment(tracking_uri, f"cellops-{family}")
    example = np.zeros((1, imported.input_channels, *(2 * [fits.get("size") or fits.get("tile_size")])), np.float32)
    with mlflow.start_run(run_name=f"bioimageio-import-{imported.name}") as run:
        mlflow.set_tags({**package_tags, "imported_from": "bioimageio"})
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics.items()})
        info = log_pytorch_model(imported.network, example, ["models"])
        decision = register_and_maybe_promote(
            MlflowClient(tracking_uri), info.model_uri, registered_name, metrics,
            {**names.lineage_to_tags({**lineage, **test_tags}), **names.inference_to_tags(settings.as_dict()),
             names.MLFLOW_RUN_ID: run.info.run_id, names.MODEL_NAME: f"bioimageio:{imported.name}",
             names.ARCHITECTURE: architecture, names.WEIGHTS_SHA256: weights_digest(imported.network), **package_tags},
            promotion_metric=gate["promotion_metric"], alias=gate["alias"],
            min_improvement=float(gate["min_improvement"]), rescore=rescore,
            tie_breakers=tuple(gate.get("tie_breakers") or ()))
        mlflow.set_tags({"registered_model_version": str(decision["version"]), "registration_reason": decision["reason"]})
    return {**decision, "family": family, "metrics": metrics}


def _experiment(tracking_uri: str, name: str) -> None:
    """Make ``name`` the active experiment; one that does not exist yet is created where the training pipelines
    keep their artifacts in a local store (``<store folder>/artifacts/<name>``, :mod:`scripts.setup_stack`)."""
    import mlflow

    from tracking.runs import local_store_path

    store = local_store_path(tracking_uri)
    if mlflow.get_experiment_by_name(name) is None and store is not None:
        folder = store.parent if store.suffix == ".db" else store
        mlflow.create_experiment(name, artifact_location=(folder.resolve() / "artifacts" / name).as_uri())
    mlflow.set_experiment(name)


def _package_file(package: str | Path) -> Path:
    """The file whose SHA-256 names a package: the zip, or a folder's rdf.yaml."""
    path = Path(package)
    if path.is_dir():
        return next(p for p in (path / "rdf.yaml", path / "bioimageio.yaml") if p.is_file())
    return path


# ----------------------------------------------------------------------------------------------------- CLI


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add :data:`COMMANDS` to the ``cellops`` parser's sub-commands."""
    epilog = "exit codes: 0 done; 2 refused (the message says why: an invalid package with the validator's " \
             "messages, axes or channels that do not fit the family's data, a missing file, a Mask R-CNN version, " \
             "an unknown model, version or alias)"
    exp = commands.add_parser("export", help="a registered version as a BioImage Model Zoo (bioimage.io) package",
                              description="Write a registered U-Net or classifier version as a bioimage.io model "
                                          "package (spec 0.5): TorchScript, ONNX and state-dict weights, test "
                                          "tensors from the test data, the served processing, the model card and "
                                          "the lineage. Mask R-CNN is refused (docs/bioimageio.md says why).",
                              epilog=epilog)
    exp.add_argument("format", choices=FORMATS)
    exp.add_argument("reference", help="MODEL, MODEL@ALIAS or MODEL:VERSION (MODEL alone: its champion)")
    exp.add_argument("--out", type=Path, required=True, help="folder the package is written to")
    exp.add_argument("--config", type=Path, default=None, help="the family's training config naming its data "
                     "(default configs/<family>.yaml)")
    exp.add_argument("--tracking-uri", default=None)
    imp = commands.add_parser("import", help="register a bioimage.io package as a version, through the promotion gate",
                              description="Register a bioimage.io segmentation (-> cellops-unet) or classification "
                                          "(-> cellops-classifier) model package as a new version: scored on this "
                                          "checkout's test set and promoted only if it beats the champion.",
                              epilog=epilog)
    imp.add_argument("format", choices=FORMATS)
    imp.add_argument("package", type=Path, help="the package: a .zip or a folder with rdf.yaml")
    imp.add_argument("--config", type=Path, default=None, help="the family's training config (data, served "
                     "settings, registration gate; default configs/<family>.yaml)")
    imp.add_argument("--tracking-uri", default=None)


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser, tracking_uri: str) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code (2 for every refusal)."""
    try:
        if args.command == "export":
            path = export_version(tracking_uri, args.reference, args.out, config=args.config)
            print(f"{args.reference}: bioimage.io package written to {path}")
            return 0
        decision = import_package(tracking_uri, args.package, config=args.config)
    except (PackageError, LookupError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"cellops {args.command} {args.format}: {error}", file=sys.stderr)
        return EXIT_REFUSED
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(decision["metrics"].items()))
    print(f"{args.package}: {decision['family']} package; test set: {metrics}")
    champion = decision["champion_score_before"]
    against = f"against the champion's {champion:.4f}" if champion is not None else "no champion before"
    print(f"{decision['registered_model']} v{decision['version']}: {decision['reason']} "
          f"({decision['promotion_metric']} {decision['candidate_score']:.4f}, {against})"
          if decision["registered"] else f"not registered: {decision['reason']}")
    return 0
