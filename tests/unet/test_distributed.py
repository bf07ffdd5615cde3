"""U-Net training under DDP: two processes with gloo on the CPU, started by torchrun, against one process."""

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from cellops.io import to_unit_range
from cellops.distributed import DistributedSettings, local_batch_size, torchrun_command, weights_digest
from cellops.unet.distributed_train import fit_distributed
from cellops.unet.specs import UNetServing
from cellops.unet.train import build_model, fit
from cellops.unet.specs import Architecture, UNetTraining
from helpers import free_port

ARCHITECTURE = {"in_channels": 1, "out_channels": 1, "base_channels": 4, "depth": 2, "dropout": 0.0}
TRAINING = {"epochs": 3, "batch_size": 16, "learning_rate": 0.01, "weight_decay": 0.0001, "dice_weight": 1.0,
            "warmup_fraction": 0.1, "seed": 0, "device": "cpu", "threads": 1}
INFERENCE = {"tile_size": 32, "tile_overlap": 0.25, "batch_size": 8, "threshold": 0.5}
#: Two ranks see the same samples per step as one process with the global batch (same sampler permutation), but
#: on CPUs batch norm normalises each rank's half batch by its own statistics (SyncBatchNorm needs GPUs): the
#: per-epoch training loss stays within 3 % of the single process's (1.3 % seen), the scores within 0.05.
LOSS_TOLERANCE = 0.03
SCORE_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def inputs(small_volume):
    image, mask = small_volume.image, small_volume.mask
    crops = [(z, y, x) for z in range(4) for y in range(0, 65, 16) for x in range(0, 65, 16)]  # 100 patches
    patches = (to_unit_range(np.stack([image[z, y:y + 32, x:x + 32] for z, y, x in crops]))[:, None],
               (np.stack([mask[z, y:y + 32, x:x + 32] for z, y, x in crops]) > 0).astype(np.float32)[:, None])
    return patches, (image[4:], mask[4:])


def test_two_gloo_processes_hold_identical_weights_and_match_one_process(inputs, tmp_path):
    patches, val = inputs
    config = UNetTraining.from_dict({**TRAINING, "threads": 0})  # this process's thread count stays as it is
    single = build_model(Architecture.from_dict(ARCHITECTURE), seed=0)
    reference = fit(single, (torch.from_numpy(patches[0]), torch.from_numpy(patches[1])), val, config,
                    UNetServing.from_dict(INFERENCE), tmp_path / "single", resume=False)
    model = build_model(Architecture.from_dict(ARCHITECTURE), seed=0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("ddp", artifact_location=(tmp_path / "artifacts").as_uri()))
    history, digests = fit_distributed(
        model, patches, val, architecture=ARCHITECTURE, training=TRAINING, inference=INFERENCE,
        checkpoint_dir=tmp_path / "ddp", resume=False, work_dir=tmp_path / "work",
        settings=DistributedSettings(nproc_per_node=2, master_port=free_port(), backend="gloo"),
        epoch_logger="tracking.runs:epoch_logger", epoch_logger_args={"tracking_uri": uri, "run_id": run.info.run_id})
    # Rank 0 logged every epoch to the launcher's MLflow run, live.
    logged = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in logged] == [0, 1, 2] and [m.value for m in logged] == pytest.approx(history.train_loss)
    assert len(digests) == 2 and digests[0] == digests[1] == weights_digest(model)  # the ranks agree bit for bit
    assert len(history.train_loss) == len(reference.train_loss) == 3
    assert history.train_loss == pytest.approx(reference.train_loss, rel=LOSS_TOLERANCE)
    assert history.train_loss[-1] < history.train_loss[0]  # it learns
    assert history.val_foreground_iou == pytest.approx(reference.val_foreground_iou, abs=SCORE_TOLERANCE)
    assert not any((tmp_path / "ddp").glob("*/last.pt"))  # rank 0 removed its checkpoint once training completed


def test_settings_and_batches_are_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        DistributedSettings(backend="mpi")
    with pytest.raises(ValueError, match="node_rank must lie in"):
        DistributedSettings(nnodes=2, node_rank=2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="nccl needs CUDA GPUs"):
            DistributedSettings(backend="nccl")
    assert not DistributedSettings().enabled and DistributedSettings(nproc_per_node=2).world_size == 2
    command = torchrun_command(DistributedSettings(nproc_per_node=4, nnodes=2, node_rank=1, master_addr="10.0.0.1"),
                               "cellops.unet.distributed_train", "/tmp/x")
    assert command[1:3] == ["-m", "torch.distributed.run"] and "10.0.0.1" in command and command[-1] == "/tmp/x"
    assert local_batch_size(8) == 8
    assert Path(command[0]).name.startswith("python")
