# JAX with Flax NNX: each layer takes dtype (its computation) and param_dtype (its parameters).
import jax
import jax.numpy as jnp
import optax
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        # compute in bf16, keep fp32 parameters: the master weights
        self.hidden = nnx.Linear(64, 256, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=rngs)
        self.out = nnx.Linear(256, 8, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x)))


model = MLP(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), wrt=nnx.Param)


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss_fn(model: MLP) -> jax.Array:
        logits = model(x)  # bf16
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)  # fp32 gradients, like the parameters
    optimizer.update(model, grads)
    return loss


x = jax.random.normal(jax.random.key(1), (32, 64))
y = jax.random.randint(jax.random.key(2), (32,), 0, 8)
losses = [train_step(model, optimizer, x, y) for _ in range(3)]
