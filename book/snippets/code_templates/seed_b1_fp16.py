# The seed article's appendix B.1, "FP16 training example", as published (comments translated).
# It does not run as it stands (train_loader is never defined) and is wrong where it would.
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

# Train the model
for epoch in range(10):
    for inputs, targets in train_loader:
        inputs, targets = inputs.cuda(), targets.cuda()

        # Compute in FP16
        with amp.autocast():
            outputs = model(inputs)
            loss = criterion(outputs, targets)

        # Backpropagation
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
