"""Classifier training under DDP: two processes with gloo on the CPU, started by torchrun, against one process with
the same global batch."""

from __future__ import annotations

import dataclasses

import pytest
from mlflow import MlflowClient

from cellops.classifier.data import build_augmentation
from cellops.classifier.distributed_train import fit_distributed
from cellops.classifier.train import fit
from cellops.classifier.specs import ClassifierTraining
from cellops.distributed import DistributedSettings, weights_digest
from helpers import free_port
from models.classifier import build_classifier
from test_classifier_core import AUG, _toy_set

TRAINING = {"epochs": 4, "batch_size": 32, "learning_rate": 0.003, "weight_decay": 0.0, "label_smoothing": 0.0,
            "warmup_fraction": 0.2, "seed": 0, "device": "cpu", "threads": 1}
#: Both runs train on the same augmented images per step (every rank augments the global batch, then takes its
#: share), so they differ by batch-norm statistics (each rank's half batch on CPUs; SyncBatchNorm needs GPUs) and
#: the order of floating-point sums: per-epoch training and validation loss within 5 % (1.2 % seen), validation
#: accuracy within 0.1. (With batches of 16 and a 3x higher learning rate the small network's trajectories part:
#: up to 19 % apart by the fourth epoch.)
LOSS_TOLERANCE = 0.05
ACCURACY_TOLERANCE = 0.1


def _net():
    return build_classifier("efficientcellnet", num_classes=2, in_channels=1, options={"widths": [8, 16, 24]}, seed=0)


def test_two_gloo_processes_hold_identical_weights_and_match_one_process(tmp_path):
    train, val = _toy_set(128, 0), _toy_set(32, 1)
    config = ClassifierTraining.from_dict({**TRAINING, "threads": 0})
    reference = fit(_net(), train, val, config, build_augmentation(AUG), positive=1)
    model = _net()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("ddp", artifact_location=(tmp_path / "artifacts").as_uri()))
    history, digests = fit_distributed(
        model, train, val, training=TRAINING, augmentation=dataclasses.asdict(AUG), positive=1,
        checkpoint_dir=tmp_path / "ddp", resume=False, work_dir=tmp_path / "work",
        settings=DistributedSettings(nproc_per_node=2, master_port=free_port(), backend="gloo"),
        epoch_logger="tracking.runs:epoch_logger", epoch_logger_args={"tracking_uri": uri, "run_id": run.info.run_id})
    logged = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in logged] == [0, 1, 2, 3] and [m.value for m in logged] == pytest.approx(history.train_loss)
    assert len(digests) == 2 and digests[0] == digests[1] == weights_digest(model)  # the ranks agree bit for bit
    assert len(history.train_loss) == len(reference.train_loss) == 4
    assert history.train_loss == pytest.approx(reference.train_loss, rel=LOSS_TOLERANCE)
    assert history.val_loss == pytest.approx(reference.val_loss, rel=LOSS_TOLERANCE)
    assert history.val_accuracy == pytest.approx(reference.val_accuracy, abs=ACCURACY_TOLERANCE)
    assert history.train_loss[-1] < history.train_loss[0]  # it learns
    assert not any((tmp_path / "ddp").glob("*/last.pt"))  # rank 0 removed its checkpoint once training completed
