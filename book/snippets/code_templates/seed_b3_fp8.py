# The seed article's appendix B.3, "FP8 training example", as published (comments translated).
# It does not run: torch.float8 does not exist, and train_loader is never defined.
import torch
import torch.nn as nn
import torch.optim as optim
import torch.cuda.amp as amp

# Define the model
model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 5), nn.Softmax(dim=1))
model.cuda()

# Set up the optimizer
optimizer = optim.Adam(model.parameters(), lr=0.001)

# Set up the loss function
criterion = nn.CrossEntropyLoss()

# Set up AMP
scaler = amp.GradScaler()

# Set the model's precision to FP8
model.to(torch.float8)

# Train the model
for epoch in range(10):
    for inputs, targets in train_loader:
        inputs, targets = inputs.cuda(), targets.cuda()

        # Compute in FP8
        with amp.autocast():
            outputs = model(inputs.half())
            loss = criterion(outputs, targets)

        # Backpropagation
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
