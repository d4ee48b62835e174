"""The GPU path reads no tensor value on the host, so it never waits for the GPU: no .item(), no
bool() of a tensor, no Python branch on one, no nonzero or boolean indexing, no host data copied
to the GPU per call.

Without a GPU this is shown on fake CUDA tensors (torch._subclasses.FakeTensorMode): they have
shapes and a device but no data, so an op that needs a value on the host raises
(DataDependentOutputException, DynamicOutputShapeException), and ``HostTransfers`` refuses every
copy between the host and the GPU. The model runs its training forward and a cached decoding step
on them, each Triton op's launcher runs its host code (forward and backward) with its launches
recorded, not run. Fake tensors cannot reach the autograd engine's CUDA backward, which needs a
driver; on a GPU, .ci/gpu-check runs every GPU test with the sync check of tests/conftest.py and
the training and decoding steps below under torch.cuda.set_sync_debug_mode("error").
"""
import contextlib
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from reformer_kernels import backends, functional, models
from reformer_kernels.nn.attention import BucketOrder
from tests.conftest import AUTOTUNER, PACKAGE, package_syncs
from tests.models.hf_reference import TINY
from tests.triton_launches import recorded_launches

CONFIG = dict(TINY, attn_layers=["local", "lsh"], is_decoder=True, num_hashes=2, num_buckets=4)
COPIES = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


class HostTransfers(TorchDispatchMode):
    """Refuses any copy between the host and the GPU (torch.tensor(..., device="cuda") is one)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in COPIES:
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device") or source.device
            if (source.device.type == "cpu") != (torch.device(target).type == "cpu"):
                raise AssertionError(f"{func} copies between {source.device} and {target}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_gpu():
    """Fake CUDA tensors for the block, with the Triton backend selected for them as on a GPU (the
    code under test runs inside ``HostTransfers`` too, which building modules cannot). The
    CUDA generator's state lives on the host (reading it is no sync) but needs a driver; the
    reversible layers' save and restore of it read the CPU generator instead."""
    status = backends.status
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(backends, "status", lambda: {**status(), "triton": (True, "fake GPU")}))
        stack.enter_context(mock.patch.object(torch.cuda, "get_rng_state", lambda device=None: torch.get_rng_state()))
        stack.enter_context(mock.patch.object(torch.cuda, "set_rng_state", lambda state, device=None: None))
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        yield


def meta_model() -> models.ReformerModelWithLMHead:
    """The model without data, made outside ``fake_gpu``; ``.to_empty(device="cuda")`` inside it
    gives it fake CUDA parameters."""
    with torch.device("meta"):
        return models.ReformerModelWithLMHead(models.ReformerConfig(**CONFIG))


def test_fake_gpu_catches_reads_and_transfers():
    """The harness fails where the package would sync, else the tests below would prove nothing."""
    with fake_gpu(), HostTransfers():
        x = torch.ones(4, device="cuda")
        with pytest.raises(DataDependentOutputException):
            bool(x.sum() > 0)
        with pytest.raises(AssertionError, match="copies between cpu and cuda"):
            torch.tensor([1, 2], device="cuda")
        with pytest.raises(AssertionError, match="copies between cuda"):
            x.cpu()


def test_training_forward_reads_nothing():
    """Embeddings, local and LSH layers (hash, sort, attention) with a padding mask, the LM head
    and its loss, in training mode."""
    model = meta_model()
    with fake_gpu():
        model = model.to_empty(device="cuda").train()
        ids = torch.zeros(2, 64, dtype=torch.long, device="cuda")
        mask = torch.ones(2, 64, dtype=torch.long, device="cuda")
        with HostTransfers():
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    assert loss.shape == () and loss.device.type == "cuda"


def test_cached_decoding_step_reads_nothing():
    """A prompt that the model pads to its chunks, then one cached step."""
    model = meta_model()
    with fake_gpu(), torch.no_grad():
        model = model.to_empty(device="cuda").eval()
        ids = torch.zeros(2, 13, dtype=torch.long, device="cuda")
        mask = torch.ones(2, 13, dtype=torch.long, device="cuda")
        step_mask = torch.ones(2, 14, dtype=torch.long, device="cuda")
        with HostTransfers():
            cache = model(input_ids=ids, attention_mask=mask, use_cache=True).past_buckets_states
            logits = model(input_ids=ids[:, :1], attention_mask=step_mask, past_buckets_states=cache, use_cache=True).logits
    assert logits.shape == (2, 1, CONFIG["vocab_size"])


class BooleanIndexing(TorchDispatchMode):
    """Refuses indexing with a bool tensor: fake tensors run it without data, a GPU through nonzero
    (a sync)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default):
            if any(index is not None and index.dtype == torch.bool for index in args[1]):
                raise AssertionError(f"{func} with a boolean index")
        return func(*args, **(kwargs or {}))


def test_bucket_order_merge_reads_nothing():
    """The decoding cache's O(length) merge of its bucket order's runs, every merge_every steps."""
    with fake_gpu(), HostTransfers(), BooleanIndexing():
        merged = torch.empty(2, 2, 3, 40, dtype=torch.int64, device="cuda")
        order = BucketOrder(merged, (), torch.empty(0, device="cuda"), merge_every=4)
        order.n_recent = 4
        order.merge_if_full()
    assert order.merged.shape == (2, 2, 3, 44) and order.n_recent == 0


def test_debug_checks_read_the_values(with_debug_checks):
    """With the debug checks on, the same forward reads the mask and the ids, which is what the
    checks cost on a GPU."""
    model = meta_model()
    with fake_gpu():
        model = model.to_empty(device="cuda")
        with pytest.raises(DataDependentOutputException):
            model(input_ids=torch.zeros(2, 64, dtype=torch.long, device="cuda"))


def test_debug_checks_follow_the_switch_then_the_environment(monkeypatch):
    monkeypatch.setenv(functional.DEBUG_ENV_VAR, "1")
    assert functional.debug_checks()
    functional.set_debug_checks(False)
    try:
        assert not functional.debug_checks() and not functional.checks_values(torch.empty(1, device="meta"))
        assert functional.checks_values(torch.empty(1))  # CPU tensors are always checked
    finally:
        functional.set_debug_checks(None)
    monkeypatch.setenv(functional.DEBUG_ENV_VAR, "yes")
    with pytest.raises(ValueError, match="REFORMER_KERNELS_DEBUG='yes' must be 1"):
        functional.debug_checks()
    with pytest.raises(TypeError, match="set_debug_checks: enabled must be True or False"):
        functional.set_debug_checks("1")


def test_gpu_hashing_counts_any_mask_as_padding():
    """Whether a mask pads anything is a read of the mask: on a GPU any mask gets the padding
    bucket (ids per round prod(n_buckets) + 1), as inside torch.compile."""
    with fake_gpu(), HostTransfers():
        vectors = torch.empty(2, 2, 32, 16, device="cuda")
        rotations = torch.empty(2, 16, 3, 4, device="cuda")
        _, num_keys = functional.lsh_hash(vectors, rotations, 8, attention_mask=torch.ones(2, 32, device="cuda"))
    assert num_keys == 3 * 9


def launcher_calls():
    """Each Triton op's launcher (the Python function behind its custom op) with fake CUDA
    arguments: float16 (B, H, L, d) inputs, a padding mask, attention dropout."""
    from reformer_kernels.ops.dropout_add import triton_kernels as dropout_add
    from reformer_kernels.ops.dropout_relu import triton_kernels as dropout_relu
    from reformer_kernels.ops.linear_cross_entropy import triton_kernels as cross_entropy
    from reformer_kernels.ops.local_attention import triton_kernels as local
    from reformer_kernels.ops.lsh_attention import triton_kernels as lsh
    from reformer_kernels.ops.lsh_decode_step import triton_kernels as decoding
    from reformer_kernels.ops.lsh_hash import triton_kernels as hashing

    batch, heads, seq_len, head_dim, n_hashes, chunk = 2, 2, 64, 16, 2, 16

    def empty(*shape, dtype=torch.float16):
        return torch.empty(*shape, dtype=dtype, device="cuda")

    x = empty(batch, heads, seq_len, head_dim)
    mask = empty(batch, seq_len, dtype=torch.bool)
    sorted_idx = empty(batch, heads, n_hashes * seq_len, dtype=torch.int32)  # as bucket_sort returns it
    lse = empty(batch, heads, n_hashes, seq_len, dtype=torch.float32)
    hidden, weight, labels = empty(50, 32), empty(64, 32), empty(50, dtype=torch.int64)
    ce_grads = (empty(50, dtype=torch.float32), empty(50, dtype=torch.float32))  # d losses, d lse (and lse)
    dropout = (0.1, -(2**62) - 5, 8)  # p and a Philox key as functional draws one: a uint64 seed as int64, an offset
    lsh_args = (n_hashes, chunk, 1, 0, True, mask, *dropout)
    local_args = (chunk, 1, 0, True, mask, *dropout)
    # a decoding step at the last position: 3 keys in the recent run, the rest merged
    merged = empty(batch, heads, n_hashes, seq_len - 4, dtype=torch.int64)
    recent, sort_keys = empty(batch, heads, n_hashes, 8, dtype=torch.int64), empty(batch, heads, n_hashes, dtype=torch.int64)
    decode_args = (x, x, merged, recent, 3, sort_keys, mask, seq_len - 1, seq_len, chunk, 1, 0)
    return {
        "lsh_hash": lambda: hashing.lsh_hash._init_fn(x, empty(heads, head_dim, n_hashes, 4), [8], mask),
        "lsh_hash_packed": lambda: hashing.lsh_hash_packed._init_fn(x, empty(heads, head_dim, n_hashes, 4), [8], mask),
        "lsh_attention_fwd": lambda: lsh.lsh_attention_fwd._init_fn(x, x, sorted_idx, *lsh_args),
        "lsh_attention_bwd": lambda: lsh.lsh_attention_bwd._init_fn(x, lse, x, x, sorted_idx, x, lse, *lsh_args),
        "local_attention_fwd": lambda: local.local_attention_fwd._init_fn(x, x, x, *local_args),
        "local_attention_bwd": lambda: local.local_attention_bwd._init_fn(x, x, x, x, x, lse[:, :, 0], *local_args),
        "linear_cross_entropy_fwd": lambda: cross_entropy.linear_cross_entropy_fwd._init_fn(hidden, weight, None, labels, -100),
        # the scales the backward computes once for both ops (row_scales) included
        "linear_cross_entropy_grad_hidden": lambda: cross_entropy.linear_cross_entropy_grad_hidden._init_fn(
            *cross_entropy.row_scales(*ce_grads, labels, -100), hidden, weight, None, labels, ce_grads[1]),
        "linear_cross_entropy_grad_weight": lambda: cross_entropy.linear_cross_entropy_grad_weight._init_fn(
            *cross_entropy.row_scales(*ce_grads, labels, -100), hidden, weight, None, labels, ce_grads[1]),
        "dropout_add": lambda: dropout_add.dropout_add_op._init_fn(x, x, 0.1, 1, 0, False, torch.float16),
        "dropout_relu": lambda: dropout_relu.dropout_relu_op._init_fn(x, x[0, 0, 0], 0.1, 1, 0),
        "dropout_relu_backward": lambda: dropout_relu.dropout_relu_backward_op._init_fn(x, x, 0.1),
        "lsh_decode_step": lambda: decoding.lsh_decode_step._init_fn(*decode_args),
    }


@pytest.mark.parametrize("op", ["lsh_hash", "lsh_hash_packed", "lsh_attention_fwd", "lsh_attention_bwd", "local_attention_fwd",
                                "local_attention_bwd", "linear_cross_entropy_fwd", "linear_cross_entropy_grad_hidden",
                                "linear_cross_entropy_grad_weight", "dropout_add", "dropout_relu", "dropout_relu_backward",
                                "lsh_decode_step"])
def test_triton_launchers_read_nothing(op):
    with fake_gpu(), HostTransfers(), recorded_launches() as launches:
        launcher_calls()[op]()
    assert launches, f"{op} launched no kernel"


def test_the_gpu_sync_check_blames_package_code_only():
    """tests/conftest.py's check, fed the warning that torch's sync debug mode gives, from code
    that pretends to live in the package."""
    def warn():
        warnings.warn("called a synchronizing CUDA operation")

    def sync_in(path):
        namespace = {}
        exec(compile("def sync(inner=warn):\n    inner()\n", str(path), "exec"), {"warn": warn}, namespace)
        return namespace["sync"]

    def autotune(kernel):
        namespace = {}
        exec(compile("def bench(kernel):\n    kernel()\n", str(Path(*AUTOTUNER)), "exec"), {}, namespace)
        return lambda: namespace["bench"](kernel)

    with package_syncs() as syncs:
        warn()  # a test's own read
        sync_in(PACKAGE / "reference" / "hashing.py")()  # the oracle may sync
        sync_in(PACKAGE / "ops" / "lsh_hash" / "triton_kernels.py")(autotune(warn))  # a first launch's autotuning
        sync_in(PACKAGE / "functional.py")()
    assert len(syncs) == 1 and "functional.py" in syncs[0]
    functional.set_debug_checks(True)
    try:
        with package_syncs() as syncs:
            sync_in(PACKAGE / "functional.py")()
    finally:
        functional.set_debug_checks(None)
    assert not syncs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_decoding_steps_on_a_gpu():
    """On a GPU: a training step (forward, backward, optimizer step) and a cached decoding step run
    with any host sync an error, once the first run has compiled and autotuned the kernels (the
    autotuner times its configs with syncs, once per shape)."""
    torch.manual_seed(0)
    model = models.ReformerModelWithLMHead(models.ReformerConfig(**CONFIG)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 64), device="cuda")
    mask = torch.ones(2, 64, dtype=torch.long, device="cuda")

    def steps():
        model.train()
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            cache = model(input_ids=ids[:, :13], attention_mask=mask[:, :13], use_cache=True).past_buckets_states
            return model(input_ids=ids[:, 13:14], attention_mask=mask[:, :14], past_buckets_states=cache,
                         use_cache=True).logits

    steps()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = steps()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logits).all()
