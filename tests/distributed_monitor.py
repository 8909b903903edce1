"""Workers of the multi-process and multi-device monitor tests (run as scripts by tests/test_monitor.py).

    python tests/distributed_monitor.py torch OUT   # 2 gloo processes, each a shard; rank 0 writes OUT/torch.npz
    python tests/distributed_monitor.py jax OUT     # 4 host devices (XLA_FLAGS set by the caller), OUT/jax.npz

Both monitor the same rows (`problem()`), split across the participants in chunks of uneven size, and save
the merged report, so the test compares it with collapse_report on all rows at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

NUM_CLASSES, DIM, ROWS = 7, 12, 240


def problem() -> tuple[np.ndarray, np.ndarray]:
    """Rows around well-separated class centres, shifted and scaled so that centring matters."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, NUM_CLASSES, ROWS)
    centres = rng.standard_normal((NUM_CLASSES, DIM)) * 3.0
    return 5.0 + centres[labels] + rng.standard_normal((ROWS, DIM)), labels


def save_report(path: Path, report: dict) -> None:
    np.savez(path, **{key: np.asarray(value, dtype=np.float64) for key, value in report.items()})


def _torch_worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from hcl_array.monitor import CollapseMonitor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    embeddings, labels = problem()
    mine = np.arange(ROWS) % world_size == rank  # interleaved shards, like DistributedSampler
    h, y = torch.as_tensor(embeddings[mine]), torch.as_tensor(labels[mine])
    monitor = CollapseMonitor(NUM_CLASSES)
    sizes = (17, 0, 40, 200) if rank == 0 else (3, 200)  # each rank its own chunking, one empty batch
    bounds = np.cumsum([0, *sizes])
    chunks = [(h[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
    for chunk in chunks:
        monitor.update(*chunk)
    first_pass = monitor.compute()
    monitor.start_probe()
    for chunk in chunks:
        monitor.update_probe(*chunk)
    both_passes = monitor.compute()
    if rank == 0:
        save_report(Path(out) / "torch_first.npz", first_pass)
        save_report(Path(out) / "torch.npz", both_passes)
    dist.destroy_process_group()


def run_torch(out: str) -> None:
    import torch.multiprocessing as mp

    init_file = str(Path(out) / "rendezvous")
    mp.spawn(_torch_worker, args=(2, init_file, out), nprocs=2, join=True)


def run_jax(out: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec

    from hcl_array.monitor import collapse_compute, collapse_init, collapse_update, jax_all_sum, merge_states

    devices = jax.devices()
    assert len(devices) == 4, devices
    mesh = Mesh(np.asarray(devices), ("data",))

    def global_metrics(h: jax.Array, y: jax.Array) -> dict:
        state = collapse_update(collapse_init(NUM_CLASSES, DIM, xp=jnp), h, y)  # this device's rows
        return collapse_compute(merge_states(state, jax_all_sum("data")))

    sharded = jax.shard_map(
        global_metrics, mesh=mesh, in_specs=(PartitionSpec("data"), PartitionSpec("data")), out_specs=PartitionSpec()
    )
    embeddings, labels = problem()
    report = jax.jit(sharded)(jnp.asarray(embeddings), jnp.asarray(labels))
    save_report(Path(out) / "jax.npz", {key: np.asarray(value) for key, value in report.items()})


if __name__ == "__main__":
    {"torch": run_torch, "jax": run_jax}[sys.argv[1]](sys.argv[2])
