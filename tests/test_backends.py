"""Backend adapters, encoders' VJPs, the array-API optimizers, the nn.Module wrappers and the JAX/optax recipe.

References are independent: torch.optim / optax for the optimizers, torch autograd for the explicit VJPs,
the functional losses for the nn.Module wrappers.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hcl_array import encoders, losses, optim
from hcl_array.backends import BACKENDS, Backend, BackendUnavailable, available_backends, get_backend
from hcl_array.training import ContrastiveObjective

INSTALLED = [name for name, problem in available_backends().items() if problem is None]


def test_unknown_backend_lists_the_valid_names() -> None:
    with pytest.raises(BackendUnavailable, match="unknown backend 'tensorflow'; choose one of numpy, torch, jax, cupy"):
        get_backend("tensorflow")


def test_missing_backend_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import hcl_array.backends as registry

    monkeypatch.setattr(registry, "_CACHE", {})
    real_find_spec = registry.importlib.util.find_spec
    monkeypatch.setattr(
        registry.importlib.util, "find_spec", lambda name: None if name == "jax" else real_find_spec(name)
    )
    with pytest.raises(BackendUnavailable, match=r"needs jax, which is not installed: pip install 'hcl-array\[jax\]'"):
        get_backend("jax")


def test_importing_the_package_and_registry_imports_no_framework() -> None:
    code = (
        "import sys, hcl_array, hcl_array.backends, hcl_array.training; "
        "print(sorted({'torch', 'jax', 'cupy'} & set(sys.modules)))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize("name", INSTALLED)
def test_every_installed_backend_fills_the_interface(name: str) -> None:
    backend = get_backend(name)
    assert isinstance(backend, Backend) and backend.name == name
    assert backend.devices() and backend.version()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    for dtype in ("float32", "float64"):
        moved = backend.from_numpy(array, dtype)
        assert moved.dtype == getattr(backend.xp, dtype)
        np.testing.assert_array_equal(backend.to_numpy(moved), array)
    labels = backend.from_numpy(np.array([0, 1, 2]), "float64")
    assert backend.xp.isdtype(labels.dtype, "integral"), "integer arrays keep an integer dtype"
    with pytest.raises(ValueError, match="float32, float64"):
        backend.from_numpy(array, "float16")
    with pytest.raises(ValueError, match="device"):
        backend.from_numpy(array, "float32", "nonexistent:7")
    assert backend.generator(0) is not None
    stopped = backend.stop_gradient(backend.from_numpy(array, "float64"))
    np.testing.assert_array_equal(backend.to_numpy(stopped), array)


def test_numpy_needs_an_analytic_gradient() -> None:
    backend = get_backend("numpy")
    with pytest.raises(NotImplementedError, match="no autodiff.*value_and_grad"):
        backend.value_and_grad(lambda params: params["w"].sum(), {"w": np.ones(3)})


@pytest.mark.parametrize("name", [n for n in ("torch", "jax") if n in INSTALLED])
def test_autodiff_backends_differentiate_any_function(name: str) -> None:
    backend = get_backend(name)
    weights = backend.from_numpy(np.array([1.0, -2.0, 3.0]), "float64")
    scale = backend.from_numpy(np.array(2.0), "float64")
    value, grads = backend.value_and_grad(lambda params, s: (s * params["w"] ** 2).sum(), {"w": weights}, scale)
    assert float(backend.to_numpy(value)) == pytest.approx(28.0)
    np.testing.assert_allclose(backend.to_numpy(grads["w"]), [4.0, -8.0, 12.0])


# ----------------------------------------------------------------------------------------------------
# Optimizers: the array-API Adam and SGD against torch.optim (and optax).


def _gradient_sequence(steps: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.normal(size=(4, 3)) * 10.0 ** rng.integers(-3, 2) for _ in range(steps)]


@pytest.mark.parametrize(
    ("name", "hyper", "torch_factory"),
    [
        ("adam", {"lr": 1e-2}, lambda torch, p: torch.optim.Adam([p], lr=1e-2)),
        ("sgd", {"lr": 1e-2, "momentum": 0.9}, lambda torch, p: torch.optim.SGD([p], lr=1e-2, momentum=0.9)),
        (
            "sgd",
            {"lr": 1e-2, "momentum": 0.5, "nesterov": True},
            lambda torch, p: torch.optim.SGD([p], lr=1e-2, momentum=0.5, nesterov=True),
        ),
        # weight decay as the released UCL run's Adam (1e-6), and large enough to matter in 5 steps
        (
            "adam",
            {"lr": 1e-2, "weight_decay": 0.3},
            lambda torch, p: torch.optim.Adam([p], lr=1e-2, weight_decay=0.3),
        ),
        (
            "sgd",
            {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.3},
            lambda torch, p: torch.optim.SGD([p], lr=1e-2, momentum=0.9, weight_decay=0.3),
        ),
    ],
)
def test_optimizers_match_torch_optim(name: str, hyper: dict, torch_factory) -> None:
    torch = pytest.importorskip("torch")
    start = np.random.default_rng(0).normal(size=(4, 3))
    opt = optim.get(name, **hyper)
    params = {"w": start.copy()}
    state = opt.init(params)
    reference = torch.tensor(start.copy(), requires_grad=True)
    torch_optimizer = torch_factory(torch, reference)
    for grad in _gradient_sequence():
        updates, state = opt.update({"w": grad}, state, params)
        params = optim.apply_updates(params, updates)
        reference.grad = torch.tensor(grad)
        torch_optimizer.step()
    np.testing.assert_allclose(params["w"], reference.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert float(state["count"]) == 5


def test_adam_matches_optax_under_jit() -> None:
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    start = np.random.default_rng(1).normal(size=(4, 3))
    ours, theirs = optim.adam(1e-3), optax.adam(1e-3)
    params_ours = {"w": jax.numpy.asarray(start)}
    params_theirs = {"w": jax.numpy.asarray(start)}
    state_ours, state_theirs = ours.init(params_ours), theirs.init(params_theirs)
    ours_update = jax.jit(ours.update)
    for grad in _gradient_sequence():
        grads = {"w": jax.numpy.asarray(grad)}
        updates, state_ours = ours_update(grads, state_ours, params_ours)
        params_ours = optim.apply_updates(params_ours, updates)
        updates, state_theirs = theirs.update(grads, state_theirs, params_theirs)
        params_theirs = optax.apply_updates(params_theirs, updates)
    np.testing.assert_allclose(np.asarray(params_ours["w"]), np.asarray(params_theirs["w"]), rtol=1e-12)


def test_optimizer_rejects_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; choose one of adam, sgd"):
        optim.get("lbfgs")
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        optim.adam(0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        optim.sgd(momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        optim.adam(weight_decay=-1e-6)


# ----------------------------------------------------------------------------------------------------
# Encoders: the explicit VJPs (NumPy training) against torch autograd.


@pytest.mark.parametrize("kind", encoders.ENCODERS)
def test_encoder_vjp_matches_torch_autograd(kind: str) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 2, 3))  # samples with a 2-D shape: encoders flatten them
    indices = np.array([4, 0, 2, 2, 7, 1])  # repeats: two rows of one sample must add up
    params = encoders.init_params(kind, input_dim=6, output_dim=4, num_samples=9, hidden=5, seed=2)
    grad_z = rng.normal(size=(6, 4))
    analytic = encoders.backward(kind, params, x, indices, grad_z)
    leaves = {name: torch.tensor(value, requires_grad=True) for name, value in params.items()}
    z = encoders.forward(kind, leaves, torch.tensor(x), torch.tensor(indices))
    np.testing.assert_allclose(z.detach().numpy(), encoders.forward(kind, params, x, indices), rtol=1e-12)
    (z * torch.tensor(grad_z)).sum().backward()
    assert analytic.keys() == leaves.keys()
    for name, leaf in leaves.items():
        np.testing.assert_allclose(analytic[name], leaf.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_encoder_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'cnn'; choose one of free, linear, mlp"):
        encoders.init_params("cnn", input_dim=3, output_dim=2)
    with pytest.raises(ValueError, match="num_samples"):
        encoders.init_params("free", input_dim=3, output_dim=2)


@pytest.mark.parametrize(
    ("loss", "views", "options"),
    [
        ("hscl", 1, {"beta": 3.0}),
        ("hucl", 2, {"beta": 2.0, "negatives": "sampled", "k": 7}),
        ("ntxent", 2, {}),
        ("supcon", 2, {}),
    ],
)
def test_objective_analytic_gradient_matches_torch_autograd(loss: str, views: int, options: dict) -> None:
    """What NumPy trains with (loss VJP composed with encoder VJP) equals autograd through the same code."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    batch = 8
    x = rng.normal(size=(batch, views, 5)) if views > 1 else rng.normal(size=(batch, 5))
    labels = rng.integers(0, 3, size=batch)
    ids = None if loss in ("hucl", "ntxent") else labels
    indices = np.arange(batch)
    uniforms = rng.random((batch * views, options["k"])) if "k" in options else None
    objective = ContrastiveObjective("mlp", loss, options, views)
    params = encoders.init_params("mlp", input_dim=5, output_dim=4, hidden=6, seed=0)
    value, grads = objective.value_and_grad(params, x, ids, indices, uniforms)
    torch_backend = get_backend("torch")

    def as_torch(a):
        return None if a is None else torch.tensor(a)

    torch_params = {name: torch.tensor(value) for name, value in params.items()}
    torch_value, torch_grads = torch_backend.value_and_grad(
        objective, torch_params, as_torch(x), as_torch(ids), as_torch(indices), as_torch(uniforms)
    )
    assert float(value) == pytest.approx(float(torch_value), rel=1e-12)
    for name in params:
        np.testing.assert_allclose(grads[name], torch_grads[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------------------------------
# For use inside other code: nn.Module wrappers and the JAX/optax recipe (docs/backends.md).

WRAPPERS = {
    "SCLLoss": (losses.scl, {}),
    "HSCLLoss": (losses.hscl, {"beta": 5.0}),
    "UCLLoss": (losses.ucl, {"temperature": 0.5}),
    "HUCLLoss": (losses.hucl, {"beta": 2.0, "normalize": "sphere"}),
    "SupConLoss": (losses.supcon, {}),
    "NTXentLoss": (losses.ntxent, {}),
    "DebiasedHCLLoss": (losses.debiased_hcl, {"beta": 1.0, "tau_plus": 0.1}),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_torch_module_wrappers_equal_the_functional_losses(name: str) -> None:
    torch = pytest.importorskip("torch")
    import hcl_array.backends.torch as torch_backend

    function, options = WRAPPERS[name]
    module = getattr(torch_backend, name)(**options)
    assert isinstance(module, torch.nn.Module) and name in repr(module)
    rng = np.random.default_rng(4)
    if name in ("NTXentLoss", "DebiasedHCLLoss"):
        z = torch.tensor(rng.normal(size=(6, 2, 5)), requires_grad=True)  # (B, 2, d) views, instance ids
        labels = None
    else:
        z = torch.tensor(rng.normal(size=(10, 5)), requires_grad=True)
        labels = torch.tensor(rng.integers(0, 3, size=10))
    value = module(z, labels)
    expected = function(z.detach().numpy(), None if labels is None else labels.numpy(), **options)
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-12)
    value.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_torch_module_passes_call_options_through() -> None:
    torch = pytest.importorskip("torch")
    from hcl_array.backends.torch import HSCLLoss

    rng = np.random.default_rng(8)
    z, labels = torch.tensor(rng.normal(size=(12, 4))), torch.tensor(rng.integers(0, 3, size=12))
    uniforms = rng.random((12, 16))
    module = HSCLLoss(beta=5.0, negatives="sampled", k=16)
    expected = losses.hscl(z.numpy(), labels.numpy(), beta=5.0, negatives="sampled", k=16, uniforms=uniforms)
    assert float(module(z, labels, uniforms=torch.tensor(uniforms))) == pytest.approx(float(expected), rel=1e-12)


def test_jax_optax_recipe_lowers_the_loss_under_jit() -> None:
    """The recipe of docs/backends.md: a linear encoder, hscl, optax.adam, one jitted step, sampled negatives."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    import hcl_array as hcl

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 8)), dtype=jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, size=64))
    params = {"w": jnp.asarray(rng.normal(size=(8, 3)) / 3, dtype=jnp.float32)}
    optimizer = optax.adam(1e-2)

    def loss_fn(params, x, labels, key):
        uniforms = jax.random.uniform(key, (x.shape[0], 32))
        return hcl.hscl(x @ params["w"], labels, beta=5.0, negatives="sampled", k=32, uniforms=uniforms)

    @jax.jit
    def step(params, opt_state, key):
        value, grads = jax.value_and_grad(loss_fn)(params, x, labels, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state, key = optimizer.init(params), jax.random.key(0)
    values = []
    for _ in range(30):
        key, subkey = jax.random.split(key)
        params, opt_state, value = step(params, opt_state, subkey)
        values.append(float(value))
    assert np.isfinite(values).all()
    assert np.mean(values[-5:]) < np.mean(values[:5]) - 0.05


def test_resnet_encoder_without_torchvision_names_it() -> None:
    pytest.importorskip("torch")
    from hcl_array.backends.torch import resnet_encoder

    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match=r"needs torchvision.*pip install hcl-array\[vision\]"):
            resnet_encoder("resnet18", 9, seed=0)
    else:
        model = resnet_encoder("resnet18", 9, seed=0)
        assert model.conv1.kernel_size == (3, 3)


def test_registry_lists_every_backend_once() -> None:
    assert set(BACKENDS) == {"numpy", "torch", "jax", "cupy"}
    assert set(available_backends()) == set(BACKENDS)
