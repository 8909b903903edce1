"""The training loop as a library function: `train(TrainConfig(...), out=..., callback=...)`.

No printing: progress goes to `callback(EpochReport)` after every epoch. Every random choice is a
function of (seed, epoch, batch): initialization is drawn once with NumPy from the seed, batches from
(seed, epoch), augmentations and sampled negatives from (seed, epoch, batch). So every backend sees the
same numbers, and a run resumed from its checkpoint continues exactly as if it had never stopped.
See docs/training.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import _array_api as aa
from . import data as datasets
from . import encoders, image_data, losses, optim
from .backends import get_backend
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .image_pipeline import ImageInputs, check_augment, resolve_augment
from .train_config import (
    INSTANCE_ID_LOSSES,
    LOSSES,
    TORCH_ENCODERS,
    TrainConfig,
)

__all__ = [
    "LOSSES",
    "TrainConfig",
    "EpochReport",
    "TrainResult",
    "ContrastiveObjective",
    "train",
    "load_dataset",
    "significant_directions",
]

Array = Any
#: Fields that may differ between a run and the run resumed from its checkpoint.
RESUMABLE_CHANGES = ("epochs", "device")
#: Checkpoint `extra/` prefix of a torch encoder's BatchNorm running statistics (restored on resume).
BUFFERS = "buffers/"
#: A class-mean spectrum direction counts as significant when its covariance eigenvalue is at least this
#: fraction of the largest (log ratio above log(1e-3)); the cliff of dimensional collapse falls far below.
SIGNIFICANT_RATIO = 1e-3


@dataclass(frozen=True)
class EpochReport:
    """What the callback receives after each epoch: metrics are the history entries of that epoch, spectrum
    the class-mean spectrum of the training embeddings (log eigenvalue ratios, descending)."""

    epoch: int  # 1-based, completed
    epochs: int
    metrics: dict[str, float]
    seconds: float
    checkpoint: Path | None
    spectrum: np.ndarray | None = None


@dataclass(frozen=True)
class TrainResult:
    """The final state: the checkpoint (also written to `path` when an output was given)."""

    checkpoint: Checkpoint
    path: Path | None
    seconds: float
    history: dict[str, np.ndarray] = field(default_factory=dict)


def load_dataset(config: TrainConfig) -> datasets.Dataset:
    """The data set named by the config, from data.py (FileNotFoundError / ValueError on bad input)."""
    if config.data == "synthetic":
        return datasets.synthetic(
            num_classes=config.classes,
            per_class=config.per_class,
            input_dim=config.input_dim,
            separation=config.separation,
            noise=config.noise,
            seed=config.seed,
        )
    if config.data == "digits":
        return datasets.digits(seed=config.seed)
    if config.data in ("cifar10", "cifar100"):
        if config.data_dir is None:
            raise ValueError(f"--data {config.data} needs --data-dir, the folder holding the CIFAR files")
        dataset = datasets.load(config.data, data_dir=config.data_dir)
        return dataset if config.image_size is None else image_data.resized(dataset, config.image_size)
    if config.data in image_data.IMAGE_DATASETS:
        return image_data.load_images(config.data, config.data_dir, config.image_size, seed=config.seed)
    if config.data_path is None:
        raise ValueError("--data npz needs --data-path (or pass --data path/to/file.npz)")
    return datasets.npz(config.data_path, seed=config.seed)


def significant_directions(spectrum: np.ndarray, ratio: float = SIGNIFICANT_RATIO) -> int:
    """How many class-mean spectrum values (log eigenvalue ratios, descending) lie above log(ratio)."""
    return int(np.sum(np.asarray(spectrum) > math.log(ratio)))


# ----------------------------------------------------------------------------------------------------
# The objective: encoder + loss, differentiable by autograd (torch, jax) or analytically (numpy, cupy).


@dataclass(frozen=True)
class ContrastiveObjective:
    """loss(encoder(params, x)) for one batch, with its analytic value-and-grad for backends without autodiff.

    Call as objective(params, x, ids, indices, uniforms): x (B, V, ...) views or (B, ...) samples (None for
    the free encoder), ids (B,) labels/ids or None for instance ids, indices (B,) training-row numbers,
    uniforms (B*V, k) for sampled negatives or None.
    """

    encoder: str
    loss: str
    options: dict[str, Any]
    views: int = 1
    module_forward: Callable[..., Array] | None = None  # (params, x, train) -> z: a torch module (the ResNets)
    group: Any = None  # a torch.distributed ProcessGroup: the loss spans its ranks' shares of the batch

    def embed(self, params: dict[str, Array], x: Array | None, indices: Array) -> Array:
        """z: (B, d) for one view, (B, V, d) for V views (rows of x flattened sample-major first)."""
        if self.views == 1:
            return self.encode(params, x, indices)
        xp = _namespace_of(params)
        batch = indices.shape[0]
        rows = xp.reshape(x, (batch * self.views, *x.shape[2:]))
        z = self.encode(params, rows, _repeat(indices, self.views))
        return xp.reshape(z, (batch, self.views, z.shape[-1]))

    def __call__(
        self, params: dict[str, Array], x: Array | None, ids: Array | None, indices: Array, uniforms: Array | None
    ) -> Array:
        """The mean loss of the batch."""
        return LOSSES[self.loss](
            self.embed(params, x, indices), ids, uniforms=uniforms, group=self.group, **self.options
        )

    def value_and_grad(
        self, params: dict[str, Array], x: Array | None, ids: Array | None, indices: Array, uniforms: Array | None
    ) -> tuple[Array, dict[str, Array]]:
        """(loss, dloss/dparams) from the loss's analytic VJP and the encoder's explicit one (no autodiff)."""
        if self.module_forward is not None:
            raise NotImplementedError("ResNet encoders have no analytic gradient: train them with --backend torch")
        z = self.embed(params, x, indices)
        value, grad_z = LOSSES[self.loss](z, ids, uniforms=uniforms, return_grad=True, group=self.group, **self.options)
        xp = _namespace_of(params)
        if self.views == 1:
            return value, encoders.backward(self.encoder, params, x, indices, grad_z)
        batch = indices.shape[0]
        rows = xp.reshape(x, (batch * self.views, *x.shape[2:]))
        flat_grad = xp.reshape(grad_z, (batch * self.views, grad_z.shape[-1]))
        return value, encoders.backward(self.encoder, params, rows, _repeat(indices, self.views), flat_grad)

    def encode(self, params: dict[str, Array], x: Array | None, indices: Array, train: bool = True) -> Array:
        """z = f(x) of (B, ...) single-view rows (`indices` select the free encoder's rows); train=False runs a
        module in eval mode (BatchNorm with its running statistics), as evaluation does."""
        if self.module_forward is not None:
            return self.module_forward(params, x, train)
        return encoders.forward(self.encoder, params, x, indices)


def _namespace_of(params: dict[str, Array]) -> Any:
    return aa.namespace(*params.values())


def _repeat(indices: Array, times: int) -> Array:
    """Each index repeated `times` times in a row (sample-major), matching (B, V) -> (B*V,) reshapes."""
    xp = aa.namespace(indices)
    return xp.reshape(xp.stack([indices] * times, axis=1), (-1,))


def make_step(
    backend: Any, objective: ContrastiveObjective, optimizer: optim.Optimizer, devices: int = 1
) -> Callable[..., Any]:
    """One compiled optimizer step: (params, opt_state, *batch) -> (params, opt_state, loss).

    devices > 1 (JAX): the batch is split over that many local devices (`sharded_value_and_grad`).
    """
    value_and_grad, place = (backend.value_and_grad, None) if devices == 1 else sharded_value_and_grad(devices)

    def step(params: dict[str, Array], opt_state: dict[str, Array], *batch: Any) -> tuple[Any, Any, Array]:
        value, grads = value_and_grad(objective, params, *batch)
        if objective.group is not None:
            grads = average_over_ranks(grads, objective.group)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optim.apply_updates(params, updates), opt_state, value

    compiled = backend.compile(step)
    return compiled if place is None else lambda *arguments: place(compiled, arguments)


def sharded_value_and_grad(devices: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(objective, params, x, ids, indices, uniforms) -> (loss, grads) with the batch split over `devices`
    local JAX devices by `jax.shard_map` (mesh axis "batch"): params and the sampled-negative uniforms
    are replicated, x, ids and indices split; the loss spans the devices (axis_name="batch").

    The gradient of the replicated parameters is summed over the devices by shard_map's own transpose,
    so it is the single-device gradient of the whole batch. Also returns `place`, which runs a compiled
    step with its arguments on the mesh and its result on the first device.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    available = jax.devices()
    if devices > len(available):
        raise ValueError(
            f"--devices {devices}: jax sees {len(available)} device(s) (on a CPU, see docs/distributed.md)"
        )
    mesh = Mesh(np.array(available[:devices]), ("batch",))
    split, whole = PartitionSpec("batch"), PartitionSpec()

    def value_and_grad(objective: ContrastiveObjective, params: Any, *batch: Any) -> tuple[Any, Any]:
        sharded = dataclasses.replace(objective, options={**objective.options, "axis_name": "batch"})
        mapped = jax.shard_map(
            jax.value_and_grad(sharded),
            mesh=mesh,
            in_specs=(whole, split, split, split, whole),
            out_specs=(whole, whole),
        )
        return mapped(params, *batch)

    def place(step: Callable[..., Any], arguments: tuple) -> Any:
        """step on the mesh: (params, opt_state, x, ids, indices, uniforms) placed, the result back on one device."""
        specs = (whole, whole, split, split, split, whole)
        placed = jax.device_put(arguments, tuple(NamedSharding(mesh, spec) for spec in specs))
        return jax.device_put(step(*placed), available[0])

    return value_and_grad, place


def average_over_ranks(grads: dict[str, Array], group: Any) -> dict[str, Array]:
    """(1/R) sum_r grads_r over the ranks of a torch ProcessGroup: what DistributedDataParallel does.

    Autograd through the distributed loss gives each rank R times its share of the global gradient
    (every rank's copy of the loss depends on its rows), so the average is the single-process gradient.
    """
    import torch
    import torch.distributed as dist

    size = dist.get_world_size(group)
    flat = torch.cat([g.reshape(-1) for g in grads.values()])
    dist.all_reduce(flat, group=group)  # one collective for every parameter, as DDP's buckets
    averaged, start = {}, 0
    for name, grad in grads.items():
        averaged[name] = flat[start : start + grad.numel()].reshape(grad.shape) / size
        start += grad.numel()
    return averaged


def local_share(arguments: tuple[Any, ...], rank: int, size: int) -> tuple[Any, ...]:
    """This rank's rows of a global batch's (x, ids, indices, uniforms): contiguous, ranks in order.

    The uniforms stay global: the distributed loss takes its anchors' rows (the same draws as one process).
    """
    x, ids, indices, uniforms = arguments
    bounds = np.linspace(0, indices.shape[0], size + 1).astype(int)
    rows = slice(int(bounds[rank]), int(bounds[rank + 1]))
    return (None if x is None else x[rows], None if ids is None else ids[rows], indices[rows], uniforms)


def init_distributed(device: str | None, timeout: float) -> Any:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, MASTER_ADDR, ...): NCCL on CUDA,
    gloo on the CPU. A rank that stops answering makes the others' next collective fail after `timeout` s.

    With NCCL the rank's GPU (device's index, else LOCAL_RANK) becomes the current one first: NCCL binds a
    rank to the current device, and every rank would otherwise share GPU 0."""
    import datetime

    import torch
    import torch.distributed as dist

    backend = "nccl" if device is not None and device.startswith("cuda") else "gloo"
    if backend == "nccl":
        index = torch.device(device).index
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) if index is None else index)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return dist.group.WORLD


def _distribute(run: _Run, group: Any) -> tuple[int, int]:
    """Let the run's loss span the ranks of `group`; (rank, size), or (0, 1) for one process."""
    if group is None:
        return 0, 1
    if run.config.backend != "torch":
        raise ValueError(f"several processes need --backend torch (got {run.config.backend!r}); JAX: see the docs")
    import torch.distributed as dist

    run.objective = dataclasses.replace(run.objective, group=group)
    return dist.get_rank(group), dist.get_world_size(group)


def _check_devices(config: TrainConfig, devices: int) -> int:
    if devices > 1 and (config.backend != "jax" or config.batch_size % devices):
        raise ValueError(f"--devices {devices} needs --backend jax and a --batch-size divisible by {devices}")
    return devices


def _barrier(group: Any) -> None:
    if group is not None:
        import torch.distributed as dist

        dist.barrier(group)


# ----------------------------------------------------------------------------------------------------
# The run: setup, batches, evaluation, checkpoint.


@dataclass
class _Run:
    """Everything a run holds between epochs (parameters and optimizer state live on the backend)."""

    config: TrainConfig
    backend: Any
    dataset: datasets.Dataset
    dim: int
    objective: ContrastiveObjective
    params: dict[str, Array]
    opt_state: dict[str, Array]
    history: dict[str, list[float]]
    class_means: list[np.ndarray]
    start_epoch: int = 0
    augment: str = "none"  # the resolved --augment
    images: ImageInputs | None = None  # image data: pixels on the device, views made there
    module: Any = None  # a torch ModuleEncoder: its BatchNorm running statistics go in the checkpoint


def _setup(config: TrainConfig) -> _Run:
    backend = get_backend(config.backend)
    dataset = load_dataset(config)
    dim = config.dim if config.dim is not None else max(dataset.num_classes - 1, 1)
    augment = resolve_augment(config.augment, config.data, config.loss, config.views, dataset.is_image)
    if config.encoder != "free":
        check_augment(augment, config.views, dataset.input_shape, dataset.is_image)
    module = _module_encoder(config, dim) if config.encoder in TORCH_ENCODERS else None
    if module is not None:
        initial = module.initial_params()
    else:
        initial = encoders.init_params(
            config.encoder,
            input_dim=int(np.prod(dataset.input_shape)),
            output_dim=dim,
            num_samples=dataset.x_train.shape[0],
            hidden=config.hidden,
            seed=config.seed,
        )
    objective = ContrastiveObjective(config.encoder, config.loss, config.loss_options(), config.views, module)
    run = _Run(config, backend, dataset, dim, objective, {}, {}, {}, [], module=module)
    run.params = _place(run, initial)
    run.opt_state = _optimizer(run).init(run.params)
    if dataset.is_image and config.encoder != "free":
        run.images = ImageInputs(
            backend, dataset, augment=augment, dtype=config.dtype, device=config.device, seed=config.seed
        )
    run.augment = augment
    return run


def _module_encoder(config: TrainConfig, dim: int) -> Any:
    """The torch ResNet as a ModuleEncoder: parameters passed in, BatchNorm statistics on the training device."""
    from .backends.torch import ModuleEncoder, resnet_encoder

    module = resnet_encoder(config.encoder, dim, config.seed)
    return ModuleEncoder(module, dtype=config.dtype, device=config.device, precision=config.precision)


def _place(run: _Run, arrays: dict[str, np.ndarray]) -> dict[str, Array]:
    """Host arrays (initial or saved parameters) on the backend, in the layout the encoder wants."""
    placed = run.backend.params_from_numpy(arrays, run.config.dtype, run.config.device)
    return placed if run.module is None else run.module.place(placed)


def _optimizer(run: _Run) -> optim.Optimizer:
    config = run.config
    return run.backend.optimizer(config.optimizer, run.params, lr=config.lr, weight_decay=config.weight_decay)


def _resume(run: _Run, path: str | Path) -> None:
    """Load params, optimizer state and history from a checkpoint of the same configuration."""
    saved = load_checkpoint(path)
    saved_config = saved.config.get("train_config")
    if not isinstance(saved_config, dict) or not saved.params:
        raise CheckpointError(f"{path}: not an `hcl train` checkpoint with parameters to resume from")
    current = dataclasses.asdict(run.config)
    defaults = dataclasses.asdict(TrainConfig())  # a field added since the checkpoint was written: its default
    differing = sorted(
        key
        for key in current.keys() | saved_config.keys()
        if key not in RESUMABLE_CHANGES and current.get(key) != saved_config.get(key, defaults.get(key))
    )
    if differing:
        details = ", ".join(f"{key}: {saved_config.get(key)!r} -> {current.get(key)!r}" for key in differing)
        raise ValueError(f"{path}: cannot resume with a different configuration ({details})")
    backend, dtype, device = run.backend, run.config.dtype, run.config.device
    run.params = _place(run, saved.params)
    run.opt_state = backend.params_from_numpy(saved.optimizer_state, dtype, device)
    if run.module is not None:
        run.module.load_buffers({key.removeprefix(BUFFERS): value for key, value in saved.extra.items()})
    run.history = {key: [float(v) for v in values] for key, values in saved.history.items()}
    run.class_means = list(np.asarray(saved.class_means))
    run.start_epoch = saved.epoch


def _uses_instance_ids(config: TrainConfig) -> bool:
    return config.views > 1 and config.loss in INSTANCE_ID_LOSSES


def _batch_arguments(run: _Run, indices: np.ndarray, epoch: int, batch_number: int) -> tuple[Any, ...]:
    """(x, ids, indices, uniforms) of one batch on the backend; randomness from (seed, epoch, batch) only."""
    config, dataset, backend = run.config, run.dataset, run.backend
    place = partial(backend.from_numpy, dtype=config.dtype, device=config.device)
    if config.encoder == "free":
        x = None
    elif run.images is not None:
        x = run.images.views(indices, config.views, epoch, batch_number)
    elif run.augment == "none":
        x = place(dataset.x_train[indices])
    else:
        view_rng = np.random.default_rng([config.seed, epoch, batch_number, 1])
        views = [datasets.augment(dataset.x_train[indices], view_rng, run.augment) for _ in range(config.views)]
        x = place(views[0] if config.views == 1 else np.stack(views, axis=1))
    ids = None if _uses_instance_ids(config) else place(dataset.y_train[indices])
    uniforms = None
    options = run.objective.options
    if options.get("negatives") == "sampled":
        negative_rng = np.random.default_rng([config.seed, epoch, batch_number, 2])
        # drawn in the training dtype: float64 draws cast to float32 round to 1.0 about once in 2^25,
        # which the loss rejects (and a resumed run would meet again on the same batch)
        uniforms = place(negative_rng.random((indices.size * config.views, options["k"]), dtype=config.dtype))
    return x, ids, place(indices), uniforms


def _embed(run: _Run, embed_fn: Callable[..., Array], split: str | None, count: int, chunk: int = 1024) -> np.ndarray:
    """g(f(x)) of the first `count` rows of the "train" or "test" split (split None: the free encoder's own
    rows), unaugmented and in eval mode, float64 on the host."""
    if count == 0:
        return np.zeros((0, run.dim))
    backend, config = run.backend, run.config
    inputs = None if split is None else (run.dataset.x_train if split == "train" else run.dataset.x_test)
    parts = []
    for start in range(0, count, chunk):
        rows = np.arange(start, min(start + chunk, count), dtype=np.int64)
        if inputs is None:
            x_part = None
        elif run.images is not None:
            x_part = run.images.plain(split, rows)
        else:
            x_part = backend.from_numpy(inputs[rows], config.dtype, config.device)
        parts.append(backend.to_numpy(embed_fn(run.params, x_part, backend.from_numpy(rows, None, config.device))))
    return np.concatenate(parts).astype(np.float64)


def _evaluate(run: _Run, embed_fn: Callable[..., Array]) -> tuple[np.ndarray, np.ndarray, dict[str, float], np.ndarray]:
    """Train and test embeddings g(z), the epoch's collapse metrics and class-mean spectrum (NumPy float64)."""
    from . import metrics

    dataset, num_classes = run.dataset, run.dataset.num_classes
    free = run.config.encoder == "free"
    train_embeddings = _embed(run, embed_fn, None if free else "train", dataset.x_train.shape[0])
    # The free encoder has rows only for training samples: it has no test embeddings.
    test_count = 0 if free else dataset.x_test.shape[0]
    test_embeddings = _embed(run, embed_fn, "test", test_count)
    report = metrics.collapse_report(train_embeddings, dataset.y_train, num_classes=num_classes)
    scalars = {key: float(value) for key, value in report.items() if key != "spectrum"}
    scalars["significant_directions"] = float(significant_directions(report["spectrum"]))
    scalars["test_mean_classifier_accuracy"] = math.nan
    if test_count:
        reference = (train_embeddings, dataset.y_train)
        accuracy = metrics.mean_classifier_accuracy(
            test_embeddings, dataset.y_test[:test_count], num_classes=num_classes, reference=reference
        )
        scalars["test_mean_classifier_accuracy"] = float(accuracy)
    return train_embeddings, test_embeddings, scalars, report["spectrum"]


def _checkpoint(run: _Run, epoch: int, train_embeddings: np.ndarray, test_embeddings: np.ndarray) -> Checkpoint:
    dataset, backend = run.dataset, run.backend
    config_json = {
        "train_config": dataclasses.asdict(run.config),
        "num_classes": dataset.num_classes,
        "dim": run.dim,
        "input_shape": list(dataset.input_shape),
        "loss_options": run.objective.options,
        "normalize": run.config.normalization(),
        "backend_version": backend.version(),
        "augment": run.augment,
        "embeddings": "g(z): the normalized representation the loss sees",
    }
    return Checkpoint(
        train_embeddings=train_embeddings,
        train_labels=dataset.y_train,
        test_embeddings=test_embeddings,
        test_labels=dataset.y_test[: test_embeddings.shape[0]],
        class_means=np.stack(run.class_means) if run.class_means else np.zeros((0, dataset.num_classes, run.dim)),
        history={key: np.asarray(values, dtype=np.float64) for key, values in run.history.items()},
        config=config_json,
        params=backend.params_to_numpy(run.params),
        optimizer_state=backend.params_to_numpy(run.opt_state),
        epoch=epoch,
        extra={} if run.module is None else {BUFFERS + key: value for key, value in run.module.buffer_arrays().items()},
    )


def train(
    config: TrainConfig,
    *,
    out: str | Path | None = None,
    resume_from: str | Path | None = None,
    callback: Callable[[EpochReport], None] | None = None,
    group: Any = None,
    devices: int = 1,
) -> TrainResult:
    """Train an encoder with a contrastive loss; write the checkpoint to `out` atomically after every epoch.

    resume_from: a checkpoint of the same configuration (only `epochs` and `device` may change); training
    continues after its last completed epoch and gives the same result as an uninterrupted run.
    group: a torch ProcessGroup: each rank trains on its share of every batch, with the single-process
    trajectory (docs/distributed.md); rank 0 writes the checkpoint and gets the callback.
    devices: (--backend jax) split every batch over this many local devices, with the same trajectory.
    Raises ValueError / FileNotFoundError / BackendUnavailable / CheckpointError with one-line messages.
    """
    config.validate()
    started = time.perf_counter()
    run = _setup(config)
    rank, size = _distribute(run, group)
    if resume_from is not None:
        _resume(run, resume_from)
        out = resume_from if out is None else out
    step = make_step(run.backend, run.objective, _optimizer(run), _check_devices(config, devices))
    normalize = config.normalization()
    embed_fn = run.backend.compile(
        lambda params, x, indices: losses.normalize_embeddings(
            run.objective.encode(params, x, indices, train=False), normalize
        )
    )
    path = None if out is None else Path(out)
    num_train = run.dataset.x_train.shape[0]
    checkpoint = None
    for epoch in range(run.start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        batch_losses = []
        epoch_batches = datasets.batches(num_train, config.batch_size, seed=config.seed, epoch=epoch)
        for batch_number, indices in enumerate(epoch_batches):
            arguments = local_share(_batch_arguments(run, indices, epoch, batch_number), rank, size)
            run.params, run.opt_state, value = step(run.params, run.opt_state, *arguments)
            batch_losses.append(value)  # kept on the device: reading each would make the host wait for it
        train_embeddings, test_embeddings, scalars, spectrum = _evaluate(run, embed_fn)
        scalars = {"loss": _mean_on_host(run.backend, batch_losses), **scalars}
        for key, value in scalars.items():
            run.history.setdefault(key, []).append(value)
        run.class_means.append(_class_means(train_embeddings, run.dataset.y_train, run.dataset.num_classes))
        checkpoint = _checkpoint(run, epoch + 1, train_embeddings, test_embeddings)
        if path is not None and rank == 0:
            save_checkpoint(path, checkpoint)
        if callback is not None and rank == 0:
            seconds = time.perf_counter() - epoch_started
            callback(EpochReport(epoch + 1, config.epochs, scalars, seconds, path, spectrum))
    _barrier(group)  # every rank returns once rank 0 has written the last checkpoint
    if checkpoint is None:  # resumed at or past the last epoch: nothing left to train
        checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
    history = {key: np.asarray(values) for key, values in run.history.items()}
    return TrainResult(checkpoint, path, time.perf_counter() - started, history)


def _mean_on_host(backend: Any, values: list[Array]) -> float:
    """The float64 mean of the scalars of an epoch, read by the host in one transfer."""
    return float(np.mean(backend.to_numpy(backend.xp.stack(values)).astype(np.float64))) if values else math.nan


def _class_means(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, d) mean of each class's rows (zero for a class without rows)."""
    sums = np.zeros((num_classes, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    return sums / np.maximum(counts, 1)
