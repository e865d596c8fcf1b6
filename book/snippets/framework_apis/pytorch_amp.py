# PyTorch: autocast picks a dtype per operation; GradScaler scales the loss (fp16 only).
import torch
from torch import nn

device = "cuda" if torch.cuda.is_available() else "cpu"
model = nn.Linear(64, 8).to(device)  # fp32 parameters: the master weights
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler(device)  # fp16 needs it; with bf16, leave it out
x = torch.randn(32, 64, device=device)
y = torch.randint(0, 8, (32,), device=device)

with torch.autocast(device, dtype=torch.float16):  # or torch.bfloat16
    logits = model(x)  # float16: a matrix product
    loss = nn.functional.cross_entropy(logits, y)  # float32: losses are on autocast's fp32 list
scaler.scale(loss).backward()  # backward outside autocast, from loss * scale
scaler.unscale_(optimizer)  # true gradients before clipping
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
scaler.step(optimizer)  # skipped if a gradient is inf or NaN
scaler.update()
optimizer.zero_grad()
