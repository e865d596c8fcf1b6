# The training step the other examples measure: a small classifier under autocast (bf16 on a CPU,
# fp16 with a GradScaler on a GPU). Replace it with your own.
import torch
from torch import nn

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.bfloat16
model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10)).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
x = torch.randn(64, 256, device=device)
y = torch.randint(0, 10, (64,), device=device)


def train_step() -> torch.Tensor:
    with torch.autocast(device, dtype=dtype):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
