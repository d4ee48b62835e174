"""ReformerModelWithLMHead.generate: greedy = a loop of full forwards, sampling, eos/pad, bad arguments."""
import pytest
import torch

from reformer_kernels import models

from .hf_reference import TINY

DECODER = dict(TINY, attn_layers=["local", "lsh"], is_decoder=True, num_hashes=2, hash_seed=0)


def lm(**overrides):
    torch.manual_seed(0)
    return models.ReformerModelWithLMHead(models.ReformerConfig(**{**DECODER, **overrides})).double().eval()


def greedy_by_full_forwards(model, ids, n, attention_mask=None):
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("use_cache", [False, True])
def test_greedy_equals_a_loop_of_full_forwards(use_cache):
    model = lm()
    ids = torch.randint(1, 50, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, :2] = 0
    out = model.generate(ids, 14, attention_mask=mask, use_cache=use_cache)
    assert out.shape == (3, 19) and out.dtype == torch.long
    assert torch.equal(out[:, :5], ids)
    assert torch.equal(out, greedy_by_full_forwards(model, ids, 14, mask))


def test_sampling_is_reproducible_with_a_generator_and_varies_without_the_same_seed():
    model = lm()
    ids = torch.randint(1, 50, (2, 4))
    kwargs = dict(do_sample=True, temperature=2.0, top_k=20, top_p=0.95)
    first = model.generate(ids, 12, generator=torch.Generator().manual_seed(7), **kwargs)
    second = model.generate(ids, 12, generator=torch.Generator().manual_seed(7), **kwargs)
    others = [model.generate(ids, 12, generator=torch.Generator().manual_seed(s), **kwargs) for s in range(8, 12)]
    assert torch.equal(first, second)
    assert any(not torch.equal(first, other) for other in others)


def test_top_k_1_and_a_tiny_nucleus_are_greedy():
    model = lm()
    ids = torch.randint(1, 50, (2, 4))
    greedy = model.generate(ids, 8)
    assert torch.equal(model.generate(ids, 8, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(1)), greedy)
    assert torch.equal(model.generate(ids, 8, do_sample=True, top_p=1e-6, generator=torch.Generator().manual_seed(1)), greedy)


def test_next_tokens_keeps_only_the_top_k_and_the_nucleus():
    from reformer_kernels.models.generation import next_tokens

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).double()
    logits = probs.log().expand(4000, 4)
    draws = next_tokens(logits, True, 1.0, None, 0.8, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.8 <= 0.5 + 0.3: the nucleus is {0, 1}
    draws = next_tokens(logits, True, 1.0, 3, None, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1, 2}
    share = (draws == 0).double().mean().item()
    assert abs(share - 0.5 / 0.95) < 0.04


def test_finished_rows_get_the_pad_token_and_generation_stops_when_all_finish():
    model = lm()
    ids = torch.randint(1, 50, (3, 4))
    greedy = model.generate(ids, 10)
    eos = int(greedy[0, 6])  # row 0's third new token
    out = model.generate(ids, 10, eos_token_id=eos, pad_token_id=0)
    for row in range(3):
        new = greedy[row, 4:].tolist()
        if eos in new:
            end = new.index(eos) + 1
            assert out[row, 4:4 + end].tolist() == new[:end]
            assert (out[row, 4 + end:] == 0).all()
        else:
            assert out[row, 4:].tolist() == new[:out.shape[1] - 4]
    if all(eos in greedy[row, 4:].tolist() for row in range(3)):
        assert out.shape[1] < greedy.shape[1]


def test_max_new_tokens_0_returns_the_prompt():
    model = lm()
    ids = torch.randint(1, 50, (2, 4))
    assert torch.equal(model.generate(ids, 0), ids)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=1.5), "max_new_tokens"),
        (dict(max_new_tokens=200), "max_new_tokens"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(temperature=0.0), "temperature"),
        (dict(eos_token_id=50), "eos_token_id"),
        (dict(attention_mask=torch.ones(2, 3)), "attention_mask"),
        (dict(attention_mask=torch.full((2, 4), 2)), "attention_mask"),
        (dict(generator=3), "generator"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(kwargs, argument):
    model = lm()
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=argument):
        model.generate(torch.randint(1, 50, (2, 4)), **kwargs)


def test_a_prompt_longer_than_the_model_raises():
    model = lm()
    with pytest.raises(ValueError, match="prompt_len 129"):
        model.generate(torch.randint(1, 50, (1, 129)), 1)
