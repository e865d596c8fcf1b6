# FSDP2: fully_shard with a MixedPrecisionPolicy. Launch with `torchrun --nproc-per-node N this.py`;
# started alone it runs as a group of one process (on a CPU with the gloo backend).
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

for name, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
    os.environ.setdefault(name, value)  # torchrun sets these
if torch.cuda.is_available():
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
device = "cuda" if torch.cuda.is_available() else "cpu"

model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8)).to(device)
policy = MixedPrecisionPolicy(
    param_dtype=torch.bfloat16,  # the all-gathered weights the forward pass uses
    reduce_dtype=torch.float32,  # gradients are reduce-scattered in fp32
)
for layer in (model[0], model[2]):
    fully_shard(layer, mp_policy=policy)
fully_shard(model, mp_policy=policy)  # the sharded parameters stay fp32: the master weights
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

x = torch.randn(32, 64, device=device)
y = torch.randint(0, 8, (32,), device=device)
logits = model(x)  # bf16 (no autocast needed: the policy casts the parameters)
loss = nn.functional.cross_entropy(logits.float(), y)
loss.backward()
optimizer.step()
optimizer.zero_grad()
dist.destroy_process_group()
