# Appendix B.3 corrected: fp8 linear layers (torchao on sm_89+ GPUs, the course's emulation elsewhere).
import torch
import torch.nn as nn
import torch.optim as optim

from mpcourse import fp8

device = "cuda" if torch.cuda.is_available() else "cpu"

# A small data set to stand in for yours: 10 features, 5 classes
features = torch.randn(256, 10)
labels = features[:, :5].argmax(dim=1)
train_loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(features, labels), batch_size=32, shuffle=True
)

# Define the model: it returns logits, because CrossEntropyLoss applies log-softmax itself. The
# first and last layers stay in bf16, so fp8 needs a middle one (dimensions multiples of 16)
model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
model.to(device)

# Set up the optimizer
optimizer = optim.Adam(model.parameters(), lr=0.001)

# Set up the loss function
criterion = nn.CrossEntropyLoss()

# There is no torch.float8 to cast a model to: fp8 training swaps linear layers for ones whose
# matrix products take fp8 operands with a scale (torchao where the GPU has fp8 units)
usable, why = fp8.torchao_status()
if usable:
    model = fp8.torchao_convert(model, "tensorwise")
else:
    model = fp8.convert_to_fp8(model, "fp8_tensorwise")  # the same recipe, emulated exactly

# Train the model
for epoch in range(10):
    for inputs, targets in train_loader:
        inputs, targets = inputs.to(device), targets.to(device)

        # Everything that is not an fp8 layer runs under bf16 autocast; the fp8 scales adapt
        # every step, so no loss scaler is needed
        with torch.autocast(device, dtype=torch.bfloat16):
            outputs = model(inputs)
            loss = criterion(outputs, targets)

        # Backpropagation, outside autocast; clear the last step's gradients first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
