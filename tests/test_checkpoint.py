"""Checkpoints (reid_nb.checkpoint): what the notebook does not check.

nbs/03a_checkpoint.ipynb checks writing, reading, the spec rule and the errors; here: a real
DistributedDataParallel wrapper, which needs a process group."""

import torch

from reid_nb.checkpoint import checkpoint_state, model_from_checkpoint, save_checkpoint
from reid_nb.config import load_spec
from reid_nb.model import build_model


def test_checkpoint_state_unwraps_distributed_data_parallel(tmp_path):
    spec = load_spec(
        overrides=[
            "model.backbone=resnet_18",
            "model.pretrain_choice=",
            "model.feat_dim=32",
            "model.input_height=64",
            "model.input_width=32",
        ]
    )
    model = build_model(spec, 4, verbose=False)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1
    )
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        state = checkpoint_state(wrapped, spec, 4, epoch=2)
    finally:
        torch.distributed.destroy_process_group()
    assert list(state["model"]) == list(model.state_dict())
    rebuilt, ckpt = model_from_checkpoint(save_checkpoint(state, tmp_path / "ddp.pth"))
    assert ckpt["epoch"] == 2
    assert torch.equal(rebuilt.classifier.weight, model.classifier.weight)
