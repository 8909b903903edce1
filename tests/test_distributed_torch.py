"""group= on torch.distributed (gloo, CPU): every rank's loss and gradient against one process on the whole batch.

Three processes start once for the whole module: each computes every case of CASES (and EXTRA_CASES) over the world
group (3 ranks) and over a subgroup of ranks 0 and 1 (2 ranks), on both distributed paths (the fused
kernel on each rank's anchors, and the array-API row blocks), with torch tensors (autograd) and NumPy
arrays (return_grad), and per-anchor values (reduction="none"), and returns its numbers and the paths that
ran; the tests compare them with the single-process loss at 1e-10 in float64. Local batches are uneven,
some ranks hold anchors whose positives are all elsewhere, one split has an empty rank;
DistributedDataParallel, wrong use on every rank, and a 2-rank `train()` against one process complete the module.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import traceback
from typing import Any

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array.training import TrainConfig, train
from tests.cases import record_paths
from tests.distributed_cases import CASES, DIM, LABELS, VIEWS, error_messages, global_batch

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

#: local batch sizes per world size: uneven, and with 3 ranks a rank of one sample
SIZES = {2: [3, 5], 3: [4, 1, 3]}
#: splits with a rank that holds no samples (it still takes part in every collective)
EMPTY_RANK = {2: [0, 8], 3: [5, 0, 3]}
#: kernel="auto" takes the fused kernel on each rank where it serves the call, "array_api" the row blocks
KERNELS = ("auto", "array_api")
#: the cases the fused kernel serves (uniform or exponential weights, infonce or supcon form): kernel="auto"
#: must run them on the kernel path; the others (top-k, threshold, debiased) stay on the row blocks
KERNEL_CASES = {
    "ntxent",
    "ntxent_tile1",
    "ucl",
    "hucl",
    "hucl_undetached",
    "scl",
    "hscl_anchor_mean",
    "supcon",
    "self_all_mean",
    "sampled_rng",
    "paper_preset",
    "anchor_mean_alone",
    "sampled_uniforms",
}
#: kernel cases beyond the shared table (torch only), name -> (loss, options, labels of rows): labels of which
#: some occur once (anchor_mean's divisor counts, rank by rank, the anchors that have positives), and sampled
#: negatives from the global uniforms= array every rank passes
EXTRA_CASES: dict[str, tuple[str, dict[str, Any], np.ndarray]] = {
    "anchor_mean_alone": ("hscl", {"beta": 2.0, "reduction": "anchor_mean"}, np.array([0, 1, 2, 3, 0, 1, 5, 6])),
    "sampled_uniforms": (
        "hscl",
        {"beta": 1.0, "negatives": "sampled", "k": 3, "uniforms": np.random.default_rng(4).random((len(LABELS), 3))},
        LABELS,
    ),
}
ALL_CASES = sorted([*CASES, *EXTRA_CASES])


def _batch(name: str) -> tuple[str, dict[str, Any], np.ndarray, np.ndarray | None, str]:
    """(loss, options, global embeddings, global labels or None, layout) of a case of CASES or EXTRA_CASES."""
    if name in CASES:
        loss_name, options, layout = CASES[name]
        return loss_name, options, *global_batch(layout), layout
    loss_name, options, labels = EXTRA_CASES[name]
    return loss_name, options, global_batch("rows")[0], labels, "rows"


def _local(array: np.ndarray | None, rank: int, sizes: list[int]) -> Any:
    if array is None:
        return None
    start = sum(sizes[:rank])
    return torch.tensor(array[start : start + sizes[rank]])


def _case(name: str, rank: int, sizes: list[int], group: Any, kernel: str = "auto") -> dict[str, Any]:
    """The case on torch tensors through autograd, and the paths that ran."""
    loss_name, options, z, ids, _ = _batch(name)
    local = _local(z, rank, sizes).requires_grad_(True)
    with pytest.MonkeyPatch.context() as patch:
        ran = record_paths(patch)
        value = getattr(hcl, loss_name)(local, _local(ids, rank, sizes), group=group, kernel=kernel, **options)
        value.backward()
    return {"value": value.item(), "grad": local.grad.numpy(), "paths": sorted({path for path, _ in ran})}


def _numpy_case(name: str, rank: int, sizes: list[int], group: Any, kernel: str) -> dict[str, Any]:
    """The case on NumPy arrays over the same group: (value, gradient) by return_grad."""
    loss_name, options, z, ids, _ = _batch(name)
    local = _local(z, rank, sizes).numpy()
    labels = None if ids is None else _local(ids, rank, sizes).numpy()
    with pytest.MonkeyPatch.context() as patch:
        ran = record_paths(patch)
        value, grad = getattr(hcl, loss_name)(local, labels, group=group, kernel=kernel, return_grad=True, **options)
    return {"value": float(value), "grad": grad, "paths": sorted({path for path, _ in ran})}


def _per_anchor_case(name: str, rank: int, sizes: list[int], group: Any) -> dict[str, Any]:
    """reduction="none": this rank's per-anchor values, and the gradient of their weighted sum (weights: this
    rank's entries of one global weight vector, so that the ranks' cotangents differ), and the paths that ran."""
    loss_name, options, z, ids, layout = _batch(name)
    local = _local(z, rank, sizes).requires_grad_(True)
    with pytest.MonkeyPatch.context() as patch:
        ran = record_paths(patch)
        per_anchor = {**options, "reduction": "none"}
        values = getattr(hcl, loss_name)(local, _local(ids, rank, sizes), group=group, **per_anchor)
    weights = _per_anchor_weights(layout)[_local_anchors(layout, rank, sizes)]
    (values * torch.tensor(weights)).sum().backward()
    paths = sorted({path for path, _ in ran})
    return {"values": values.detach().numpy(), "grad": local.grad.numpy(), "paths": paths}


def _ddp_case(rank: int, sizes: list[int], group: Any) -> dict[str, Any]:
    """DistributedDataParallel on a linear encoder whose views are a non-contiguous (B, V, d) tensor (the
    all_gather trap): after loss.backward() every rank holds DDP's averaged parameter gradient."""
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, DIM, bias=False).double(), process_group=group)
    inputs = np.random.default_rng(5).normal(size=(len(LABELS), VIEWS, 4))
    views = model(_local(inputs, rank, sizes).transpose(0, 1)).transpose(0, 1)  # (B, V, d), not contiguous
    hcl.hucl(views, beta=2.0, group=group).backward()
    return {"weight_grad": model.module.weight.grad.numpy()}


#: the dtypes of the reduced-precision checks: the loss computes in float32, the gradient comes back in the input's
LOW_PRECISION = ("float32", "bfloat16")


def _low_precision_case(dtype: str, rank: int, sizes: list[int], group: Any) -> dict[str, Any]:
    """hucl on views in `dtype` through the kernel path (value, gradient as float64 NumPy, its dtype, the paths)."""
    local = _local(global_batch("views")[0], rank, sizes).to(getattr(torch, dtype)).requires_grad_(True)
    with pytest.MonkeyPatch.context() as patch:
        ran = record_paths(patch)
        value = hcl.hucl(local, beta=2.0, group=group)
        value.backward()
    grad = local.grad
    return {
        "value": value.item(),
        "grad": grad.double().numpy(),
        "dtype": str(grad.dtype),
        "paths": [p for p, _ in ran],
    }


def _rank0_without_grad(rank: int, sizes: list[int], group: Any) -> dict[str, Any]:
    """Rank 0 only evaluates (no gradient, no backward), the others train: nobody waits."""
    local = _local(global_batch("views")[0], rank, sizes).requires_grad_(rank > 0)
    value = hcl.hucl(local, beta=2.0, group=group)
    if rank:
        value.backward()
    return {"value": value.item(), "grad": None if rank == 0 else local.grad.numpy()}


def _all_cases(rank: int, sizes: list[int], group: Any) -> dict[str, Any]:
    out: dict[Any, Any] = {}
    for name in ALL_CASES:
        for kernel in KERNELS:
            out[name, kernel] = _case(name, rank, sizes, group, kernel)
            out["numpy", name, kernel] = _numpy_case(name, rank, sizes, group, kernel)
        out["none", name] = _per_anchor_case(name, rank, sizes, group)
    value, grad = hcl.hucl(_local(global_batch("views")[0], rank, sizes), beta=2.0, group=group, return_grad=True)
    out["return_grad"] = {"value": float(value), "grad": grad.numpy()}
    out["ddp"] = _ddp_case(rank, sizes, group)
    out["empty_rank"] = {kernel: _case("hucl", rank, EMPTY_RANK[len(sizes)], group, kernel) for kernel in KERNELS}
    out["rank0_without_grad"] = _rank0_without_grad(rank, sizes, group)
    out["low_precision"] = {dtype: _low_precision_case(dtype, rank, sizes, group) for dtype in LOW_PRECISION}
    out["errors"] = _errors(rank, sizes, group)
    return out


def _errors(rank: int, sizes: list[int], world: Any) -> dict[str, str]:
    """The message of each wrong use, on this rank (every rank must raise: none may hang)."""
    local = torch.tensor(global_batch("views")[0][: sizes[rank]])
    uses = {
        "dimension": lambda: hcl.ntxent(local[..., : DIM - rank], group=world),
        "dtype": lambda: hcl.ntxent(local.float() if rank else local, group=world),
        "labels_missing": lambda: hcl.ucl(
            local, None if rank else torch.zeros(sizes[0], dtype=torch.int64), group=world
        ),
        "rows_without_labels": lambda: hcl.scl(
            local[:, 0], None if rank else torch.zeros(sizes[0], dtype=torch.int64), group=world
        ),
        "non_finite": lambda: hcl.ntxent(local * (float("nan") if rank else 1.0), group=world),
        "per_anchor_grad_on_some_ranks": lambda: hcl.ntxent(
            local.clone().requires_grad_(rank == 0), group=world, reduction="none"
        ),
        "uniforms_local": lambda: hcl.hscl(
            local[:, 0],
            torch.zeros(sizes[rank], dtype=torch.int64),
            negatives="sampled",
            k=2,
            uniforms=np.zeros((sizes[rank], 2)),
            group=world,
        ),
    }
    return error_messages(uses)


#: a run with views, instance ids, augmentations and sampled negatives; batches of 7 split 3 + 4
TRAIN = TrainConfig(
    loss="hucl",
    encoder="mlp",
    hidden=6,
    classes=3,
    per_class=10,
    input_dim=4,
    views=2,
    negatives="sampled",
    k=5,
    batch_size=7,
    epochs=2,
    optimizer="sgd",  # plain SGD: a gradient off by the number of ranks would show (Adam would hide it)
    lr=0.5,
    backend="torch",
    dtype="float64",
    seed=3,
)


def _train_twice(group: Any, folder: str) -> dict[str, Any]:
    """One epoch, then a second one resumed from the checkpoint rank 0 wrote."""
    path = f"{folder}/run.npz"
    train(dataclasses.replace(TRAIN, epochs=1), out=path, group=group)
    result = train(TRAIN, resume_from=path, group=group)
    params = result.checkpoint.params
    return {"history": {k: v.tolist() for k, v in result.history.items()}, "params": params}


def _worker(rank: int, init: str, folder: str, results: Any) -> None:
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=3)
        pair = dist.new_group([0, 1])  # every rank creates it; only its members use it
        out = {3: _all_cases(rank, SIZES[3], dist.group.WORLD)}
        if rank < 2:
            out[2] = _all_cases(rank, SIZES[2], pair)
            out["train"] = _train_twice(pair, folder)
        results.put((rank, out))
        dist.destroy_process_group()
    except BaseException:  # the parent must see why, not wait for a result that never comes
        results.put((rank, traceback.format_exc()))
        raise


@pytest.fixture(scope="module")
def by_world(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    """Each world size's list of per-rank results, from three spawned gloo processes."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    folder = tmp_path_factory.mktemp("gloo")
    workers = [
        context.Process(target=_worker, args=(rank, f"file://{folder}/rendezvous", str(folder), results))
        for rank in range(3)
    ]
    for worker in workers:
        worker.start()
    gathered = dict(results.get(timeout=300) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    failed = {rank: out for rank, out in gathered.items() if isinstance(out, str)}
    assert not failed, failed
    by_world = {world: [gathered[rank][world] for rank in range(world)] for world in SIZES}
    return {**by_world, "train": [gathered[rank]["train"] for rank in range(2)]}


@pytest.fixture(params=sorted(SIZES), ids=lambda world: f"{world}ranks")
def ranks(request: pytest.FixtureRequest, by_world: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return by_world[request.param]


def single_process(loss_name: str, options: dict[str, Any], layout: str) -> tuple[float, np.ndarray]:
    z, ids = global_batch(layout)
    return _single_process_on(loss_name, options, z, ids)


def _single_process_on(loss_name: str, options: dict[str, Any], z: np.ndarray, ids: Any) -> tuple[float, np.ndarray]:
    """The loss of the whole batch in one process, and its gradient."""
    tensor = torch.tensor(z, requires_grad=True)
    value = getattr(hcl, loss_name)(tensor, None if ids is None else torch.tensor(ids), **options)
    value.backward()
    return value.item(), tensor.grad.numpy()


def _rows_of(array: np.ndarray, rank: int, sizes: list[int]) -> np.ndarray:
    return array[sum(sizes[:rank]) : sum(sizes[: rank + 1])]


def _per_anchor_weights(layout: str) -> np.ndarray:
    """One weight per anchor of the global batch (view-major with views), the same on every rank."""
    anchors = len(LABELS) * (VIEWS if layout == "views" else 1)
    return np.random.default_rng(7).normal(size=anchors)


def _local_anchors(layout: str, rank: int, sizes: list[int]) -> np.ndarray:
    """Where rank r's per-anchor values (its own rows, view-major) lie among the global batch's."""
    views = VIEWS if layout == "views" else 1
    first = sum(sizes[:rank])
    return np.concatenate([v * len(LABELS) + first + np.arange(sizes[rank]) for v in range(views)])


def _expected_path(name: str, kernel: str) -> list[str]:
    return ["distributed_fused" if kernel == "auto" and name in KERNEL_CASES else "distributed"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", ALL_CASES)
def test_every_rank_gets_the_single_process_value_and_gradient(ranks: list[dict], name: str, kernel: str) -> None:
    """Path: the fused kernel on each rank for KERNEL_CASES with kernel="auto", else the row blocks."""
    expected_value, expected_grad = _single_process_on(*_batch(name)[:4])
    sizes = SIZES[len(ranks)]
    assert np.isfinite(expected_value) and np.abs(expected_grad).max() > 0
    for rank, out in enumerate(ranks):
        result = out[name, kernel]
        assert result["paths"] == _expected_path(name, kernel)
        assert result["value"] == pytest.approx(expected_value, rel=1e-10, abs=1e-12)
        # every rank calls backward: autograd gives world_size x this rank's share (DDP divides it back)
        np.testing.assert_allclose(result["grad"] / len(ranks), _rows_of(expected_grad, rank, sizes), atol=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", ALL_CASES)
def test_numpy_arrays_over_the_group_get_the_exact_share(ranks: list[dict], name: str, kernel: str) -> None:
    """Path: as for torch; NumPy arrays travel as zero-copy tensors, return_grad gives the exact share."""
    expected_value, expected_grad = _single_process_on(*_batch(name)[:4])
    sizes = SIZES[len(ranks)]
    for rank, out in enumerate(ranks):
        result = out["numpy", name, kernel]
        assert result["paths"] == _expected_path(name, kernel)
        assert result["value"] == pytest.approx(expected_value, rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(result["grad"], _rows_of(expected_grad, rank, sizes), atol=1e-10)


@pytest.mark.parametrize("name", ALL_CASES)
def test_per_anchor_values_are_the_global_terms_of_each_rank_rows(ranks: list[dict], name: str) -> None:
    """reduction="none" (path: the row blocks): each rank gets its rows' entries of the single-process per-anchor
    values, and the backward pass of weighted sums that differ from rank to rank gives each rank its rows of the
    gradient of the total (the sum over ranks), with no world-size factor."""
    loss_name, options, z, ids, layout = _batch(name)
    tensor = torch.tensor(z, requires_grad=True)
    labels = None if ids is None else torch.tensor(ids)
    values = getattr(hcl, loss_name)(tensor, labels, **{**options, "reduction": "none"})
    (values * torch.tensor(_per_anchor_weights(layout))).sum().backward()
    expected_values, expected_grad = values.detach().numpy(), tensor.grad.numpy()
    assert np.abs(expected_values).max() > 0 and np.abs(expected_grad).max() > 0
    sizes = SIZES[len(ranks)]
    for rank, out in enumerate(ranks):
        local = _local_anchors(layout, rank, sizes)
        assert out["none", name]["paths"] == ["distributed"]
        np.testing.assert_allclose(out["none", name]["values"], expected_values[local], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out["none", name]["grad"], _rows_of(expected_grad, rank, sizes), atol=1e-10)


def test_return_grad_is_the_exact_share_of_the_global_gradient(ranks: list[dict]) -> None:
    expected_value, expected_grad = single_process("hucl", {"beta": 2.0}, "views")
    for rank, out in enumerate(ranks):
        assert out["return_grad"]["value"] == pytest.approx(expected_value, rel=1e-10)
        np.testing.assert_allclose(
            out["return_grad"]["grad"], _rows_of(expected_grad, rank, SIZES[len(ranks)]), atol=1e-10
        )


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_rank_without_samples_takes_part(ranks: list[dict], kernel: str) -> None:
    expected_value, expected_grad = single_process(*CASES["hucl"])
    for rank, out in enumerate(ranks):
        result = out["empty_rank"][kernel]
        assert result["paths"] == _expected_path("hucl", kernel)
        assert result["value"] == pytest.approx(expected_value, rel=1e-10)
        expected_rows = _rows_of(expected_grad, rank, EMPTY_RANK[len(ranks)])
        np.testing.assert_allclose(result["grad"] / len(ranks), expected_rows, atol=1e-10)


def test_a_rank_may_evaluate_while_the_others_train(ranks: list[dict]) -> None:
    expected_value, expected_grad = single_process("hucl", {"beta": 2.0}, "views")
    for rank, out in enumerate(ranks):
        assert out["rank0_without_grad"]["value"] == pytest.approx(expected_value, rel=1e-10)
        if rank:
            expected_rows = _rows_of(expected_grad, rank, SIZES[len(ranks)])
            np.testing.assert_allclose(out["rank0_without_grad"]["grad"] / len(ranks), expected_rows, atol=1e-10)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_reduced_precision_takes_the_kernel_and_stays_close_to_one_process(
    ranks: list[dict], dtype: str, tolerance: float
) -> None:
    """Path: distributed_fused. The loss computes in float32 for both dtypes; the gradient returns in the input's
    dtype, so bfloat16 holds it to 8 bits. Reference: one process on the whole batch in the same dtype."""
    z = torch.tensor(global_batch("views")[0]).to(getattr(torch, dtype)).requires_grad_(True)
    expected = hcl.hucl(z, beta=2.0)
    expected.backward()
    expected_grad = z.grad.double().numpy()
    for rank, out in enumerate(ranks):
        result = out["low_precision"][dtype]
        assert result["paths"] == ["distributed_fused"]
        assert result["dtype"] == f"torch.{dtype}"
        assert result["value"] == pytest.approx(expected.item(), rel=1e-6)
        rows = _rows_of(expected_grad, rank, SIZES[len(ranks)])
        np.testing.assert_allclose(
            result["grad"] / len(ranks), rows, rtol=tolerance, atol=tolerance * np.abs(rows).max()
        )


def test_ddp_parameter_gradient_equals_one_process_on_the_whole_batch(ranks: list[dict]) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, DIM, bias=False).double()
    inputs = torch.tensor(np.random.default_rng(5).normal(size=(len(LABELS), VIEWS, 4)))
    hcl.hucl(model(inputs), beta=2.0).backward()
    for out in ranks:
        np.testing.assert_allclose(out["ddp"]["weight_grad"], model.weight.grad.numpy(), atol=1e-10)


@pytest.mark.parametrize(
    ("use", "every_rank_says"),
    [
        ("dimension", "ranks disagree on the embedding dimension d"),
        ("dtype", "ranks disagree on the dtype (rank 0: float64, rank 1: float32"),
        ("labels_missing", "ranks disagree on labels/ids (rank 0: given, rank 1: missing"),
        ("uniforms_local", "uniforms must have shape (N, k)"),
        ("per_anchor_grad_on_some_ranks", "either every rank or no rank needs the gradient"),
    ],
)
def test_wrong_use_raises_on_every_rank(ranks: list[dict], use: str, every_rank_says: str) -> None:
    for out in ranks:
        assert every_rank_says in out["errors"][use]


@pytest.mark.parametrize(
    ("use", "own_error"), [("rows_without_labels", "labels/ids are required"), ("non_finite", "NaN or Inf")]
)
def test_a_bad_batch_on_one_rank_raises_there_and_stops_the_others(ranks: list[dict], use: str, own_error: str) -> None:
    assert own_error not in ranks[0]["errors"][use]
    assert "rank(s) [" in ranks[0]["errors"][use]
    for out in ranks[1:]:
        assert own_error in out["errors"][use]


def test_group_needs_torch_numpy_or_cupy_arrays_and_an_initialised_group() -> None:
    z = np.zeros((4, 2, 3))
    with pytest.raises(TypeError, match="group= needs torch arrays, got list"):
        hcl.ntxent(z.tolist(), group=object())
    for embeddings in (z, torch.tensor(z)):
        with pytest.raises(RuntimeError, match="init_process_group"):
            hcl.ntxent(embeddings, group=object())


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"kernel": "fused", "form": "debiased"}, "kernel='fused' cannot compute this call across ranks: the debiased"),
        ({"reduction": "none", "return_grad": True}, "return_grad needs a scalar loss"),
        ({"hardening": lambda s: (s + 200.0) ** 2, "detach_weights": False}, "detach_weights=True"),
        ({"axis_name": "batch"}, "not both"),
    ],
)
def test_what_is_not_distributed_names_the_option(options: dict, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        hcl.contrastive_loss(torch.zeros(4, 2, 3), group=object(), **options)


def test_two_process_training_follows_the_one_process_trajectory(by_world: dict) -> None:
    """2 ranks (batches split 3 + 4, resumed after epoch 1) against one uninterrupted process, in float64."""
    single = train(TRAIN)
    for out in by_world["train"]:
        assert set(out["history"]) == set(single.history)
        for key, values in single.history.items():
            np.testing.assert_allclose(out["history"][key], values, rtol=1e-6, atol=1e-9, err_msg=key)
        for name, value in single.checkpoint.params.items():
            np.testing.assert_allclose(out["params"][name], value, rtol=1e-6, atol=1e-9, err_msg=name)


def test_training_on_several_processes_needs_torch() -> None:
    with pytest.raises(ValueError, match="several processes need --backend torch"):
        train(dataclasses.replace(TRAIN, backend="numpy"), group=object())


def test_nproc_needs_the_torch_backend_in_one_line() -> None:
    typer_testing = pytest.importorskip("typer.testing")
    from hcl_array.cli.app import app

    result = typer_testing.CliRunner().invoke(app, ["train", "--nproc", "2", "--backend", "numpy"])
    assert result.exit_code == 1
    assert "--nproc 2 needs --backend torch" in result.output
    assert "Traceback" not in result.output


def test_the_launcher_gets_the_command_line_without_nproc() -> None:
    from hcl_array.cli.train import _without_nproc

    given = ["train", "--nproc", "2", "--epochs", "3", "--nproc=4", "--backend", "torch"]
    assert _without_nproc(given) == ["train", "--epochs", "3", "--backend", "torch"]
