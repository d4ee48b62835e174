"""Random, often hostile, calls of every functional op (sizes, dtypes, masks, windows, bucket
counts, probabilities, wrong types), for tests/robustness/test_ops.py, which runs this in a
subprocess so that a crash or a hang fails the test instead of killing pytest:
    python -m tests.robustness.fuzz_ops SEED COUNT PASSES
runs COUNT calls PASSES times over and prints, as JSON, how the calls ended ("ok", "ValueError",
"TypeError"), every other end ("bad": the call and its error) and the peak resident memory after
each pass, whose growth from pass to pass would be a leak."""
import json
import random
import resource
import sys

import torch

import reformer_kernels.functional as RF
from reformer_kernels.nn import linear_cross_entropy

SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 16, -1]
SCALARS = [0, 1, 2, 3, 4, 8, -1, 2**31, 2**62, 1.5, None, True, "4"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]


def tensor(rng, shape, dtype=None):
    if any(not isinstance(s, int) or s < 0 for s in shape):
        return rng.choice([None, 3, "x", torch.zeros(2)])
    dtype = dtype or rng.choice(DTYPES)
    t = (torch.randn(shape) * 3).to(dtype) if dtype.is_floating_point else torch.randint(0, 4, shape).to(dtype)
    if rng.random() < 0.2 and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other strides
    return t


def heads_shape(rng):
    return [rng.choice([1, 2, 3]), rng.choice([1, 2]), rng.choice(SIZES[:9]), rng.choice([1, 2, 4, 8])]


def maybe(rng, value, other):
    return value if rng.random() < 0.75 else other


def case(rng):
    op = rng.choice(["lsh_hash", "bucket_sort", "lsh_attention", "local_attention", "lsh_self_attention",
                     "head_projections", "dropout_add", "dropout_relu", "linear_cross_entropy"])
    backend = rng.choice(["reference", "cpu"])
    shape = heads_shape(rng)
    b, h, l, d = shape
    dtype = rng.choice([torch.float32, torch.float64])
    x = tensor(rng, shape, maybe(rng, dtype, rng.choice(DTYPES)))
    y = tensor(rng, maybe(rng, shape, heads_shape(rng)), maybe(rng, dtype, rng.choice(DTYPES)))
    mask = rng.choice([None, None, tensor(rng, [b, l], torch.bool), tensor(rng, [b, max(l - 1, 0)], torch.bool),
                       tensor(rng, [b, l], torch.float32)])
    n_buckets = rng.choice([2, 4, 6, (2, 4), 3, 0, -2, 2**40, (), [4, 4]])
    n_hashes = rng.choice([1, 2, 3])
    chunk = rng.choice(SCALARS)
    window = dict(n_chunks_before=maybe(rng, rng.choice([0, 1, 2]), rng.choice(SCALARS)),
                  n_chunks_after=maybe(rng, rng.choice([0, 1]), rng.choice(SCALARS)))
    if op == "lsh_hash":
        factors = n_buckets if isinstance(n_buckets, (tuple, list)) else (n_buckets,)
        half = sum(f for f in factors if isinstance(f, int) and 0 < f < 64) // 2
        rot = tensor(rng, [h, d, n_hashes, maybe(rng, half, rng.choice(SIZES))], maybe(rng, x.dtype if isinstance(x, torch.Tensor) else dtype, rng.choice(DTYPES)))
        return op, backend, lambda: RF.lsh_hash(x, rot, n_buckets, attention_mask=mask, backend=backend)
    if op == "bucket_sort":
        buckets = tensor(rng, [b, h, n_hashes * max(l, 0)], maybe(rng, torch.int64, rng.choice(DTYPES)))
        num = rng.choice([1, 4, 8, 0, -1, 2**33, 2**62, 3.0])
        return op, backend, lambda: RF.bucket_sort(buckets, num, backend=backend)
    if op == "lsh_attention":
        idx = maybe(rng, torch.stack([torch.randperm(n_hashes * l) for _ in range(b * h)]).view(b, h, -1) if l else torch.zeros(b, h, 0, dtype=torch.int64),
                    tensor(rng, [b, h, n_hashes * l + rng.choice([0, 1])], torch.int64))
        return op, backend, lambda: RF.lsh_attention(x, y, idx, n_hashes=n_hashes, chunk_len=chunk, causal=rng.random() < 0.5,
                                                     attention_mask=mask, dropout_p=rng.choice([0.0, 0.1, 1.0, -0.1]), backend=backend, **window)
    if op == "local_attention":
        return op, backend, lambda: RF.local_attention(x, y, x, chunk_len=chunk, attention_mask=mask, causal=rng.random() < 0.5,
                                                       dropout_p=rng.choice([0.0, 0.1]), backend=backend, **window)
    if op == "lsh_self_attention":
        factors = n_buckets if isinstance(n_buckets, (tuple, list)) else (n_buckets,)
        half = sum(f for f in factors if isinstance(f, int) and 0 < f < 64) // 2
        rot = tensor(rng, [h, d, n_hashes, half], x.dtype if isinstance(x, torch.Tensor) else dtype)
        return op, backend, lambda: RF.lsh_self_attention(x, y, rot, n_buckets, chunk_len=chunk, attention_mask=mask, backend=backend, **window)
    if op == "head_projections":
        inp = tensor(rng, [b, l, maybe(rng, 8, rng.choice(SIZES))], maybe(rng, dtype, rng.choice(DTYPES)))
        weights = [tensor(rng, [h * d, maybe(rng, 8, rng.choice(SIZES))], maybe(rng, dtype, rng.choice(DTYPES))) for _ in range(rng.choice([1, 2]))]
        return op, backend, lambda: RF.head_projections(inp, maybe(rng, weights, rng.choice([[], None, weights[0]])), maybe(rng, h, rng.choice(SCALARS)), backend=backend)
    if op == "dropout_add":
        return op, backend, lambda: RF.dropout_add(x, y, rng.choice([0.0, 0.5, 1.0, 1.5, -1, "p"]), training=rng.choice([True, False, 1]), backend=backend)
    if op == "dropout_relu":
        bias = tensor(rng, [maybe(rng, d, rng.choice(SIZES))], maybe(rng, dtype, rng.choice(DTYPES)))
        return op, backend, lambda: RF.dropout_relu(x, rng.choice([0.0, 0.5, 1.0, 1.5, -1, "p"]), bias=rng.choice([None, bias, [1.0]]),
                                                    training=rng.choice([True, False, 1]), backend=backend)
    n, v = rng.choice(SIZES), rng.choice(SIZES)
    hidden = tensor(rng, [n, 8], maybe(rng, dtype, rng.choice(DTYPES)))
    weight = tensor(rng, [v, maybe(rng, 8, rng.choice(SIZES))], maybe(rng, dtype, rng.choice(DTYPES)))
    labels = tensor(rng, [maybe(rng, n, rng.choice(SIZES))], maybe(rng, torch.int64, rng.choice(DTYPES)))
    return op, backend, lambda: linear_cross_entropy(hidden, weight, None, labels, chunk_size=rng.choice([0, 3, -1]), backend=backend)


def run_pass(seed, count, outcomes, bad):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for i in range(count):
        try:
            op, backend, call = case(rng)
        except (ValueError, TypeError, RuntimeError):
            continue  # the strategy built an unbuildable tensor: not a call
        try:
            call()
            kind = "ok"
        except (ValueError, TypeError) as error:
            kind = type(error).__name__
        except Exception as error:  # noqa: BLE001 - anything else is what the test reports
            kind = type(error).__name__
            bad.append(f"seed {seed} case {i} ({op}, backend {backend}): {kind}: {str(error)[:300]}")
        outcomes[kind] = outcomes.get(kind, 0) + 1


def main(seed, count, passes):
    outcomes, bad, peak_kib = {}, [], []
    for _ in range(passes):
        run_pass(seed, count, outcomes, bad)
        peak_kib.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(json.dumps({"outcomes": outcomes, "bad": bad, "peak_kib": peak_kib}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
