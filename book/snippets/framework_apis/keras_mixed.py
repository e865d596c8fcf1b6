# Keras 3: a dtype policy says which dtype variables and computations use.
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # or "jax", "tensorflow": set before importing keras
import keras
import numpy as np

keras.config.set_dtype_policy("mixed_float16")  # compute fp16, variables fp32; or "mixed_bfloat16"
model = keras.Sequential(
    [
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(8, dtype="float32"),  # the logits in fp32
    ]
)
# With the "mixed_float16" policy, compile() wraps the optimizer in a keras.optimizers.LossScaleOptimizer
# (dynamic loss scaling); custom training loops wrap it themselves and call its scale_loss().
model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.rand(256, 64).astype("float32")
y = np.random.randint(0, 8, 256)
history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)

# fp8: quantize a built model with mode "float8", then train it: its Dense layers compute with
# E4M3 inputs and weights and E5M2 gradients, with delayed scaling (an amax history per tensor).
fp8_model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(8, dtype="float32")])
fp8_model.quantize("float8")
keras.config.set_dtype_policy("float32")  # the global policy applies to every layer created later
