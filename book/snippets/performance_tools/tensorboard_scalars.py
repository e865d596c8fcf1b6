# TensorBoard plots what a run logs: here loss, accuracy, learning rate and loss scale of a mixed-precision run.
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from mpcourse import data

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.bfloat16  # fp16 needs the scaler; bf16 does not
digits = data.load_images("digits", source="local", verbose=False).to(device)  # 8x8 images, shipped
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
generator = torch.Generator(device).manual_seed(0)

writer = SummaryWriter("runs/digits_" + str(dtype).removeprefix("torch."))  # one folder per run
for step in range(200):
    x, y = digits.sample(64, generator)
    with torch.autocast(device, dtype=dtype):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    writer.add_scalar("train/loss", loss.item(), step)
    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
    writer.add_scalar("amp/loss_scale", scaler.get_scale() if scaler.is_enabled() else 1.0, step)
    if step % 50 == 49:
        with torch.no_grad(), torch.autocast(device, dtype=dtype):
            accuracy = (model(digits.x_eval).argmax(-1) == digits.y_eval).float().mean().item()
        writer.add_scalar("eval/accuracy", accuracy, step)
writer.close()  # flushes the event file; then: tensorboard --logdir runs
