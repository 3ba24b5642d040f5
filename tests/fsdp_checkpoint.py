"""Run by torchrun from tests/test_training.py: the training checkpoints under FSDP2 on CPU processes (gloo).

accelerate only turns GPU runs into FSDP, so configs/accelerate/fsdp.yaml cannot run without a GPU; torch's own
`fully_shard` does run on CPUs, and this drives `omni_core.training.checkpoint` with it: every transformer block
sharded as that config shards them, two optimizer steps, a checkpoint written from the shards, then restored into a
fresh sharded model and into an unsharded one. Prints one JSON line (rank 0): whether each restore gave back the
gathered parameters and optimizer state exactly (the inputs have no reference images, so some parameters never had
a gradient and must come back without optimizer state, as in the uninterrupted run).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.fsdp import fully_shard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omni_core.config import TransformerConfig  # noqa: E402
from omni_core.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from omni_core.transformer import OmniGen2Transformer, TransformerBlock  # noqa: E402

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
CONFIG = TransformerConfig.from_json(ROOT / "tests" / "fixtures" / "omnigen2-tiny" / "transformer" / "config.json")


def model(sharded: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    transformer = OmniGen2Transformer(CONFIG)
    for parameter in transformer.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    if sharded:
        for module in transformer.modules():
            if isinstance(module, TransformerBlock):  # fsdp.yaml's fsdp_transformer_layer_cls_to_wrap
                fully_shard(module)
        fully_shard(transformer)
    return transformer, torch.optim.AdamW(transformer.parameters(), lr=1e-3)


def same(a, b) -> bool:
    """Exactly equal state dicts: the same keys, equal tensors and values (a tuple equals the list of its items)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def main(folder: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    trained, optimizer = model(sharded=True)
    generator = torch.Generator().manual_seed(1 + rank)  # each process its own batch
    x = torch.randn(1, CONFIG.in_channels, 8, 8, generator=generator)
    text = torch.randn(1, 7, CONFIG.text_feat_dim, generator=generator)
    for _ in range(2):
        trained(x, torch.full((1,), 0.4), text, torch.ones(1, 7, dtype=torch.long)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    save_checkpoint(folder, trained, optimizer, 2, is_main=rank == 0)
    dist.barrier()
    expected = get_state_dict(trained, optimizer, options=FULL)
    fresh, fresh_optimizer = model(sharded=True)
    step = load_checkpoint(folder, fresh, fresh_optimizer)
    sharded = get_state_dict(fresh, fresh_optimizer, options=FULL)
    if rank == 0:
        plain, plain_optimizer = model(sharded=False)
        load_checkpoint(folder, plain, plain_optimizer)
        unsharded = get_state_dict(plain, plain_optimizer, options=FULL)
        print(json.dumps({"step": step,
                          "sharded": [same(expected[0], sharded[0]), same(expected[1], sharded[1])],
                          "unsharded": [same(expected[0], unsharded[0]), same(expected[1], unsharded[1])]}))
    # rank 1 must not tear gloo down while rank 0 still works alone: its exit then aborted the run now and then
    # ("terminate called without an active exception", SIGABRT) under load
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
